from __future__ import annotations

import io
import json
from pathlib import Path

import pypdf
import pytest

from esrag.errors import LoaderError
from esrag.sources.loaders import (
    Skipped,
    _Pattern,
    discover,
    discover_sources,
    display,
    doc_id_candidates,
    html_to_text,
    iter_file,
    load_file,
    markdown_title,
    rst_title,
)
from esrag.types import Document, canonical_json, sha256_hex


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def posix(path: Path) -> str:
    return path.resolve().as_posix()


def load_one(path: Path, **base: str) -> Document:
    docs, skipped = load_file(path, base)
    assert skipped == []
    assert len(docs) == 1
    return docs[0]


def make_pdf(pages: list[list[str]], title: str | None = None) -> bytes:
    """A minimal valid PDF (checked with pypdf strict mode) showing each line with Helvetica."""
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        shown = [f"({line}) Tj T*" for line in lines]
        stream = "\n".join(["BT /F1 12 Tf 72 720 Td 14 TL", *shown, "ET"]).encode("latin-1")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R"
                       f" >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    info = f" /Info {len(objects)} 0 R" if title is not None else ""
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def encrypt(pdf: bytes, user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="RC4-128")  # noqa: S106
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------- discover


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for rel in ["b.md", "a.txt", "sub/c.html", "sub/deeper/z.jsonl", "sub/drafts/d.md", ".git/x.md",
                ".hidden.md", "img.png", "proj/.venv/y.txt", "proj/.esrag/e.json", "proj/p.rst", "doc.pdf"]:
        write(tmp_path / rel, "text")
    return tmp_path


def rels(root: Path, paths: list[Path]) -> list[str]:
    return [p.relative_to(root.resolve()).as_posix() for p in paths]


def test_discover_walks_sorted_skipping_hidden_and_unsupported_files(tree: Path) -> None:
    found, skipped = discover([tree])
    assert rels(tree, found) == ["a.txt", "b.md", "doc.pdf", "proj/p.rst", "sub/c.html", "sub/deeper/z.jsonl",
                                 "sub/drafts/d.md"]
    assert all(p.is_absolute() for p in found)
    assert skipped == []


def test_discover_can_include_hidden_files(tree: Path) -> None:
    found, _ = discover([tree], include_hidden=True)
    assert {".git/x.md", ".hidden.md", "proj/.venv/y.txt", "proj/.esrag/e.json"} <= set(rels(tree, found))


def test_discover_keeps_the_order_of_the_given_paths_and_drops_duplicates(tree: Path) -> None:
    found, _ = discover([tree / "sub", tree / "a.txt", tree, tree / "sub" / "c.html"])
    assert rels(tree, found) == ["sub/c.html", "sub/deeper/z.jsonl", "sub/drafts/d.md", "a.txt", "b.md",
                                 "doc.pdf", "proj/p.rst"]


def test_explicit_files_are_taken_even_hidden_and_unsupported_ones_are_skipped(tree: Path) -> None:
    found, skipped = discover([tree / ".hidden.md", tree / "img.png", tree / "b.md"])
    assert rels(tree, found) == [".hidden.md", "b.md"]
    assert skipped == [Skipped(posix(tree / "img.png"), "unsupported file type '.png'")]


def test_missing_path_is_a_loader_error_naming_it(tree: Path) -> None:
    with pytest.raises(LoaderError, match="nope/missing.md"):
        discover([tree, tree / "nope" / "missing.md"])


@pytest.mark.parametrize(("glob", "exclude", "expected"), [
    (["*.md"], [], ["b.md", "sub/drafts/d.md"]),
    (["sub/**"], [], ["sub/c.html", "sub/deeper/z.jsonl", "sub/drafts/d.md"]),
    (["**/*.html", "*.txt"], [], ["a.txt", "sub/c.html"]),
    (["sub/*"], [], ["sub/c.html"]),
    (["sub"], [], []),
    ([], ["sub/*"], ["a.txt", "b.md", "doc.pdf", "proj/p.rst"]),
    ([], ["drafts"], ["a.txt", "b.md", "doc.pdf", "proj/p.rst", "sub/c.html", "sub/deeper/z.jsonl"]),
    ([], ["sub/**/*.jsonl", "*.pdf", "proj/"], ["a.txt", "b.md", "sub/c.html", "sub/drafts/d.md"]),
    (["*.md"], ["sub/drafts/*"], ["b.md"]),
    (["[ab].*"], [], ["a.txt", "b.md"]),
    (["[!ab]*.*"], ["sub", "proj"], ["doc.pdf"]),
])
def test_glob_selects_and_exclude_removes(tree: Path, glob: list[str], exclude: list[str],
                                          expected: list[str]) -> None:
    found, _ = discover([tree], glob=glob, exclude=exclude)
    assert rels(tree, found) == expected


