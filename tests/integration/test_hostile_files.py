"""No input aborts an ingest: a corpus of hostile files is ingested, every bad file (or record) is one
skipped entry with its path and a one-line reason, the good files are searchable, and the exit code is 0.
Real packaged MiniLM, real stores (run one with ``-k sqlite``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esrag.ingest.pipeline import Ingestor
from esrag.sources.files import FilesSource
from esrag.stores.base import Store
from esrag.types import SearchRequest

pytestmark = pytest.mark.integration

MakeStore = Callable[..., Store]


def hostile_corpus(root: Path, outside: Path) -> dict[str, str]:
    """Writes the corpus; returns {path fragment: expected reason fragment} for what must be skipped."""
    root.mkdir()
    (root / "good.md").write_text("# Good\n\nThe lighthouse keeper counts ships at dawn.")
    (root / "latin1.txt").write_bytes("caf\xe9 au lait, the harbour caf\xe9".encode("latin-1"))  # bytes replaced
    (root / "deep.json").write_text("[" * 2000 + "]" * 2000)  # RecursionError in json, once fatal
    (root / "deep.jsonl").write_text('{"text": "fine record about orchards"}\n' + "[" * 2000 + "\n")
    os.close(os.open(os.fsencode(root) + b"/bad\xffname.md", os.O_WRONLY | os.O_CREAT, 0o644))
    with open(os.fsencode(root) + b"/bad\xffname.md", "w") as f:
        f.write("a file whose name is not UTF-8")
    (root / "surrogates.jsonl").write_text(
        '{"id": "\\ud800", "text": "lone surrogate id"}\n'
        '{"\\udc00key": 1, "text": "lone surrogate key"}\n'
        '{"id": "ok", "text": "a lone \\ud83d surrogate in text is replaced"}\n')
    (root / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (root / "huge.txt").write_text("word " * 1000)  # 5,000 bytes, over the limit below
    (root / "long-line.jsonl").write_text('{"id": "a", "text": "short"}\n{"id": "b", "text": "' + "x" * 5000 + '"}\n')
    (root / "empty.md").write_text("  \n\n ")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    outside.mkdir()
    (outside / "secret.md").write_text("outside the root")
    (root / "link-out.md").symlink_to(outside / "secret.md")
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to(root / "loop")  # a symlink loop
    (root / "dir-out").symlink_to(outside)
    os.mkfifo(root / "fifo.md")  # never opened: a read would block
    return {
        "deep.json": "nested too deeply",
        "deep.jsonl": "line 2: invalid JSON: nested too deeply",
        "bad\\xffname.md": "not valid UTF-8",
        "surrogates.jsonl#1": "line 1: id is not valid Unicode",
        "surrogates.jsonl#2": "line 2: metadata key",
        "binary.txt": "binary file",
        "huge.txt": "larger than --max-file-size (5,000 > 4,096 bytes)",
        "long-line.jsonl": "line 2: larger than --max-file-size",
        "empty.md": "empty document",
        "broken.pdf": "cannot parse PDF",
        "link-out.md": "outside the given paths (--follow-symlinks follows it)",
        "dir-out": "outside the given paths",
    }


def test_a_hostile_corpus_is_ingested_with_every_bad_file_listed(make_store: MakeStore, embedder: Any,
                                                                  tmp_path: Path) -> None:
    root, outside = tmp_path / "corpus", tmp_path / "outside"
    expected = hostile_corpus(root, outside)
    store = make_store()
    report = Ingestor(store, embedder, store.settings).ingest(  # type: ignore[attr-defined]
        FilesSource([root], max_file_size=4096))
    assert report.ok and report.exit_code == 0, report.to_dict()
    reasons = [f"{s.path}: {s.reason}" for s in report.skipped]
    assert len(reasons) == len(expected), "\n".join(reasons)
    for fragment, reason in expected.items():
        name = fragment.split("#")[0]
        assert any(name in r and reason in r for r in reasons), (fragment, reasons)
    assert all("\n" not in r for r in reasons)
    assert report.decode_errors >= 2  # latin-1 bytes and the lone surrogate in a text
    docs = set(store.list_documents())
    assert docs == {"corpus/good.md", "corpus/latin1.txt", "corpus/deep.jsonl#sha-" + docs_sha(docs, "deep"),
                    "corpus/surrogates.jsonl#ok", "corpus/long-line.jsonl#a"}
    hits = store.search(SearchRequest(text="lighthouse keeper", vector=None, candidates=3)).bm25
    assert hits and hits[0].doc_id == "corpus/good.md"


def docs_sha(docs: set[str], name: str) -> str:
    return next(d.split("#sha-")[1] for d in docs if f"{name}.jsonl#sha-" in d)


def test_follow_symlinks_follows_links_out_of_the_roots_and_loops_still_end(make_store: MakeStore, embedder: Any,
                                                                            tmp_path: Path) -> None:
    root, outside = tmp_path / "corpus", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.md").write_text("text that lives outside the root")
    (root / "link.md").symlink_to(outside / "secret.md")
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to(root)
    (root / "loop" / "note.md").write_text("a note inside the loop")
    store = make_store()
    report = Ingestor(store, embedder, store.settings).ingest(  # type: ignore[attr-defined]
        FilesSource([root], follow_symlinks=True))
    assert report.ok and report.skipped == []
    assert set(store.list_documents()) == {"corpus/link.md", "corpus/loop/note.md"}
