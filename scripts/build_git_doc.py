#!/usr/bin/env python3
"""Build git-doc: git's documentation split into sections, judged against what each page says it is for.

    python scripts/build_git_doc.py OUT_DIR               # downloads git-doc with apt-get
    python scripts/build_git_doc.py OUT_DIR --deb 'git-doc_1%3a2.39.5-0+deb12u3_all.deb'

Material: the AsciiDoc sources (`usr/share/doc/git-doc/*.txt`, `howto/*.txt`, `technical/*.txt`) in Debian's
`git-doc` package (license GPL-2). Fragments that other pages `include::` (option lists such as
`diff-options.txt`, the `cmds-*.txt` command lists) are left out: they are not pages, and would repeat text.
Every heading (`Title` over a line of `=-~^+`, or `== Title`) starts a document `PAGE#N` (N counts the page's
sections from 0) whose text is the raw AsciiDoc under it, up to the next heading; inside delimited blocks
(`----`, `....`) nothing is a heading. In `gitfaq` each question (`Question?::`) starts a section too. Anchor
lines (`[[id]]`) are dropped, and a cross-reference `<<id,text>>` keeps only its text (`<<id>>` is dropped):
both spell out the heading they point to. Sections of fewer than 20 words are left out. A section's title is
"PAGE: heading" ("git-add(1): DESCRIPTION").

Queries, each judged to one section:
- every manual page's purpose, from its NAME line ("git-add - Add file contents to the index" asks "Add file
  contents to the index"), judged to the page's DESCRIPTION. The NAME section is one line, so it is never a
  document. A purpose that two pages share (`git-init-db` is a synonym of `git-init`) is left out;
- gitfaq's questions, judged to their answers;
- the user manual's headings that ask a question or say "How to ...", judged to their sections.
A question section's title is its page alone ("gitfaq(7)"), so the question is not in its document; a query
whose text its judged document contains anyway is left out (the builder says how many).

Writes OUT_DIR/corpus.jsonl, queries.jsonl and qrels/test.tsv (BEIR layout), replacing any set already there.
Needs `apt-get download` (run `apt-get update` once first) unless --deb is given; installs nothing.
"""

from __future__ import annotations

import posixpath
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _evalset import MIN_WORDS, BuildError, Doc, Query, run_builder, word_count  # noqa: E402

PACKAGE = "git-doc"
DOC_DIR = "usr/share/doc/git-doc"
SUBDIRS = ("", "howto", "technical")

_UNDERLINE = re.compile(r"^([=\-~^+])\1+[ \t]*$")
_ONE_LINE = re.compile(r"^(={1,5})[ \t]+(\S.*?)(?:[ \t]+=+)?[ \t]*$")
_DELIMITER = re.compile(r"^(-{4,}|\.{4,}|={4,}|\*{4,}|\+{4,}|_{4,}|/{4,})[ \t]*$")
_ANCHOR_LINE = re.compile(r"^\[\[[^\]]*\]\][ \t]*$")
_XREF = re.compile(r"<<([^,>]+)(?:,\s*([^>]*))?>>")
_FAQ_QUESTION = re.compile(r"^(\S.*\?)::[ \t]*$")
_INCLUDE = re.compile(r"^include::([^\[]+)\[", re.M)
_NAME_LINE = re.compile(r"^(\S+?)\s+-+\s+(\S.*)$")


@dataclass(frozen=True)
class Section:
    index: int
    title: str
    """The heading ("" for text before the first heading)."""
    text: str
    kind: str = "heading"
    """"heading", or "question" for a gitfaq item."""


def clean_text(text: str) -> str:
    """Drop `[[id]]` anchor lines and the target part of `<<id,text>>` cross-references (`<<id>>` goes)."""
    lines = [line for line in text.splitlines() if not _ANCHOR_LINE.match(line)]
    return _XREF.sub(lambda m: m.group(2) or "", "\n".join(lines)).strip()


def _heading_at(lines: list[str], i: int) -> tuple[str, int] | None:
    line = lines[i]
    if not any(c.isalnum() for c in line) or line[0] in " \t/[.:" or _DELIMITER.match(line):
        return None  # "+" over "--" is a list continuation opening a block, not a heading
    m = _ONE_LINE.match(line)
    if m:
        return m.group(2).strip(), 1
    if i + 1 < len(lines) and _UNDERLINE.match(lines[i + 1]) and lines[i + 1].rstrip() != "--":  # "--" opens a block
        if abs(len(lines[i + 1].rstrip()) - len(line.rstrip())) <= 2:
            return line.strip(), 2
    return None