def test_exclude_applies_to_explicit_files_but_glob_does_not(tree: Path) -> None:
    found, _ = discover([tree / "a.txt", tree / "b.md"], glob=["*.md"], exclude=["b.*"])
    assert rels(tree, found) == ["a.txt"]


@pytest.mark.parametrize(("pattern", "rel", "as_glob", "as_exclude"), [
    ("*.md", "a/b/c.md", True, True),
    ("*.md", "a/b/c.mdx", False, False),
    ("docs/*.md", "docs/a.md", True, True),
    ("docs/*.md", "docs/sub/a.md", False, False),
    ("docs/*", "docs/sub/a.md", False, True),
    ("docs/**/*.md", "docs/a.md", True, True),
    ("docs/**/*.md", "docs/x/y/a.md", True, True),
    ("docs/**/*.md", "other/docs/a.md", False, False),
    ("**/docs", "x/docs/a.md", False, True),
    ("a?c.txt", "abc.txt", True, True),
    ("a?c.txt", "a/c.txt", False, False),
    ("build", "src/build/out.txt", False, True),
    ("./build/", "build/out.txt", False, True),
    ("[!a]*", "a/b.txt", True, True),
])
def test_patterns_match_files_as_globs_and_directories_too_as_excludes(pattern: str, rel: str, as_glob: bool,
                                                                       as_exclude: bool) -> None:
    assert _Pattern(pattern).matches(rel) is as_glob
    assert _Pattern(pattern).matches(rel, ancestors=True) is as_exclude


# ------------------------------------------------------------------------------------------- text formats


def test_text_file_document_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "notes.TXT", "Line one\r\nLine two\r\rEnd\n")
    doc = load_one(path, project="esrag")
    assert doc == Document(doc_id=posix(path), source=posix(path), text="Line one\nLine two\n\nEnd\n",
                           title="notes", metadata={"project": "esrag", "ext": ".txt"}, decode_errors=0,
                           title_is_name=True)


def test_doc_id_is_the_resolved_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "dir" / "a.txt", "hello")
    monkeypatch.chdir(tmp_path / "dir")
    assert load_one(Path("../dir/./a.txt")).doc_id == (tmp_path / "dir" / "a.txt").resolve().as_posix()


@pytest.mark.parametrize(("text", "title"), [
    ("Intro\n\n# The Title #\n\n## Sub\n", "The Title"),
    ("```bash\n# not a title\n```\n# Real title\n", "Real title"),
    ("Setext Title\n============\n\ntext\n", "Setext Title"),
    ("---\ntitle: \"Front matter\"\ntags: x\n---\n# Heading\n", "Front matter"),
    ("---\ntags: x\n---\n# Heading after front matter\n", "Heading after front matter"),
    ("## Only level two\ntext\n", ""),
    ("#hashtag is not a heading\n", ""),
])
def test_markdown_title(text: str, title: str) -> None:
    assert markdown_title(text) == title


def test_markdown_file_title_falls_back_to_the_stem(tmp_path: Path) -> None:
    assert load_one(write(tmp_path / "guide.md", "# Guide\n\ntext\n")).title == "Guide"
    assert load_one(write(tmp_path / "plain.md", "no heading\n")).title == "plain"


@pytest.mark.parametrize(("text", "title"), [
    ("My Title\n========\n\nBody.\n", "My Title"),
    ("==========\n Overlined \n==========\n\nBody.\n", "Overlined"),
    ("Intro text\n\nSection\n-------\n", "Section"),
    ("Too long a title\n===\n", ""),
])
def test_rst_title(text: str, title: str) -> None:
    assert rst_title(text) == title


