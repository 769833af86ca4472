#!/usr/bin/env python3
"""Build debian-faq: the Debian GNU/Linux FAQ split into sections, judged against its own questions.

    python scripts/build_debian_faq.py OUT_DIR            # downloads debian-faq with apt-get
    python scripts/build_debian_faq.py OUT_DIR --deb debian-faq_11.1_all.deb

Material: the HTML chapters (`usr/share/doc/debian/FAQ/*.en.html`, DocBook output) in Debian's `debian-faq`
package (license GPL-2+), in the order of the FAQ's table of contents. Every heading (chapter or section, any
depth) starts a document `CHAPTER#ANCHOR` (the page's name and the heading's DocBook id) whose text is the
page's text under that heading up to the next heading, as plain text (paragraphs and list items on their own
lines, `<pre>` kept verbatim). The navigation bars and tables of contents are left out. Sections of fewer than
20 words are left out.

Queries: the section headings that ask a question (contain "?"), without their number ("3.1. "), each judged
to its own section. The question must not help find its answer by string matching, so it is not part of any
document: a question section's title is its chapter's name ("Choosing a Debian distribution"), and a
cross-reference's link text, which quotes the target's heading ('Section 12.1, "What other documentation
exists...?"'), keeps only its number ("Section 12.1").

Writes OUT_DIR/corpus.jsonl, queries.jsonl and qrels/test.tsv (BEIR layout), replacing any set already there.
Needs `apt-get download` (run `apt-get update` once first) unless --deb is given; installs nothing.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _evalset import MIN_WORDS, BuildError, Doc, Query, run_builder, word_count  # noqa: E402

PACKAGE = "debian-faq"
FAQ_DIR = "usr/share/doc/debian/FAQ"
INDEX = "index.en.html"

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_BLOCKS = {"p", "div", "li", "dt", "dd", "pre", "tr", "table", "ul", "ol", "dl", "br", "hr", "blockquote"}
_SKIP_CLASSES = {"navheader", "navfooter", "toc"}
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr"}
_NUMBER = re.compile(r"^\s*(?:Chapter\s+)?\d+(?:\.\d+)*\.\s+")
_XREF_QUOTE = re.compile(r"^((?:Section|Chapter|Appendix)\s+[\w.]+),\s*\u201c.*\u201d\s*$", re.S)


@dataclass(frozen=True)
class Section:
    anchor: str
    """The heading's DocBook id ("" for text before the page's first heading)."""
    heading: str
    """The heading's text as shown, with its number ("3.1. Which Debian distribution ...?")."""
    text: str


def strip_number(heading: str) -> str:
    """A heading without its "Chapter 3." or "3.1.2." prefix."""
    return _NUMBER.sub("", heading, count=1).strip()


def is_question(heading: str) -> bool:
    return "?" in heading


def drop_xref_quote(link_text: str) -> str:
    """'Section 12.1, "What ...?"' -> 'Section 12.1'; other link texts unchanged."""
    m = _XREF_QUOTE.match(link_text.strip())
    return m.group(1) if m else link_text


