"""Bytes -> text, whole or as a stream of segments. Pure: no I/O (a stream is an iterable of the byte
strings that the caller reads).

Decoding, for every loader: UTF-8, with a UTF-8 BOM dropped and a UTF-16 BOM switching to UTF-16; each
undecodable byte becomes U+FFFD and is counted. ``decode`` takes the whole file; ``StreamDecoder`` takes it
in pieces and gives the same text (line ends normalised to ``\\n``), however the bytes were split.

Segments let a large text file be loaded in bounded memory: ``segments`` cuts the decoded stream into
pieces of about ``target`` characters, with these guarantees (``tests/unit/test_text_stream.py``):

- every character belongs to exactly one segment, in order: the segments joined are the whole text;
- the cuts depend on the text only, not on how its bytes were split into reads;
- a segment holds at most ``2 * target`` characters, and at least ``target // 2`` unless it is the last;
- the cuts are content-defined: a cut falls after a blank line that ends a paragraph, once the segment holds
  ``target // 2`` characters, when a hash of that paragraph says so (with a probability proportional to the
  paragraph's length, so that segments average about ``target`` characters whatever the paragraph lengths).
  An edit therefore moves only the cuts near it, and the segments after those come out as before. From
  ``1.5 * target`` characters on, the next paragraph end cuts whatever its hash; in a segment without any
  paragraph end (text without blank lines, such as logs), any line end may cut then, by a hash of the line,
  so such text keeps the property. A segment that reaches ``2 * target`` is cut at its last line end, or,
  when that would leave less than ``target // 2``, inside the line.

The next segment starts at the first non-blank line after the cut: blank lines stay with the paragraph they
follow. ``file_parts`` turns a file's segments into ``Part``s: ids, the file's title, and outlines whose
heading paths continue across segments.
"""

from __future__ import annotations

import codecs
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from esrag.sources.text_formats import OutlineState, markdown_title, part_outline, rst_title
from esrag.types import Heading, sha256_hex