def test_rst_file(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "index.rst", "Welcome\n=======\n\nHello.\n"))
    assert (doc.title, doc.text, doc.metadata) == ("Welcome", "Welcome\n=======\n\nHello.\n", {"ext": ".rst"})


HTML = """<!doctype html><html><head><title> My  Page </title><style>p {color: red}</style>
<script>var s = "<p>hidden</p>";</script></head>
<body><nav><ul><li>Home</li><li>About</li></ul></nav><h1>Main <em>heading</em></h1>
<p>First   paragraph with <b>bold</b> and a <a href="#">link</a>.</p>
<p>Second&nbsp;para &amp; more<br>next line</p><noscript>enable JS</noscript>
<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
<pre>code  line
    indented</pre><div>tail</div></body></html>"""


def test_html_text_keeps_blocks_and_drops_scripts_and_styles() -> None:
    text, title = html_to_text(HTML)
    assert title == "My Page"
    assert text == ("Home\nAbout\n\nMain heading\n\nFirst paragraph with bold and a link.\n\n"
                    "Second para & more\nnext line\n\na b\nc d\n\ncode  line\n    indented\n\ntail")


def test_html_title_falls_back_to_h1_then_stem(tmp_path: Path) -> None:
    assert load_one(write(tmp_path / "p.htm", "<h1>First <i>one</i></h1><h1>Second</h1><p>x</p>")).title == (
        "First one")
    doc = load_one(write(tmp_path / "page.html", "<p>just text</p>"))
    assert (doc.title, doc.text, doc.metadata) == ("page", "just text", {"ext": ".html"})


# ------------------------------------------------------------------------------------------- encodings


def test_invalid_utf8_bytes_are_replaced_and_counted(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "latin1.txt", "café ".encode("latin-1") + b"\xff\xfe ok \xc3"))
    assert doc.text == "caf\ufffd \ufffd\ufffd ok \ufffd"
    assert doc.decode_errors == 4


def test_utf8_bom_is_dropped(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "bom.md", b"\xef\xbb\xbf# Title\n"))
    assert (doc.text, doc.title, doc.decode_errors) == ("# Title\n", "Title", 0)


def test_utf16_with_bom_is_decoded(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "win.txt", "Ünïcode text\r\n".encode("utf-16")))
    assert (doc.text, doc.decode_errors) == ("Ünïcode text\n", 0)


@pytest.mark.parametrize("name", ["blob.txt", "blob.md", "blob.html", "blob.json", "blob.jsonl"])
def test_nul_byte_in_a_text_file_means_binary(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, b"looks like text\x00\x01\x02 but is not")
    assert load_file(path) == ([], [Skipped(posix(path), "binary file")])


def test_nul_byte_after_the_sniffed_prefix_is_text(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "late.txt", b"a" * 8192 + b"\x00"))
    assert doc.text == "a" * 8192 + "\x00"


@pytest.mark.parametrize(("name", "content"), [
    ("blank.txt", " \n\t\n"),
    ("blank.md", ""),
    ("scripts.html", "<html><script>only()</script><style>p{}</style></html>"),
])
def test_blank_documents_are_skipped_as_empty(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path / name, content)
    assert load_file(path) == ([], [Skipped(posix(path), "empty document")])