def split_sections(source: str, faq_questions: bool = False) -> list[Section]:
    """Split an AsciiDoc page at every heading (and, if `faq_questions`, at every `Question?::` item).

    Section 0 is the text before the first heading, kept only if it is not empty. Texts are cleaned with
    `clean_text` and stripped.
    """
    lines = source.splitlines()
    sections: list[Section] = []
    title, kind, start, i = "", "heading", 0, 0
    block: str | None = None  # the delimiter of the open delimited block, if any

    def close(end: int) -> None:
        text = clean_text("\n".join(lines[start:end]))
        if sections or title or text:
            sections.append(Section(len(sections), title, text, kind))

    while i < len(lines):
        line = lines[i]
        if block is not None:
            if line.rstrip() == block:
                block = None
            i += 1
            continue
        found = _heading_at(lines, i)
        if found is not None:
            close(i)
            (title, taken), kind = found, "heading"
            i += taken
            start = i
            continue
        if _DELIMITER.match(line):
            block = line.rstrip()
        elif faq_questions and (m := _FAQ_QUESTION.match(line)):
            close(i)
            title, kind = m.group(1).strip(), "question"
            start = i + 1
        i += 1
    close(len(lines))
    return sections


def purpose(sections: list[Section]) -> tuple[str, str] | None:
    """(name, purpose) from a manual page's NAME section ("git-add - Add file ..."), or None if it has none."""
    for s in sections:
        if s.title == "NAME":
            m = _NAME_LINE.match(" ".join(s.text.split()))
            if m:
                return m.group(1), m.group(2).strip()
    return None


def is_how_to(title: str) -> bool:
    return "?" in title or title.lower().startswith("how to ")


def fragments(pages: dict[str, str]) -> set[str]:
    """The pages (by relative path without .txt) that another page includes."""
    out: set[str] = set()
    for page, source in pages.items():
        base = Path(page).parent
        for target in _INCLUDE.findall(source):
            out.add(posixpath.normpath((base / target.strip()).as_posix()).removesuffix(".txt"))
    return out


def page_docs(page: str, source: str) -> tuple[list[Doc], list[tuple[str, str]]]:
    """The documents of one page (sections of MIN_WORDS+ words) and its (query, doc id) pairs."""
    name = Path(page).name
    sections = split_sections(source, faq_questions=name == "gitfaq")
    heading0 = sections[0].title if sections and sections[0].title else page
    page_title = heading0 if re.fullmatch(r"\S+\(\d\)", heading0) else page
    docs: list[Doc] = []
    asks: list[tuple[str, str]] = []
    about = purpose(sections)
    for s in sections:
        if word_count(s.text) < MIN_WORDS:
            continue
        doc_id = f"{page}#{s.index}"
        asked = s.kind == "question" or (name == "user-manual" and is_how_to(s.title))
        if asked:
            title = page_title
            asks.append((s.title, doc_id))
        else:
            title = f"{page_title}: {s.title}" if s.title and s.title != heading0 else page_title
        if about and s.title == "DESCRIPTION":
            asks.append((about[1], doc_id))
        docs.append(Doc(doc_id, title, s.text))
    return docs, asks


def build(root: Path) -> tuple[list[Doc], list[Query], dict[str, int]]:
    """The corpus, the queries and counts of left-out queries (by reason) from an unpacked git-doc tree."""
    base = root / DOC_DIR
    if not base.is_dir():
        raise BuildError(f"the package holds no {DOC_DIR}: is it {PACKAGE}?")
    pages: dict[str, str] = {}
    for sub in SUBDIRS:
        for path in sorted((base / sub).glob("*.txt")):
            pages[path.relative_to(base).as_posix().removesuffix(".txt")] = path.read_text(encoding="utf-8")
    if not pages:
        raise BuildError(f"no .txt pages under {base}")
    skip = fragments(pages)
    docs: list[Doc] = []
    pairs: list[tuple[str, str]] = []
    for page, source in pages.items():
        if page in skip:
            continue
        page_documents, asks = page_docs(page, source)
        docs.extend(page_documents)
        pairs.extend(asks)
    texts = {d.id: (d.title + "\n" + d.text).lower() for d in docs}
    counts = Counter(q.lower() for q, _ in pairs)
    left_out = {"shared by two pages": 0, "in its judged section": 0}
    queries: list[Query] = []
    for q, doc_id in pairs:
        if counts[q.lower()] > 1:
            left_out["shared by two pages"] += 1
        elif q.lower() in texts[doc_id]:
            left_out["in its judged section"] += 1
        else:
            queries.append(Query(f"q{len(queries)}", q, doc_id))
    return docs, queries, left_out


def main(argv: list[str] | None = None) -> int:
    return run_builder(__doc__ or "", PACKAGE, DOC_DIR, build, argv)


if __name__ == "__main__":
    sys.exit(main())