SURROGATE = re.compile("[\ud800-\udfff]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_PART_ID = re.compile(r"(.+)#part-[0-9a-f]{16}(?:-[0-9]+)?")


def _escape_bad_bytes(e: UnicodeError) -> tuple[str, int]:
    """Decoding error handler: one lone surrogate per undecodable byte, like ``surrogateescape`` but for
    any codec (``surrogateescape`` refuses UTF-16 errors)."""
    if not isinstance(e, UnicodeDecodeError):
        raise e
    return "\udcff" * (e.end - e.start), e.end


codecs.register_error("esrag-escape", _escape_bad_bytes)


def decode(data: bytes) -> tuple[str, int]:
    """(text, number of undecodable bytes, each replaced by U+FFFD). Line ends are left as they are."""
    return replace_escaped(decode_escaped(data))


def decode_escaped(data: bytes) -> str:
    """Text of UTF-8 (or, after a BOM, UTF-16) bytes; each bad byte becomes a lone surrogate."""
    if data.startswith(_UTF16_BOMS):
        return data.decode("utf-16", errors="esrag-escape")
    return data.removeprefix(codecs.BOM_UTF8).decode("utf-8", errors="surrogateescape")


def replace_escaped(text: str) -> tuple[str, int]:
    """Replace lone surrogates (left by ``surrogateescape`` decoding for bad bytes, or written as ``\\ud800``
    escapes in JSON) with U+FFFD; (text, how many)."""
    return SURROGATE.subn("\ufffd", text)


def normalize_newlines(text: str) -> str:
    """``\\r\\n`` and lone ``\\r`` as ``\\n``."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


class StreamDecoder:
    """``decode_escaped`` followed by ``normalize_newlines``, fed in pieces: the outputs of ``feed``, joined,
    are that text for all the bytes fed, however they were split. Bad bytes are left as lone surrogates
    (``replace_escaped`` them), so that a segment can count its own."""

    def __init__(self) -> None:
        self._decoder: Any = None
        self._head = b""
        self._cr = False  # a "\r" held back: the next piece may start with its "\n"

    def feed(self, data: bytes, final: bool = False) -> str:
        """The text that ``data`` completes; ``final`` for the last piece (it may be empty)."""
        if self._decoder is None:
            self._head += data
            if len(self._head) < len(codecs.BOM_UTF8) and not final:
                return ""
            data, self._head = self._head, b""
            if data.startswith(_UTF16_BOMS):
                self._decoder = codecs.getincrementaldecoder("utf-16")(errors="esrag-escape")
            else:
                data = data.removeprefix(codecs.BOM_UTF8)
                self._decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        text = self._decoder.decode(data, final)
        if self._cr:
            text, self._cr = "\r" + text, False
        if text.endswith("\r") and not final:
            text, self._cr = text[:-1], True
        return normalize_newlines(text)


def _chance(hash32: int, length: int, span: int) -> bool:
    """True with probability ``length / span`` over uniform 32-bit hashes (always when length >= span)."""
    return hash32 * span < length << 32


class Segmenter:
    """Cuts a text, fed in pieces, into segments of about ``target`` characters (see the module docstring).
    ``feed`` and ``close`` return the segments completed so far."""

    def __init__(self, target: int) -> None:
        if target < 8:
            raise ValueError(f"segment target must be at least 8 characters, not {target}")
        self.min_size = target // 2
        self.max_size = 2 * target
        self.late = self.max_size - target // 2  # from here on, any paragraph end cuts
        self.line_span = max(1, target // 8)
        self._parts: list[str] = []
        self._size = 0
        self._line = ""  # the line being read, not yet ended
        self._para_hash = 0
        self._para_len = 0
        self._cut_pending = False  # a paragraph chose to end the segment: cut before the next non-blank line
        self._paragraphs = False  # the segment holds a paragraph end

    def feed(self, text: str) -> list[str]:
        out: list[str] = []
        pieces = text.split("\n")
        last = len(pieces) - 1
        for i, piece in enumerate(pieces):
            self._line += piece + "\n" if i < last else piece
            self._overflow(out)
            if i < last:
                line, self._line = self._line, ""
                self._end_line(line, out)
        return out

    def close(self) -> list[str]:
        """The last segments: the text fed since the last cut, and the unfinished last line."""
        out: list[str] = []
        if self._line:
            line, self._line = self._line, ""
            self._end_line(line, out)
        if self._parts:
            out.append(self._cut())
        return out

    def _cut(self) -> str:
        segment = "".join(self._parts)
        self._parts, self._size = [], 0
        self._para_hash = self._para_len = 0
        self._cut_pending = self._paragraphs = False
        return segment

    def _append(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text)

    def _overflow(self, out: list[str]) -> None:
        """Keep the segment within ``max_size``: cut before the line being read, or inside it."""
        while self._size + len(self._line) > self.max_size:
            if self._size < self.min_size:
                room = self.max_size - self._size
                self._append(self._line[:room])
                self._line = self._line[room:]
            out.append(self._cut())

    def _end_line(self, line: str, out: list[str]) -> None:
        blank = line.isspace()
        if self._cut_pending and not blank:
            out.append(self._cut())
        self._append(line)
        if blank:
            if self._para_len:
                self._paragraphs = True
                if self._size >= self.min_size and (
                        self._size >= self.late or _chance(self._para_hash, self._para_len, self.min_size)):
                    self._cut_pending = True
            self._para_hash = self._para_len = 0
            return
        line_hash = zlib.crc32(line.encode("utf-8", "surrogatepass"))
        self._para_hash = zlib.crc32(line_hash.to_bytes(4, "little"), self._para_hash)
        self._para_len += len(line)
        if not self._paragraphs and self._size >= self.late and _chance(line_hash, len(line), self.line_span):
            out.append(self._cut())


def segments(reads: Iterable[bytes], target: int) -> Iterator[tuple[str, int]]:
    """(text, undecodable bytes in it) of each segment of the bytes ``reads`` yields, in order: decoded as
    ``decode`` does, line ends normalised, cut by ``Segmenter(target)``. Holds about two segments and one
    read in memory."""
    decoder = StreamDecoder()
    cutter = Segmenter(target)
    for data in reads:
        for segment in cutter.feed(decoder.feed(data)):
            yield replace_escaped(segment)
    for segment in cutter.feed(decoder.feed(b"", final=True)) + cutter.close():
        yield replace_escaped(segment)


def part_id(doc_id: str, text: str, taken: dict[str, int]) -> str:
    """The doc id of a file's segment: ``<doc_id>#part-`` and 16 hex digits of the segment's text, so an
    edit changes only the ids of the segments it touches; ``-2``, ``-3``... for repeats of a text already
    in ``taken`` (ids given so far in this file, updated)."""
    base = f"{doc_id}#part-{sha256_hex(text)[:16]}"
    taken[base] = taken.get(base, 0) + 1
    return base if taken[base] == 1 else f"{base}-{taken[base]}"


def part_owner(doc_id: str) -> str | None:
    """The doc id of the file that a segment id (``part_id``) belongs to; None for any other id."""
    m = _PART_ID.fullmatch(doc_id)
    return m.group(1) if m else None


@dataclass(frozen=True)
class Part:
    """One segment of a file read in parts (``file_parts``): its doc id, text, undecodable bytes in it, the
    file's title ("" if it names none) and the segment's outline."""

    doc_id: str
    text: str
    decode_errors: int
    title: str
    outline: tuple[Heading, ...] = ()


def file_parts(reads: Iterable[bytes], doc_id: str, markup: str, target: int) -> Iterator[Part]:
    """The ``segments`` of a file's bytes as Parts, with ids by ``part_id``; a segment of nothing but
    whitespace is left out (it has nothing to index). ``markup`` "md" or "rst" gives each part the file's
    title as found in the first segment (``markdown_title``, ``rst_title``) and an outline by
    ``part_outline``, which carries heading paths, code fences and RST levels across parts; "" for plain
    text."""
    title: str | None = None
    state: OutlineState | None = None
    taken: dict[str, int] = {}
    for text, errors in segments(reads, target):
        outline: tuple[Heading, ...] = ()
        if markup:
            outline, state = part_outline(text, markup, state)
        if title is None:
            title = markdown_title(text) if markup == "md" else rst_title(text) if markup == "rst" else ""
        if not text.isspace():
            yield Part(part_id(doc_id, text, taken), text, errors, title, outline)