def test_unreadable_file_is_skipped_with_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "secret.txt", "text")

    def deny(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    assert load_file(path) == ([], [Skipped(posix(path), "cannot read: Permission denied")])


def test_missing_or_unsupported_file_is_skipped_by_load_file(tmp_path: Path) -> None:
    gone = tmp_path / "gone.txt"
    assert load_file(gone) == ([], [Skipped(posix(gone), "cannot read: No such file or directory")])
    odd = write(tmp_path / "data.xyz", "text")
    assert load_file(odd) == ([], [Skipped(posix(odd), "unsupported file type '.xyz'")])


# ------------------------------------------------------------------------------------------- PDF


def test_pdf_pages_are_joined_with_blank_lines_and_titled_from_metadata(tmp_path: Path) -> None:
    path = write(tmp_path / "paper.pdf", make_pdf([["Hello PDF world.", "Second line."], ["Page two."]],
                                                   title="A Paper"))
    doc = load_one(path)
    assert doc == Document(doc_id=posix(path), source=posix(path), title="A Paper",
                           text="Hello PDF world.\nSecond line.\n\nPage two.", metadata={"ext": ".pdf"})


def test_pdf_without_title_uses_the_stem(tmp_path: Path) -> None:
    assert load_one(write(tmp_path / "report.pdf", make_pdf([["Text."]]))).title == "report"


def test_pdf_with_an_empty_user_password_is_opened(tmp_path: Path) -> None:
    doc = load_one(write(tmp_path / "open.pdf", encrypt(make_pdf([["Readable."]]), "")))
    assert doc.text == "Readable."


def test_encrypted_pdf_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "locked.pdf", encrypt(make_pdf([["Secret."]]), "secret"))
    assert load_file(path) == ([], [Skipped(posix(path), "encrypted PDF (needs a password)")])


@pytest.mark.parametrize("content", [b"%PDF-1.4\nthis is not really a pdf", b"", b"\x00\x01\x02garbage"])
def test_broken_pdf_is_skipped_not_raised(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "broken.pdf", content)
    docs, skipped = load_file(path)
    assert docs == []
    assert [s.path for s in skipped] == [posix(path)]
    assert skipped[0].reason.startswith("cannot parse PDF: ")


def test_pdf_without_text_is_an_empty_document(tmp_path: Path) -> None:
    path = write(tmp_path / "scan.pdf", make_pdf([[]]))
    assert load_file(path) == ([], [Skipped(posix(path), "empty document")])


# ------------------------------------------------------------------------------------------- JSON / JSONL


def test_json_object_is_one_document(tmp_path: Path) -> None:
    path = write(tmp_path / "one.json", json.dumps({"text": "Body", "title": "T", "lang": "en", "n": 3,
                                                   "ok": True, "score": 0.5, "tags": ["x"], "none": None}))
    doc = load_one(path, team="a")
    assert doc == Document(doc_id=posix(path), source=posix(path), text="Body", title="T",
                           metadata={"team": "a", "ext": ".json", "lang": "en", "n": 3, "ok": True,
                                     "score": 0.5})
    with_id = write(tmp_path / "two.json", json.dumps({"id": "k1", "text": "Body"}))
    assert load_one(with_id).doc_id == posix(with_id) + "#k1"


def test_json_list_gives_one_document_per_object(tmp_path: Path) -> None:
    path = write(tmp_path / "many.json", json.dumps([
        {"id": "a", "text": "First"}, {"text": "Second"}, "not an object", {"title": "no text"},
        {"id": "a", "text": "dup"}, {"_id": 7, "text": "  "},
    ]))
    docs, skipped = load_file(path)
    name = posix(path)
    content_id = "sha-" + sha256_hex(canonical_json({"text": "Second"}))[:16]
    assert [(d.doc_id, d.text, d.title) for d in docs] == [(name + "#a", "First", ""),
                                                           (name + "#" + content_id, "Second", "")]
    assert skipped == [
        Skipped(name, "item 2: not a JSON object"),
        Skipped(name, "item 3: no 'text' string field"),
        Skipped(name, "item 4: duplicate id (first at item 0)"),
        Skipped(name, "item 5: empty document"),
    ]


