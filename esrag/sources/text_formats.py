"""Pure text extraction for loaders: titles and heading outlines of Markdown and reStructuredText, visible
text and headings of HTML. No I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser

from esrag.types import Heading

# ---------------------------------------------------------------------------------------------- titles


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_FRONT_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$")


def markdown_title(text: str) -> str:
    """The first level-1 heading (``# Title`` or a line underlined with ``===``) outside code fences, or a
    ``title:`` in YAML front matter; "" if none."""
    lines = text.split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                start = i + 1
                for line in lines[1:i]:
                    if m := _FRONT_TITLE.match(line):
                        return m.group(1).strip("\"'")
                break
    in_fence = False
    for i in range(start, len(lines)):
        line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        elif in_fence:
            continue
        elif m := _ATX_H1.match(line):
            return m.group(1).strip()
        elif (line.strip() and i + 1 < len(lines) and _SETEXT_H1.match(lines[i + 1])
              and not line.startswith("    ")):
            return line.strip()
    return ""


_RST_ADORNMENT = re.compile(r"""^([=\-~^"'`*+#:.!_<>])\1*$""")


def rst_title(text: str) -> str:
    """The first section title: a line followed by an adornment line (``====``, ``----``...) at least as
    long as it; "" if none."""
    lines = text.split("\n")
    for i in range(len(lines) - 1):
        title, underline = lines[i].strip(), lines[i + 1].rstrip()
        if (title and not _RST_ADORNMENT.match(title) and _RST_ADORNMENT.match(underline)
                and len(underline) >= len(title)):
            return title
    return ""


# ---------------------------------------------------------------------------------------------- outlines


_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")


def _lines(text: str) -> list[tuple[int, str]]:
    """(offset, line) for each line of ``text``."""
    out, pos = [], 0
    for line in text.split("\n"):
        out.append((pos, line))
        pos += len(line) + 1
    return out


def markdown_outline(text: str) -> tuple[Heading, ...]:
    """The headings of a Markdown text, in order: ATX (``## Title``) and setext (underlined with ``===`` or
    ``---``) outside code fences and front matter. ``Heading.start`` is the offset of the heading's line."""
    return _markdown_outline(text, front_matter=True, in_fence=False)[0]


def _markdown_outline(text: str, front_matter: bool, in_fence: bool) -> tuple[tuple[Heading, ...], bool]:
    """(headings, whether the text ends inside a code fence), for a text that may start inside one."""
    lines = _lines(text)
    start = 0
    if front_matter and lines and lines[0][1].strip() == "---":
        start = next((i + 1 for i in range(1, len(lines)) if lines[i][1].strip() in ("---", "...")), 0)
    headings: list[Heading] = []
    prev_blank = True
    for i in range(start, len(lines)):
        offset, line = lines[i]
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence:
            if m := _ATX.match(line):
                headings.append(Heading(offset, len(m.group(1)), m.group(2).strip()))
            elif (line.strip() and prev_blank and i + 1 < len(lines) and not line.startswith("    ")
                  and (u := _SETEXT.match(lines[i + 1][1])) and not _SETEXT.match(line)):
                headings.append(Heading(offset, 1 if u.group(1)[0] == "=" else 2, line.strip()))
        prev_blank = not line.strip() or bool(headings and headings[-1].start == offset)
    return tuple(headings), in_fence


def rst_outline(text: str) -> tuple[Heading, ...]:
    """The section titles of a reStructuredText text, in order, with levels in the order their adornment
    styles first appear (as docutils assigns them): a title line under an adornment at least as long, with
    an optional overline of the same character."""
    return _rst_outline(text, ())[0]


def _rst_outline(text: str, seen: tuple[tuple[str, bool], ...]
                 ) -> tuple[tuple[Heading, ...], tuple[tuple[str, bool], ...]]:
    """(headings, adornment styles in order of first appearance), the styles ``seen`` earlier counting
    first."""
    lines = _lines(text)
    styles = list(seen)
    headings: list[Heading] = []
    i = 0
    while i < len(lines) - 1:
        offset, line = lines[i]
        title = line.strip()
        under = lines[i + 1][1].rstrip()
        over = i > 0 and _RST_ADORNMENT.match(lines[i - 1][1].rstrip() or " ") is not None
        if (title and not _RST_ADORNMENT.match(title) and not line.startswith((" ", "\t"))
                and _RST_ADORNMENT.match(under) and len(under) >= len(title)):
            has_over = over and lines[i - 1][1].rstrip()[0] == under[0]
            style = (under[0], has_over)
            if style not in styles:
                styles.append(style)
            headings.append(Heading(lines[i - 1][0] if has_over else offset, styles.index(style) + 1, title))
            i += 2
            continue
        i += 1
    return tuple(headings), tuple(styles)


@dataclass(frozen=True)
class OutlineState:
    """Where one part of a long document leaves off, for the outline of the next part: the headings open
    at its end as (level, text), outermost first; whether it ends inside a Markdown code fence; the
    reStructuredText adornment styles seen so far (they fix the levels of later titles)."""

    open: tuple[tuple[int, str], ...] = ()
    in_fence: bool = False
    styles: tuple[tuple[str, bool], ...] = ()


def part_outline(text: str, markup: str, state: OutlineState | None
                 ) -> tuple[tuple[Heading, ...], OutlineState]:
    """The outline of one part of a long Markdown (``markup`` "md") or reStructuredText ("rst") document
    read in parts, and the state to pass to the next part. ``state`` is None for the first part, whose
    outline is ``markdown_outline``'s or ``rst_outline``'s. A later part has no front matter, starts inside
    a code fence if the previous part ended in one, numbers RST levels as the whole document does, and its
    outline starts with the headings still open from earlier parts, at offset 0: the heading path of its
    first lines is the one they have in the whole document."""
    first = state is None
    state = state or OutlineState()
    in_fence, styles = state.in_fence, state.styles
    if markup == "md":
        own, in_fence = _markdown_outline(text, front_matter=first, in_fence=in_fence)
    elif markup == "rst":
        own, styles = _rst_outline(text, styles)
    else:
        raise ValueError(f"no outline for markup {markup!r}")
    stack = list(state.open)
    for h in own:
        while stack and stack[-1][0] >= h.level:
            stack.pop()
        stack.append((h.level, h.text))
    carried = tuple(Heading(0, level, title) for level, title in state.open)
    return carried + own, OutlineState(tuple(stack), in_fence, styles)


def locate_headings(text: str, found: list[tuple[int, str]]) -> tuple[Heading, ...]:
    """Headings of an extracted text from (level, heading text) in document order: each is looked up after
    the previous one (an HTML page's headings, whose offsets the extraction does not keep)."""
    headings: list[Heading] = []
    pos = 0
    for level, title in found:
        title = " ".join(title.split())
        if not title:
            continue
        at = text.find(title, pos)
        if at < 0:
            continue
        line_start = text.rfind("\n", 0, at) + 1
        headings.append(Heading(line_start, level, title))
        pos = at + len(title)
    return tuple(headings)


# ---------------------------------------------------------------------------------------------- HTML


_SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "svg"})
_BLOCK_TAGS = frozenset({
    "p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "h1", "h2", "h3", "h4",
    "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre", "figure", "figcaption", "form",
    "fieldset", "address", "details", "summary", "hr", "body",
})
_LINE_TAGS = frozenset({"br", "li", "tr", "dt", "dd", "caption", "option"})
_CELL_TAGS = frozenset({"td", "th"})
_HEADING_TAGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_SPACES = re.compile(r"\s+")
_STRENGTH = {"": 0, " ": 1, "\n": 2, "\n\n": 3}


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: blocks separated by blank lines, list items and rows by newlines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip = 0
        self._pre = 0
        self._in_title = False
        self.headings: list[tuple[int, str]] = []  # (level, text) of h1..h6, in order
        self._heading = 0  # level of the heading being read, 0 outside one
        self._break = ""  # pending separator: "", " ", "\n" or "\n\n"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self._skip += 1
        elif tag == "title" and not self._skip and not self.title:
            self._in_title = True
        if tag in _HEADING_TAGS and not self._skip:
            self._heading = int(tag[1])
            self.headings.append((self._heading, ""))
        if tag == "pre":
            self._pre += 1
        self._separate(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._separate(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        if tag in _HEADING_TAGS:
            self._heading = 0
        if tag == "pre":
            self._pre = max(0, self._pre - 1)
        self._separate(tag)

    def _separate(self, tag: str) -> None:
        self._want("\n\n" if tag in _BLOCK_TAGS else "\n" if tag in _LINE_TAGS else " " if tag in _CELL_TAGS
                   else "")

    def _want(self, separator: str) -> None:
        """Ask for a separator before the next text; the strongest asked for wins."""
        if _STRENGTH[separator] > _STRENGTH[self._break]:
            self._break = separator

    def _append(self, text: str) -> None:
        if self._break and self.parts:
            self.parts.append(self._break)
        self._break = ""
        self.parts.append(text)

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title = _SPACES.sub(" ", self.title + data)
            return
        if self._skip:
            return
        if self._heading:
            level, sofar = self.headings[-1]
            self.headings[-1] = (level, _SPACES.sub(" ", sofar + data))
        if self._pre:
            self._append(data)
            return
        text = _SPACES.sub(" ", data)
        if text.startswith(" "):
            self._want(" ")
        if text.strip(" "):
            self._append(text.strip(" "))
        if text.endswith(" "):
            self._want(" ")


def html_to_text(html: str) -> tuple[str, str]:
    """(visible text, title) of an HTML page; the title is ``<title>``, else the first ``<h1>``, else ""."""
    text, title, _ = html_document(html)
    return text, title


def html_document(html: str) -> tuple[str, str, tuple[Heading, ...]]:
    """(visible text, title, outline of its h1..h6 headings) of an HTML page (title as ``html_to_text``)."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = re.sub(r"[ \t]+\n", "\n", "".join(parser.parts))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    h1 = next((t for level, t in parser.headings if level == 1 and t), "")  # the first h1 with text
    return text, (parser.title.strip() or h1.strip()), locate_headings(text, parser.headings)
