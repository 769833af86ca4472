"""What a chunk's embedded text says besides the chunk itself: its document's title and the headings above
it. Pure: no I/O.

A chunk from the middle of a long section is, alone, a paragraph about "it"; the embedder cannot know that
"it" is the section "Connecting to Elasticsearch" of the operations guide. The *embed template* puts that
context before the chunk in the text that is embedded, while the stored ``text`` (what users read and what
BM25 indexes) stays the chunk alone::

    {title}
    {headings}

    {text}

``{title}`` is the document's title (unless it is only the file's name: then renaming a file would
re-embed it), ``{headings}`` the path of headings above the chunk joined by
``" > "`` (without a top heading that only repeats the title), ``{text}`` the chunk. A line of the template
whose fields are all empty for a chunk is left out. The template must end with ``{text}``: the context is
a prefix, so the chunker can count its tokens and shorten the chunk to keep the whole embedded text within
the chunk size. ``"{text}"`` alone turns the context off and chunks exactly as without it. When the
template names ``{headings}``, documents with an outline (Markdown, reStructuredText, HTML) are chunked
section by section: no chunk straddles two sections.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from collections.abc import Sequence

from esrag.errors import ConfigError
from esrag.types import Document, Heading, sha256_hex

FIELDS = frozenset({"title", "headings", "text"})
#: the chunk alone (no context)
PLAIN = "{text}"
#: the document's title and the heading path
TITLE_AND_HEADINGS = "{title}\n{headings}\n\n{text}"
#: the default: the heading path alone. Chosen on the evaluation sets (docs/evaluation.md): the title lost
#: cross-validated nDCG@10 over the three retrieval sets, the heading path won on the judged answer set of
#: esrag's own Markdown docs, and it changes nothing for documents without headings.
DEFAULT_TEMPLATE = "{headings}\n\n{text}"
HEADING_SEPARATOR = " > "


def _fields(template: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(f"invalid embed_template {template!r}: {e}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in FIELDS or spec or conversion:
            raise ConfigError(f"invalid embed_template {template!r}: unknown field {{{name}}} (use "
                              f"{{title}}, {{headings}} and {{text}})")
        names.append(name)
    return names


def check_template(template: str) -> str:
    """``template`` if it is a valid embed template; ConfigError naming the problem otherwise."""
    names = _fields(template)
    if names.count("text") != 1 or not template.endswith("{text}"):
        raise ConfigError(f"invalid embed_template {template!r}: it must end with {{text}} and name it once")
    return template


class ContextTemplate:
    """A validated embed template (see the module docstring)."""

    def __init__(self, template: str = DEFAULT_TEMPLATE) -> None:
        self.template = check_template(template)
        prefix = template[: -len("{text}")]
        #: each line of the prefix with the fields it names
        self._prefix_lines = [(line, _fields(line)) for line in prefix.split("\n")]
        self._prefix_fields = _fields(prefix)
        self.plain = template == PLAIN
        self.uses_headings = "headings" in self._prefix_fields

    @property
    def signature(self) -> str:
        """Identifies the template (part of each document's hash: changing it re-embeds)."""
        return "plain" if self.plain else "ctx:" + sha256_hex(self.template)[:16]

    def prefix(self, title: str, headings: Sequence[str]) -> str:
        """The text before the chunk, for a document ``title`` and heading path; "" when every field the
        template names is empty."""
        values = {"title": " ".join(title.split()),
                  "headings": HEADING_SEPARATOR.join(" ".join(h.split()) for h in headings), "text": ""}
        if not any(values[n] for n in self._prefix_fields):
            return ""
        return "\n".join(line.format(**values) for line, names in self._prefix_lines
                         if not names or any(values[n] for n in names))

    def headings_in(self, context: str, title: str | None = None) -> tuple[str, ...] | None:
        """The heading path held by a stored ``context`` (one of this template's prefixes, full or shortened:
        ``prefix``, ``shorter_prefixes``) of a document titled ``title``; () when it holds none; None when no
        prefix of this template reads so. With ``title`` given, a reading whose title field is another text
        is refused (the title may also be left out: a title that is only a file name is). Where two
        readings still fit, the one keeping the template's earlier lines wins: with
        ``"{title}\n{headings}\n\n{text}"`` and no ``title``, a context of one line reads as a title. A
        heading that itself contains the separator ``" > "`` reads as two."""
        if not context:
            return ()
        want = None if title is None else " ".join(title.split())
        for pattern in self._readings:
            m = pattern.fullmatch(context)
            if m is not None and (want is None or m.groupdict().get("title") in (None, want)):
                path = m.groupdict().get("headings") or ""
                return tuple(path.split(HEADING_SEPARATOR)) if path else ()
        return None

    @functools.cached_property
    def _readings(self) -> list[re.Pattern[str]]:
        """One pattern per choice of the prefix lines with fields that are kept (a line whose fields are all
        empty is left out), most lines first, earlier lines first among equals; the first ``{title}`` and
        ``{headings}`` kept are captured."""
        optional = [i for i, (_, names) in enumerate(self._prefix_lines) if names]
        choices = sorted(itertools.product((True, False), repeat=len(optional)),
                         key=lambda keep: (-sum(keep), [not k for k in keep]))
        out = []
        for keep in choices:
            kept = {i for i, k in zip(optional, keep, strict=True) if k}
            lines, captured = [], set()
            for i, (line, names) in enumerate(self._prefix_lines):
                if names and i not in kept:
                    continue
                parts = []
                for literal, name, _, _ in string.Formatter().parse(line):
                    parts.append(re.escape(literal))
                    if name is not None:
                        parts.append("[^\n]*" if name in captured else f"(?P<{name}>[^\n]*)")
                        captured.add(name)
                lines.append("".join(parts))
            out.append(re.compile("\n".join(lines)))
        return out

    def shorter_prefixes(self, title: str, headings: Sequence[str]) -> list[str]:
        """Ever shorter prefixes to fall back on when the full one takes too much of the chunk size: the
        deepest heading with the title, the deepest heading alone, the title alone, nothing."""
        last = list(headings[-1:])
        candidates = [self.prefix(title, last), self.prefix("", last), self.prefix(title, ()), ""]
        return list(dict.fromkeys(c for c in candidates))


def sections(doc: Document, title: str = "") -> list[tuple[int, int, tuple[str, ...]]]:
    """(start, end, heading path) of the parts of ``doc.text`` between its headings, in order: the text
    before the first heading (if any), then each heading's section. A top-level heading equal to ``title``
    is left out of the paths (it would only repeat the title)."""
    text = doc.text
    if not doc.outline:
        return [(0, len(text), ())]
    out: list[tuple[int, int, tuple[str, ...]]] = []
    headings = sorted(doc.outline, key=lambda h: h.start)
    if headings[0].start > 0:
        out.append((0, headings[0].start, ()))
    stack: list[Heading] = []
    same_as_title = " ".join(title.split()).casefold()
    for i, h in enumerate(headings):
        end = headings[i + 1].start if i + 1 < len(headings) else len(text)
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
        path = [s.text for s in stack]
        if path and " ".join(path[0].split()).casefold() == same_as_title:
            path = path[1:]
        if end > h.start:
            out.append((h.start, end, tuple(path)))
    return out