class _SectionParser(HTMLParser):
    """Cuts a DocBook HTML page into (anchor, heading, text) at every <h1>..<h6 class="title">."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[Section] = []
        self._anchor, self._heading = "", ""
        self._parts: list[str] = []
        self._stack: list[tuple[str, bool]] = []  # (tag, starts a skipped subtree)
        self._skip = 0
        self._pre = 0
        self._in_heading = False
        self._heading_parts: list[str] = []
        self._heading_anchor = ""
        self._xref: list[str] | None = None
        self._in_head = False

    # -- text accumulation -------------------------------------------------------------------------------
    def _emit(self, text: str) -> None:
        if self._in_heading:
            self._heading_parts.append(text)
        elif self._xref is not None:
            self._xref.append(text)
        else:
            self._parts.append(text)

    def _close_section(self) -> None:
        self.sections.append(Section(self._anchor, self._heading, _clean("".join(self._parts))))
        self._parts = []

    # -- HTMLParser hooks --------------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "head":
            self._in_head = True
        skip = bool(set(a.get("class", "").split()) & _SKIP_CLASSES) or tag in {"script", "style"}
        if tag not in _VOID:
            self._stack.append((tag, skip))
        if skip:
            self._skip += 1
        if self._skip or self._in_head:
            return
        if tag in _HEADINGS and "title" in a.get("class", "").split():
            self._in_heading, self._heading_parts, self._heading_anchor = True, [], ""
        elif tag == "a" and self._in_heading and a.get("id"):
            self._heading_anchor = a["id"]
        elif tag == "a" and "xref" in a.get("class", "").split():
            self._xref = []
        elif tag == "pre":
            self._pre += 1
            self._emit("\n\n\x00PRE")
        elif tag == "li":
            self._emit("\n* ")
        elif tag in _BLOCKS:
            self._emit("\n\n" if tag in {"p", "pre", "table", "div"} else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        if tag in _VOID:
            return
        # Pop to the matching open tag (DocBook's XHTML is well formed; this only guards stray end tags).
        while self._stack:
            open_tag, skip = self._stack.pop()
            if skip:
                self._skip -= 1
            if open_tag == tag:
                break
        if self._skip or self._in_head:
            return
        if tag in _HEADINGS and self._in_heading:
            self._in_heading = False
            self._close_section()
            self._anchor = self._heading_anchor
            self._heading = " ".join("".join(self._heading_parts).split())
        elif tag == "a" and self._xref is not None:
            text, self._xref = "".join(self._xref), None
            self._emit(drop_xref_quote(" ".join(text.split())))
        elif tag == "pre":
            self._pre -= 1
            self._emit("PRE\x00\n\n")
        elif tag in _BLOCKS:
            self._emit("\n\n" if tag in {"p", "pre", "table", "div"} else "\n")

    def handle_data(self, data: str) -> None:
        if self._skip or self._in_head:
            return
        self._emit(data)

    def close(self) -> None:
        super().close()
        self._close_section()


def _clean(raw: str) -> str:
    """Collapse whitespace outside <pre> blocks, keep at most one blank line between blocks, strip."""
    out: list[str] = []
    for n, piece in enumerate(re.split(r"\x00PRE|PRE\x00", raw)):
        if n % 2:  # inside <pre>
            out.append("\n\n" + piece.strip("\n") + "\n\n")
            continue
        lines = [" ".join(line.split()) for line in piece.split("\n")]
        out.append("\n".join(lines))
    text = re.sub(r"(?m)^\* *\n(?:[ \t]*\n)*", "* ", "".join(out))  # "* " then the item's first <p>
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_sections(html: str) -> list[Section]:
    """The sections of one DocBook HTML page, in page order; the first (anchor "") is any text before a heading."""
    parser = _SectionParser()
    parser.feed(html)
    parser.close()
    return parser.sections


def chapter_pages(index_html: str) -> list[str]:
    """The chapter file names linked from the FAQ's table of contents, in order, each once."""
    pages: list[str] = []
    for href in re.findall(r'<span class="(?:chapter|appendix)"><a href="([^"#]+)', index_html):
        if href not in pages:
            pages.append(href)
    return pages


def page_docs(page: str, html: str) -> tuple[list[Doc], list[tuple[str, str]]]:
    """The documents of one chapter page (sections of MIN_WORDS+ words) and its (question, doc id) pairs."""
    sections = split_sections(html)
    chapter = next((strip_number(s.heading) for s in sections if s.heading), page)
    docs: list[Doc] = []
    questions: list[tuple[str, str]] = []
    for n, s in enumerate(sections):
        if word_count(s.text) < MIN_WORDS:
            continue
        doc_id = f"{page}#{s.anchor or n}"
        title = strip_number(s.heading)
        asked = is_question(title)
        docs.append(Doc(doc_id, chapter if asked or not title else title, s.text))
        if asked:
            questions.append((title, doc_id))
    return docs, questions


def build(root: Path) -> tuple[list[Doc], list[Query]]:
    """The corpus and queries from an unpacked debian-faq tree, chapters in table-of-contents order."""
    faq = root / FAQ_DIR
    index = faq / INDEX
    if not index.is_file():
        raise BuildError(f"the package holds no {FAQ_DIR}: is it {PACKAGE}?")
    pages = chapter_pages(index.read_text(encoding="utf-8"))
    if not pages:
        raise BuildError(f"{index} links no chapters")
    docs: list[Doc] = []
    queries: list[Query] = []
    for name in pages:
        page = name.removesuffix(".en.html")
        page_documents, questions = page_docs(page, (faq / name).read_text(encoding="utf-8"))
        docs.extend(page_documents)
        base = len(queries)
        queries.extend(Query(f"q{base + n}", q, d) for n, (q, d) in enumerate(questions))
    return docs, queries


def main(argv: list[str] | None = None) -> int:
    return run_builder(__doc__ or "", PACKAGE, FAQ_DIR, build, argv)


if __name__ == "__main__":
    sys.exit(main())
