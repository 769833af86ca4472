"""Token-aware recursive splitting of document text into overlapping chunks. Pure: no I/O.

The text is cut at the coarsest boundary that works (blank line, line, sentence, whitespace, and as a last
resort inside a word) into *pieces* that each fit the token limit, then adjacent pieces are merged greedily
into chunks. Every chunk is an exact substring of the original text (``ChunkSpan.start``/``end`` are
character offsets) with no leading or trailing whitespace.

Guarantees of ``Chunker.split``, all measured with the given ``count_tokens``:

* every chunk has at most ``Chunker.size`` tokens (the only exception: a single character that alone
  counts more than that, which is emitted on its own), and its pieces at most ``size * 32`` characters
  (whitespace between them aside): a word longer than that, or one the tokenizer counts as a single
  unknown token, is cut;
* time is linear in the length of the text (for a tokenizer linear in its input);
* every non-whitespace character of the text lies in at least one chunk;
* chunks are ordered: both ``start`` and ``end`` strictly increase from one chunk to the next;
* consecutive chunks share at most ``Chunker.overlap`` tokens: the shared text
  ``text[next.start:prev.end]`` (empty when they do not overlap) counts at most ``overlap`` tokens. The
  overlap is made of whole pieces, so it can be smaller than ``overlap``, or zero when the last piece of a
  chunk is larger than ``overlap`` (typically a whole paragraph: no overlap is needed across one);
* the result depends only on the text, the parameters and the counter (deterministic).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from esrag.errors import ConfigError
from esrag.ingest.context import ContextTemplate, sections
from esrag.types import Chunk, Document, sha256_hex

TokenCounter = Callable[[Sequence[str]], list[int]]

#: Separators from coarsest to finest: blank line (paragraph), line break, sentence end, whitespace. Each can
#: start a match only at a newline, after a sentence end, or at the first of a run of whitespace, so finding
#: them is linear in the text (``\s*\n`` would rescan a run of spaces from each of its characters:
#: quadratic). Whitespace before a separator is stripped from the piece, so it need not be matched.
_SEPARATORS = (
    re.compile(r"\n[^\S\n]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"'\u201d\u2019)\]]))\s+|(?<=[\u3002\uff01\uff1f])\s*"),
    re.compile(r"\s+"),
)
#: Characters per token at most: a piece counts at least ``ceil(len / _MAX_CHARS_PER_TOKEN)`` tokens, so a
#: chunk's pieces total at most ``size * _MAX_CHARS_PER_TOKEN`` characters even where the tokenizer turns a
#: whole long word into one ``[UNK]``; and a prefix searched when a word must be cut is at most this long.
_MAX_CHARS_PER_TOKEN = 32
#: Prefix lengths tried per tokenizer call while searching where to cut a word.
_PROBES = 16

#: Boundary strength before a piece: the index of the separator level that cut it off from the previous
#: piece (0 = blank line ... 3 = whitespace), _INSIDE_WORD when cut inside a word. Lower is stronger.
_INSIDE_WORD = len(_SEPARATORS)

_Atom = tuple[int, int, int, int]  # (start, end, tokens, boundary level before it)


@dataclass(frozen=True)
class ChunkSpan:
    """One chunk: ``text == original[start:end]`` (character offsets, end exclusive)."""

    start: int
    end: int
    text: str


class Chunker:
    """Recursive token-aware splitter with overlap (see the module docstring for the guarantees).

    ``count_tokens`` is a batch counter (special tokens excluded), normally ``Embedder.count_tokens``.
    The effective chunk size is ``min(chunk_size, max_tokens)``; the effective overlap is
    ``min(chunk_overlap, size - 1)``. Raises ConfigError for sizes < 1 or ``chunk_overlap >= chunk_size``.
    """

    def __init__(
        self,
        count_tokens: TokenCounter,
        chunk_size: int = 256,
        chunk_overlap: int = 32,
        max_tokens: int | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be >= 1, got {chunk_size}")
        if chunk_overlap < 0 or chunk_overlap >= chunk_size:
            raise ConfigError(f"chunk_overlap must be in [0, chunk_size), got {chunk_overlap}")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {max_tokens}")
        self._count_tokens = count_tokens
        self.size = min(chunk_size, max_tokens) if max_tokens is not None else chunk_size
        self.overlap = min(chunk_overlap, self.size - 1)
        self._max_chars = self.size * _MAX_CHARS_PER_TOKEN
        self._smaller: dict[int, Chunker] = {}

    def with_size(self, size: int) -> Chunker:
        """This chunker with a smaller size (at least 1), the same overlap where it fits: what is left of
        the size once a chunk's context is counted. Built once per size."""
        size = max(1, min(size, self.size))
        if size == self.size:
            return self
        if size not in self._smaller:
            self._smaller[size] = Chunker(self._count_tokens, size, min(self.overlap, size - 1))
        return self._smaller[size]

    def count(self, texts: Sequence[str]) -> list[int]:
        """Token counts of ``texts`` with the chunker's counter."""
        return self._count(texts)

    def _weight(self, start: int, end: int, tokens: int) -> int:
        """A piece's count for merging: its tokens, but at least one per ``_MAX_CHARS_PER_TOKEN`` chars."""
        return max(tokens, -(-(end - start) // _MAX_CHARS_PER_TOKEN))

    @property
    def signature(self) -> str:
        """Identifies the chunking algorithm and its effective parameters (part of the document hash)."""
        return f"recursive:v3:size={self.size}:overlap={self.overlap}"

    def split(self, text: str) -> list[ChunkSpan]:
        """Split ``text`` into chunks; ``[]`` for empty or whitespace-only text.

        Text that fits in one chunk costs one tokenizer call; longer text a few batched calls (one per
        separator level, one to verify the merged chunks, a few more to cut overlong words). Text longer
        than ``size * 32`` characters is never passed to the tokenizer whole, only in pieces.
        """
        start, end = _strip(text, 0, len(text))
        if start == end:
            return []
        if end - start > self._max_chars:  # cannot be one chunk: never tokenise a whole large text at once
            total = self.size + 1
        else:
            total = self._count([text[start:end]])[0]
            if total <= self.size:
                return [ChunkSpan(start, end, text[start:end])]
        atoms = self._atoms(text, start, end, total)
        ranges = self._verified_merge(text, atoms)
        return [ChunkSpan(atoms[a][0], atoms[b][1], text[atoms[a][0]:atoms[b][1]]) for a, b in ranges]

    def _count(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [int(n) for n in self._count_tokens(texts)]

    def _atoms(self, text: str, start: int, end: int, tokens: int) -> list[_Atom]:
        """Cut text[start:end] (``tokens`` long) into ordered pieces of at most ``size`` tokens each,
        one batched count per separator level."""
        atoms: list[_Atom] = []
        frontier: list[_Atom] = [(start, end, tokens, -1)]
        for level, pattern in enumerate(_SEPARATORS):
            if not frontier:
                break
            groups = [(span, _split(text, span[0], span[1], pattern)) for span in frontier]
            todo = [p for span, pieces in groups if [span[:2]] != pieces for p in pieces]
            counts = iter(self._count([text[s:e] for s, e in todo]))
            frontier = []
            for span, pieces in groups:
                if len(pieces) == 1 and pieces[0] == span[:2]:  # no separator inside: same count
                    frontier.append(span)
                    continue
                for i, (s, e) in enumerate(pieces):
                    n = self._weight(s, e, next(counts))
                    (atoms if n <= self.size else frontier).append((s, e, n, level if i else span[3]))
        for s, e, _, before in frontier:
            atoms.extend(self._cut_word(text, s, e, before))
        atoms.sort()
        return atoms

    def _cut_word(self, text: str, start: int, end: int, before: int) -> list[_Atom]:
        """Cut a whitespace-free run of characters into pieces of at most ``size`` tokens."""
        pieces: list[_Atom] = []
        pos = start
        while pos < end:
            length, n = self._fitting_prefix(text, pos, end)
            n = min(self.size, self._weight(pos, pos + length, n)) if n <= self.size else n
            pieces.append((pos, pos + length, n, before if pos == start else _INSIDE_WORD))
            pos += length
        return pieces

    def _fitting_prefix(self, text: str, start: int, end: int) -> tuple[int, int]:
        """(length, tokens) of a long prefix of text[start:end] that fits ``size`` tokens: the whole
        window of ``size * _MAX_CHARS_PER_TOKEN`` characters if it fits, else one found by batched
        bisection whose one-character extension does not fit (prefix counts need not be monotonic, so
        not necessarily the longest). At least one character, even if that alone does not fit."""
        hi = min(end - start, self.size * _MAX_CHARS_PER_TOKEN)
        n = self._count([text[start:start + hi]])[0]
        if n <= self.size:
            return hi, n
        lo, lo_n = 0, 0  # invariant: prefix lo fits (0 trivially), prefix hi does not
        while hi - lo > 1:
            step = (hi - lo) / (_PROBES + 1)
            probes = sorted({lo + max(1, round(step * k)) for k in range(1, _PROBES + 1)} - {hi})
            probes = [p for p in probes if lo < p < hi]
            for p, n in zip(probes, self._count([text[start:start + p] for p in probes]), strict=True):
                if n > self.size:
                    hi = p
                    break
                lo, lo_n = p, n
        if lo == 0:
            return 1, self._count([text[start:start + 1]])[0]
        return lo, lo_n

    def _verified_merge(self, text: str, atoms: list[_Atom]) -> list[tuple[int, int]]:
        """Merge atoms into chunks, as (first, last) atom indices, whose real counts respect the limits.

        Merging adds up piece counts, which can underestimate the count of the joined text (a tokenizer
        may give separators or cut words tokens of their own). All chunks are merged and counted in one
        batch; from the first one that is over a limit on, chunks are merged and counted one at a time,
        tightening a constraint and merging again whenever one is over.
        """
        counts = [a[2] for a in atoms]
        levels = [a[3] for a in atoms]
        max_last: dict[int, int] = {}  # a chunk starting at atom i may end at atom max_last[i] at most
        min_first: dict[int, int] = {}  # an overlap ending at atom j may start at atom min_first[j] at least
        cache: dict[tuple[int, int], int] = {}

        def over(ranges: list[tuple[int, int]], indices: range) -> list[int]:
            """Indices of chunks over the size, or sharing too much with the previous chunk; tightens the
            constraints that exclude them."""
            checks: list[tuple[int, int, int, bool]] = []  # (chunk index, first atom, last atom, is overlap)
            for v in indices:
                first, last = ranges[v]
                if last > first:  # single pieces were counted exactly already
                    checks.append((v, first, last, False))
                if v and first < ranges[v - 1][1]:
                    checks.append((v, first, ranges[v - 1][1], True))
            todo = sorted({(a, b) for _, a, b, _ in checks} - cache.keys())
            texts = [text[atoms[a][0]:atoms[b][1]] for a, b in todo]
            cache.update(zip(todo, self._count(texts), strict=True))
            bad = []
            for v, a, b, is_overlap in checks:
                if cache[(a, b)] > (self.overlap if is_overlap else self.size):
                    if is_overlap:
                        min_first[b] = a + 1
                    else:
                        max_last[a] = b - 1
                    bad.append(v)
            return bad

        def extend(ranges: list[tuple[int, int]], verify_each: bool) -> None:
            while not ranges or ranges[-1][1] < len(atoms) - 1:
                prev = ranges[-1] if ranges else None
                ranges.append(self._next_range(counts, levels, prev, max_last, min_first))
                if verify_each and over(ranges, range(len(ranges) - 1, len(ranges))):
                    ranges.pop()

        ranges: list[tuple[int, int]] = []
        extend(ranges, verify_each=False)
        bad = over(ranges, range(len(ranges)))
        if bad:
            del ranges[min(bad):]
            extend(ranges, verify_each=True)
        return ranges

    def _next_range(self, counts: list[int], levels: list[int], prev: tuple[int, int] | None,
                    max_last: dict[int, int], min_first: dict[int, int]) -> tuple[int, int]:
        """(first, last) atoms of the chunk after ``prev``, by summed piece counts under the constraints.

        It starts with the longest run of trailing pieces of ``prev`` that fits the overlap, takes new
        pieces greedily, then is cut back to the strongest boundary that keeps it at least half full.
        """
        last_atom = len(counts) - 1
        if prev is None:
            first = fresh = 0
            total = counts[0]
        else:
            fresh = prev[1] + 1
            first, total = fresh, counts[fresh]
            floor = max(prev[0] + 1, min_first.get(prev[1], 0))
            while (first - 1 >= floor and total - counts[fresh] + counts[first - 1] <= self.overlap
                   and total + counts[first - 1] <= self.size
                   and max_last.get(first - 1, last_atom) >= fresh):
                first -= 1
                total += counts[first]
        last = fresh
        cap = max_last.get(first, last_atom)
        while last < cap and total + counts[last + 1] <= self.size:
            last += 1
            total += counts[last]
        if last == last_atom:
            return first, last
        best, best_level = last, levels[last + 1]
        for m in range(last - 1, fresh - 1, -1):
            total -= counts[m + 1]
            if 2 * total < self.size:
                break
            if levels[m + 1] < best_level:
                best, best_level = m, levels[m + 1]
        return first, best


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    """Offsets of text[start:end] without leading and trailing whitespace (start == end if all blank)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-blank stripped pieces of text[start:end] between matches of the separator ``pattern``."""
    pieces: list[tuple[int, int]] = []
    pos = start
    for m in pattern.finditer(text, start, end):
        s, e = _strip(text, pos, m.start())
        if s < e:
            pieces.append((s, e))
        pos = max(pos, m.end())
    s, e = _strip(text, pos, end)
    if s < e:
        pieces.append((s, e))
    return pieces


def chunk_document(doc: Document, chunker: Chunker, doc_sha: str | None = None,
                   template: ContextTemplate | None = None) -> list[Chunk]:
    """Chunks of ``doc`` with content-addressed ids; ``[]`` for a blank document.

    ``doc_sha`` defaults to ``doc.sha(chunker.signature)``, which covers the document and the chunk
    parameters, so changing them changes every id. With a ``template`` (see ``esrag.ingest.context``), each chunk
    gets the context its embedded text starts with, and the chunk is shortened so that context and chunk
    together fit ``chunker.size`` tokens; a template naming ``{headings}`` chunks each section of the
    document's outline apart. ``chunk_sha`` is the hash of the embedded text (context + chunk).
    """
    doc_sha = doc_sha or doc.sha(chunker.signature)
    pieces: list[tuple[str, ChunkSpan]] = []  # (context, span)
    if template is None or template.plain:
        pieces = [("", span) for span in chunker.split(doc.text)]
    else:
        parts = _sections(doc, template)
        for prefix, tokens, start, end in _fit_prefixes(parts, doc, template, chunker):
            for span in chunker.with_size(chunker.size - tokens).split(doc.text[start:end]):
                pieces.append((prefix, ChunkSpan(start + span.start, start + span.end, span.text)))
    section_of = section_starts(doc, [span.start for _, span in pieces])
    chunks: list[Chunk] = []
    for index, (context, span) in enumerate(pieces):
        chunk_sha = sha256_hex(context + span.text)
        chunks.append(Chunk(
            id=Chunk.make_id(doc.doc_id, doc_sha, index, chunk_sha),
            doc_id=doc.doc_id,
            source=doc.source,
            title=doc.title,
            text=span.text,
            chunk_index=index,
            chunk_count=len(pieces),
            start=span.start,
            end=span.end,
            chunk_sha=chunk_sha,
            doc_sha=doc_sha,
            metadata=dict(doc.metadata),
            context=context,
            section=section_of[index],
        ))
    return chunks


def section_starts(doc: Document, starts: Sequence[int]) -> list[int]:
    """For chunks starting at the character offsets ``starts`` (in order), the index of the first chunk of
    each one's section: the part of ``doc.text`` between two headings of its outline (``sections``) that the
    chunk starts in. All 0 for a document without headings."""
    if not doc.outline:
        return [0] * len(starts)
    bounds = [start for start, _, _ in sections(doc)]
    out: list[int] = []
    first: dict[int, int] = {}
    for index, offset in enumerate(starts):
        part = bisect.bisect_right(bounds, offset) - 1
        out.append(first.setdefault(part, index))
    return out


#: separator between a chunk's context and its text (the prefix ends with it): counted as one token more
_JOIN_MARGIN = 1


def _sections(doc: Document, template: ContextTemplate) -> list[tuple[tuple[str, ...], int, int]]:
    if not template.uses_headings:
        return [((), 0, len(doc.text))]
    return [(path, start, end) for start, end, path in sections(doc, doc.title)]


def _prefix_tokens(chunker: Chunker, prefix: str) -> int:
    return chunker.count([prefix])[0] + _JOIN_MARGIN if prefix.strip() else 0


def _fit_prefixes(parts: list[tuple[tuple[str, ...], int, int]], doc: Document, template: ContextTemplate,
                  chunker: Chunker) -> list[tuple[str, int, int, int]]:
    """(prefix, its tokens, start, end) per section: the full context where it takes at most half the chunk
    size, else the longest fallback that does (``ContextTemplate.shorter_prefixes``). One batched count for
    the full prefixes; fallbacks are counted only when needed."""
    title = "" if doc.title_is_name else doc.title
    full = [template.prefix(title, path) for path, _, _ in parts]
    distinct = sorted({p for p in full if p.strip()})
    counts = {"": 0, **{p: n + _JOIN_MARGIN for p, n in zip(distinct, chunker.count(distinct), strict=True)}}
    limit = chunker.size // 2
    out = []
    for prefix, (path, start, end) in zip(full, parts, strict=True):
        tokens = counts.get(prefix, 0)
        if tokens > limit:
            prefix, tokens = next(((p, n) for p in template.shorter_prefixes(title, path)
                                   if (n := _prefix_tokens(chunker, p)) <= limit), ("", 0))
        out.append((prefix, tokens, start, end))
    return out