def test_invalid_json_file_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", "{not json")
    docs, skipped = load_file(path)
    assert docs == [] and len(skipped) == 1
    assert skipped[0].path == posix(path) and skipped[0].reason.startswith("invalid JSON: ")


def test_jsonl_beir_corpus_with_a_bad_line_loads_the_rest(tmp_path: Path) -> None:
    lines = [
        json.dumps({"_id": "d1", "title": "Doc one", "text": "First text.", "metadata": {"year": 2020,
                                                                                          "url": "u1"}}),
        "",
        "{broken json",
        json.dumps({"_id": "d2", "text": "Second text.", "source_name": "wiki"}),
        json.dumps({"text": "No id here."}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"_id": "d3", "title": "missing text"}),
        json.dumps({"_id": "d1", "text": "duplicate"}),
        json.dumps({"id": "d4", "text": ""}),
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")
    docs, skipped = load_file(path, {"collection": "scifact"})
    name = posix(path)
    assert docs == [
        Document(doc_id=f"{name}#d1", source=name, text="First text.", title="Doc one",
                 metadata={"collection": "scifact", "ext": ".jsonl", "year": 2020, "url": "u1"}),
        Document(doc_id=f"{name}#d2", source=name, text="Second text.", title="",
                 metadata={"collection": "scifact", "ext": ".jsonl", "source_name": "wiki"}),
        Document(doc_id=f"{name}#sha-{sha256_hex(canonical_json({'text': 'No id here.'}))[:16]}", source=name,
                 text="No id here.", title="",
                 metadata={"collection": "scifact", "ext": ".jsonl"}),
    ]
    assert [s.path for s in skipped] == [name] * 5
    assert skipped[0].reason.startswith("line 3: invalid JSON: ")
    assert [s.reason for s in skipped[1:]] == [
        "line 6: not a JSON object",
        "line 7: no 'text' string field",
        "line 8: duplicate id (first at line 1)",
        "line 9: empty document",
    ]


def test_jsonl_decode_errors_are_counted_per_record(tmp_path: Path) -> None:
    path = write(tmp_path / "enc.jsonl", b'\xef\xbb\xbf{"id": 1, "text": "ok"}\n'
                                          b'{"id": 2, "text": "caf\xe9", "title": "t\xff\xfe"}\n')
    docs, skipped = load_file(path)
    assert skipped == []
    assert [(d.text, d.title, d.decode_errors) for d in docs] == [("ok", "", 0),
                                                                  ("caf\ufffd", "t\ufffd\ufffd", 3)]


def test_iter_file_streams_jsonl_records(tmp_path: Path) -> None:
    path = write(tmp_path / "s.jsonl", "\n".join(json.dumps({"id": i, "text": f"t{i}"}) for i in range(3)))
    items = iter_file(path)
    first = next(items)
    assert isinstance(first, Document) and first.text == "t0"
    assert [d.text for d in items if isinstance(d, Document)] == ["t1", "t2"]


# ------------------------------------------------------------------------------------- doc ids, hostile input


def test_doc_ids_are_relative_to_the_given_path_with_an_optional_prefix(tmp_path: Path) -> None:
    write(tmp_path / "docs" / "a.md", "A")
    write(tmp_path / "docs" / "sub" / "b.md", "B")
    write(tmp_path / "single.txt", "S")
    found, skipped = discover_sources([tmp_path / "docs", tmp_path / "single.txt"], prefix="kb:")
    assert [(f.doc_id, f.path.as_posix()) for f in found] == [
        ("kb:docs/a.md", posix(tmp_path / "docs" / "a.md")),
        ("kb:docs/sub/b.md", posix(tmp_path / "docs" / "sub" / "b.md")),
        ("kb:single.txt", posix(tmp_path / "single.txt")),
    ]
    assert skipped == []


def test_a_doc_id_taken_by_an_earlier_file_is_skipped_naming_both(tmp_path: Path) -> None:
    write(tmp_path / "one" / "docs" / "a.md", "A")
    write(tmp_path / "two" / "docs" / "a.md", "other A")
    found, skipped = discover_sources([tmp_path / "one" / "docs", tmp_path / "two" / "docs"])
    assert [f.doc_id for f in found] == ["docs/a.md"]
    assert skipped == [Skipped(posix(tmp_path / "two" / "docs" / "a.md"),
                               f"doc id 'docs/a.md' is already taken by {posix(tmp_path / 'one' / 'docs' / 'a.md')}")]


def test_doc_id_candidates_go_from_most_to_least_specific(tmp_path: Path) -> None:
    path = tmp_path / "proj" / "docs" / "a.md"
    candidates = doc_id_candidates(path)
    assert candidates[0] == str(path) and posix(path) in candidates
    assert candidates[-3:] == ["proj/docs/a.md", "docs/a.md", "a.md"]


def test_a_file_that_vanishes_after_discovery_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path / "gone.md", "here for now")
    found, _ = discover([tmp_path])
    path.unlink()
    assert load_file(found[0]) == ([], [Skipped(posix(path), "cannot read: No such file or directory")])


