#!/usr/bin/env python3
"""Build python-faq: the Python 3.11 docs split into sections, judged against the Python FAQ's questions.

    python scripts/build_python_faq.py OUT_DIR            # downloads python3.11-doc with apt-get
    python scripts/build_python_faq.py OUT_DIR --deb python3.11-doc_3.11.2-6+deb12u9_all.deb

Material: the reStructuredText sources (`html/_sources/**/*.rst.txt`) in Debian's `python3.11-doc` package
(license PSF-2). Every section of every page becomes a document `PAGE#N` (N counts the page's sections from 0:
the text before the first heading, if any, then one per heading) whose text is the raw reStructuredText under
the heading, up to the next heading of any level. Sections of fewer than 20 words are left out.

Queries: the headings of `faq/*.rst` that end with "?", each judged to its own section (one relevant document
per query). The question must not help find its answer by string matching, so the heading is not part of any
document: a question section's title is its page (`faq/design`), not the heading. Questions whose section has
fewer than 20 words ("See the next question.") are left out with it.

Writes OUT_DIR/corpus.jsonl, queries.jsonl and qrels/test.tsv (BEIR layout), replacing any set already there.
Needs `apt-get download` (run `apt-get update` once first) unless --deb is given; installs nothing.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _evalset import MIN_WORDS, BuildError, Doc, Query, run_builder, word_count  # noqa: E402

PACKAGE = "python3.11-doc"
SOURCES = "usr/share/doc/python3.11/html/_sources"
SUFFIX = ".rst.txt"

# A section adornment: one character repeated, nothing else on the line. docutils accepts any punctuation;
# these are the ones the Python docs use, less ">" (5 headings of library/multiprocessing), which the
# published python-faq set does not split at. Keeping it out reproduces that set exactly.
ADORNMENT_CHARS = "=-~^\"'*+#.:_`"
_ADORNMENT = re.compile(r"^([" + re.escape(ADORNMENT_CHARS) + r"])\1*[ \t]*$")


@dataclass(frozen=True)
class Section:
    index: int
    """0 for the text before the first heading, then 1, 2, ... for the headings in page order."""
    title: str
    """The heading's text ("" for section 0)."""
    text: str
    """Everything between the heading's adornment and the next heading, stripped of surrounding whitespace."""


def _is_adornment(line: str) -> bool:
    return bool(_ADORNMENT.match(line))


def _heading_at(lines: list[str], i: int) -> tuple[str, int] | None:
    """If a heading starts at line `i`, its title and the number of lines it takes."""
    line = lines[i]
    if i + 1 >= len(lines) or not line.strip() or line[0].isspace() or _is_adornment(line):
        return None
    under = lines[i + 1].rstrip()
    if _is_adornment(under) and len(under) >= len(line.rstrip()):
        return line.strip(), 2
    return None


def split_sections(source: str) -> list[Section]:
    """Split a reStructuredText page at every heading, of any level.

    A heading is a line at the left margin, not itself an adornment, followed by an adornment line at least
    as long. Indented text (literal blocks, directive bodies) never holds one. An overline is not told apart:
    it stays at the end of the section before, and an indented overlined title is not a heading (so the
    published set was made). Section 0, the text before the first heading, is kept only if it is not empty:
    on a page that starts with its title, that title is section 0.
    """
    lines = source.splitlines()
    sections: list[Section] = []
    title, start, i = "", 0, 0
    while i < len(lines):
        found = _heading_at(lines, i)
        if found is None:
            i += 1
            continue
        text = "\n".join(lines[start:i]).strip()
        if sections or title or text:
            sections.append(Section(len(sections), title, text))
        title, taken = found
        i += taken
        start = i
    sections.append(Section(len(sections), title, "\n".join(lines[start:]).strip()))
    return sections


def is_question(title: str) -> bool:
    return title.rstrip().endswith("?")


def page_docs(page: str, source: str) -> tuple[list[Doc], list[tuple[str, str]]]:
    """The documents of one page (sections of MIN_WORDS+ words) and its (question, doc id) pairs.

    Questions are collected only from FAQ pages (`faq/...`); a question section's title is the page name,
    so the question is not in its document.
    """
    faq = page.startswith("faq/")
    docs: list[Doc] = []
    questions: list[tuple[str, str]] = []
    for s in split_sections(source):
        if word_count(s.text) < MIN_WORDS:
            continue
        doc_id = f"{page}#{s.index}"
        asked = faq and is_question(s.title)
        docs.append(Doc(doc_id, page if asked or not s.title else s.title, s.text))
        if asked:
            questions.append((s.title, doc_id))
    return docs, questions


def build(root: Path) -> tuple[list[Doc], list[Query]]:
    """The corpus and queries from an unpacked python3.11-doc tree, pages in path order."""
    src = root / SOURCES
    pages = sorted(src.rglob(f"*{SUFFIX}"))
    if not pages:
        raise BuildError(f"the package holds no {SOURCES}/**/*{SUFFIX}: is it {PACKAGE}?")
    docs: list[Doc] = []
    queries: list[Query] = []
    for path in pages:
        page = path.relative_to(src).as_posix()[: -len(SUFFIX)]
        page_documents, questions = page_docs(page, path.read_text(encoding="utf-8"))
        docs.extend(page_documents)
        base = len(queries)
        queries.extend(Query(f"q{base + n}", q, d) for n, (q, d) in enumerate(questions))
    return docs, queries


def main(argv: list[str] | None = None) -> int:
    return run_builder(__doc__ or "", PACKAGE, SOURCES, build, argv)


if __name__ == "__main__":
    sys.exit(main())