def test_an_unexpected_loader_error_is_a_one_line_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import esrag.sources.loaders as loaders

    path = write(tmp_path / "page.html", "<p>x</p>")

    def explode(html: str) -> tuple[str, str, tuple[()]]:
        raise RuntimeError("parser\nexploded")

    monkeypatch.setattr(loaders, "html_document", explode)
    assert load_file(path) == ([], [Skipped(posix(path), "cannot load: RuntimeError: parser exploded")])


def test_deeply_nested_json_and_surrogates_are_skipped_per_record(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", "\n".join([
        '{"id": "1", "text": "fine"}',
        "[" * 3000,
        '{"id": "\\udfff", "text": "bad id"}',
        '{"text": "bad key", "\\ud800": "v"}',
        '{"id": "2", "text": "value \\udc80 replaced", "k": "\\ud801"}',
    ]))
    docs, skipped = load_file(path)
    assert [(d.doc_id.rsplit("#")[1], d.text, d.metadata.get("k"), d.decode_errors) for d in docs] == [
        ("1", "fine", None, 0), ("2", "value \ufffd replaced", "\ufffd", 2)]
    assert [s.reason for s in skipped] == [
        "line 2: invalid JSON: nested too deeply",
        "line 3: id is not valid Unicode (a lone surrogate)",
        "line 4: metadata key '\\ud800' is not valid Unicode",
    ]


def test_non_finite_numbers_and_unaddressable_ids_skip_their_record_naming_the_field(tmp_path: Path) -> None:
    path = write(tmp_path / "n.jsonl", "\n".join([
        '{"id": "ok", "text": "fine", "p": 1.5}',
        '{"id": "a", "text": "t", "metadata": {"p99": NaN}}',
        '{"id": "b", "text": "t", "deep": {"x": [1, -Infinity]}}',
        '{"id": "c", "text": "t", "n": 1e400}',
        '{"id": "../../x", "text": "t"}',
        '{"id": "a\\nb", "text": "t"}',
    ]))
    docs, skipped = load_file(path)
    assert [(d.doc_id.rsplit("#")[1], dict(d.metadata)) for d in docs] == [("ok", {"ext": ".jsonl", "p": 1.5})]
    assert [s.reason.split(" (")[0] for s in skipped] == [
        "line 2: field 'metadata.p99' must be a finite number, not nan",
        "line 3: field 'deep.x.1' must be a finite number, not -inf",
        "line 4: field 'n' must be a finite number, not inf",
        "line 5: id '../../x' is not a valid document id: it has a '..' segment; ids are addressed as URL paths, "
        "which resolve these",
        "line 6: id 'a\\nb' is not a valid document id: it has a control character U+000A at character 1",
    ]
    whole = write(tmp_path / "w.json", '{"text": "t", "score": NaN}')
    assert [s.reason for s in load_file(whole)[1]] == [
        "field 'score' must be a finite number, not nan (NaN and infinities are not JSON numbers)"]


def test_size_limit_skips_large_files_and_jsonl_lines(tmp_path: Path) -> None:
    big = write(tmp_path / "big.md", "x" * 2000)
    assert load_file(big, max_bytes=1000) == ([], [Skipped(posix(big), "larger than --max-file-size "
                                                                         "(2,000 > 1,000 bytes)")])
    lines = write(tmp_path / "c.jsonl", '{"id": "a", "text": "' + "y" * 3000 + '"}\n{"id": "b", "text": "ok"}\n')
    docs, skipped = load_file(lines, max_bytes=1000)
    assert [d.text for d in docs] == ["ok"]
    assert skipped == [Skipped(posix(lines), "line 1: larger than --max-file-size (3,024 > 1,000 bytes)")]


def test_display_shows_undecodable_bytes_of_a_name() -> None:
    assert display("plain.md") == "plain.md"
    assert display(b"bad\xffname.md".decode("utf-8", "surrogateescape")) == "bad\\xffname.md"
    assert display("lone\ud800") == "lone\\ud800"
