"""FTS5's ``bm25()``, computed with numpy from FTS5's own index: same hits, same scores, far less time.

FTS5 scores a query row by row through its auxiliary-function API: about a microsecond per matching row
and term, plus a pass over each term's whole doclist to count its hits. A query holding "the" or "of"
therefore scores most of the index: 25-400 ms at 126k chunks. Here, each query term's postings are read once
from FTS5 (the ``fts5vocab`` instance table: which rows hold the term, how often) and kept as numpy arrays
of per-row bm25 contributions; a query then adds the arrays of its terms (~0.2 ms for a term in half the
rows) and takes the top ``limit``.

The arithmetic is FTS5's own (``fts5Bm25Function`` in ``fts5_aux.c``), operation for operation in float64::

    idf   = log((N - n + 0.5) / (n + 0.5)), or 1e-6 where that is <= 0
    part  = idf * ((f * (k1 + 1)) / (f + k1 * (1 - b + b * D / avgdl)))     k1 = 1.2, b = 0.75
    score = sum of the parts of the query's terms, in query order (a repeated term counts again)

with ``f`` the term's occurrences in the row (title + text, both weighted 1.0), ``D`` the row's tokens,
``avgdl`` the tokens per row and ``n`` the rows holding the term. The tests check hits and scores against
``-bm25()`` itself.

Terms are looked up by their folded form, folded by a table read from ``unicode61`` itself (with the
``porter`` tokenizer, by FTS5 itself: see ``porter_term``), and each term's row count is checked against
FTS5's own MATCH count when it is loaded: a term that FTS5 would tokenise or fold differently is flagged,
and its queries go to FTS5.

Top k without scoring every matching row (``Bm25Index.top``): a query first scores, exactly, only the union
of each term's ``PREFIX`` highest-part rows (the candidates; found by a partition the first time a cut is
asked for, not by sorting the whole list when it is loaded). A row outside every prefix scores at most the
sum of each term's first part left out (its bound; float addition is monotone, so summed in the same order
the bound holds for the rounded scores too). When the k-th best candidate scores strictly above that bound,
no other row can reach the top k, nor tie with its last member, so the top k and their scores are exactly
the exhaustive ones (a query whose terms are all short lists is exhaustive at once). Otherwise the prefixes
of the terms that hold the bound up grow fourfold (``_grown``: a rare term's first part left out is large, a
common word's small, so a query of both does not read deep into the common word), until they would hold
1/``GROW_MAX`` of the rows: then (typically a query of words found in most rows, whose parts are all alike)
every row is scored, and only the rows scoring at least that k-th candidate score (a lower bound of the true
k-th) are ranked. ``exhaustive`` is the plain scorer, the reference the tests compare ``top`` with.

A candidate's part of a term is found by a binary search in the term's rows, by one pass over the term's
rows through a position -> candidate map when the term has few rows per candidate (``SLOT_SHARE``), or, for
a term in more than 1/``DENSE_SHARE`` of the rows, from its parts as one float64 per row (0.0 where absent),
built once the term is scored against ``DENSE_CANDIDATES`` candidates or by the exhaustive scorer.

A common word's first query in a process (``HEAD_MIN`` rows or more) need not rank, nor even score, all its
rows: ``sqlite_postings`` saves its head (the rowids of its ``HEAD_ROWS`` best rows, best first) when a
query first ranks it, and a later index whose snapshot the head holds for takes the prefixes from it and
scores candidates from the rows as read (the positions and parts of all its rows are computed only when a
longer prefix, the dense parts or the exhaustive scorer needs them).

Memory: a cached term costs 12 bytes per row holding it (int32 position + float64 part; 10 while it is
scored from the rows as read), plus the heads found (at most 1/``GROW_MAX`` of the rows), and 8 more per row
of the index for a dense term; the cache is bounded by ``MAX_BYTES`` in all (least recently used terms go
first) and dropped on any write. What makes that cheap is where a term's rows and occurrences come from: a
term in ``PERSIST_MIN`` rows or more is read from its saved, packed form and brought to the snapshot through
the change log (``sqlite_postings``: milliseconds, where FTS5's one-row-per-occurrence vocabulary takes 1.7 s
for a word in a million rows), and saved there after its first read from FTS5.
"""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from esrag.stores.sqlite_bm25_term import GROW_MAX, K1, B, Postings, Stale
from esrag.stores.sqlite_postings import Head, Raw, Saved

#: rows per term scored first by ``Bm25Index.top`` (the highest parts), grown fourfold until the top k is proven
PREFIX = 1024
#: bytes of postings kept in memory across all cached terms: at 1M chunks of Zipf words, 512 MiB holds a
#: query stream's common terms (BM25 p50/p95 3.6/22.8 ms on a second pass over 100 queries; 51/218 ms at
#: 192 MiB, which evicted and re-read them); a query process stays under the raw vectors' size
MAX_BYTES = 512 << 20
#: a term found in at least this many rows has its head saved (``sqlite_postings.Saved.head``): below it,
#: ranking all its rows takes about a millisecond
HEAD_MIN = 65_536
#: rows of a common term's saved head: the prefixes of the first two rounds
#: and the part that bounds the second (32 KiB per term)
HEAD_ROWS = 4 * PREFIX + 1
#: a term in more than 1/DENSE_SHARE of the rows builds its dense parts once it scores this many candidates:
#: then a gather each, where a binary search each in a million rows costs ~0.1 us (~4 ms at 45k candidates,
#: per round); building them costs ~8 ms, about what the binary searches of the query's rounds cost)
DENSE_CANDIDATES = 8192
#: ``Bm25Index._scores`` finds a term's rows among the candidates through a position -> slot map when the term
#: has at most SLOT_SHARE rows per candidate (one pass over its rows), else by binary search per candidate
SLOT_SHARE = 32
#: postings are mapped from rowids to positions through an inverse map when the largest rowid is below
#: INVERSE_SPARSITY x the rows (else by binary search: the map would cost more than it saves)
INVERSE_SPARSITY = 4
_VOCAB = "temp.esrag_vocab_instance"


@functools.cache
def _fold_table() -> dict[int, str]:
    """How ``unicode61`` (remove_diacritics 0) folds each code point that has any case mapping, read from
    FTS5 itself: it folds one code point at a time, but not as Python's ``lower`` (Greek final sigma becomes
    sigma) nor as ``casefold`` (sharp s stays). Built once per process, on the first non-ASCII term (~0.15 s)."""
    cased = [cp for cp in range(0x41, 0x20000)
             if (c := chr(cp)).lower() != c or c.upper() != c or c.casefold() != c]
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute("CREATE VIRTUAL TABLE f USING fts5(t, tokenize='unicode61 remove_diacritics 0')")
        conn.executemany("INSERT INTO f(rowid, t) VALUES (?, ?)", [(cp, chr(cp)) for cp in cased])
        conn.execute("CREATE VIRTUAL TABLE temp.v USING fts5vocab(main, 'f', 'instance')")
        return {doc: term for term, doc in conn.execute("SELECT term, doc FROM temp.v")}
    finally:
        conn.close()


def fold(term: str) -> str:
    """A query term as ``unicode61`` stores it (see _fold_table)."""
    return term.lower() if term.isascii() else term.translate(_fold_table())


#: FTS5 tokenizer per analyzer name: ``standard`` is close to ES's standard analyzer, ``english`` adds
#: Porter stemming (as ES's ``english`` does; FTS5 keeps stop words, which BM25's idf makes cheap)
TOKENIZERS = {"standard": "unicode61 remove_diacritics 0", "english": "porter unicode61 remove_diacritics 0"}
_porter_lock = threading.Lock()


@functools.cache
def _porter_conn() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", check_same_thread=False)
    conn.execute(f"CREATE VIRTUAL TABLE p USING fts5(t, tokenize='{TOKENIZERS['english']}')")
    conn.execute("CREATE VIRTUAL TABLE temp.pv USING fts5vocab(main, 'p', 'instance')")
    return conn


@functools.lru_cache(maxsize=1 << 16)
def porter_term(term: str) -> str:
    """A query term as the ``porter unicode61`` tokenizer stores it (folded, then stemmed), asked of FTS5
    itself so that it is exact by construction (~30 us; cached). "" when FTS5 keeps no token of it."""
    with _porter_lock:
        conn = _porter_conn()
        conn.execute("DELETE FROM p")
        conn.execute("INSERT INTO p(rowid, t) VALUES (1, ?)", (term,))
        found = [t for (t,) in conn.execute("SELECT term FROM temp.pv ORDER BY \"offset\"")]
    return found[0] if len(found) == 1 else ""


def term_key(analyzer: str) -> Callable[[str], str]:
    """How a query term is looked up in the index of ``analyzer``: ``fold`` or ``porter_term``."""
    return porter_term if analyzer == "english" else fold


def attach_vocab(conn: sqlite3.Connection, table: str = "chunks_fts") -> None:
    """Create, on ``conn``, the temporary fts5vocab table through which postings are read (a temp table
    belongs to one connection, so every connection that searches needs its own)."""
    conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS {_VOCAB} USING fts5vocab(main, '{table}', 'instance')")


def positions_of(rowids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where the sorted ``wanted`` rowids stand in the sorted ``rowids`` (rowids absent there are skipped)."""
    found = np.searchsorted(rowids, wanted)
    ok = found < len(rowids)
    ok[ok] = rowids[found[ok]] == wanted[ok]
    return found[ok]


def _column_sizes(blob: bytes) -> int:
    """Total tokens of one ``_docsize`` record: a varint per column (SQLite's big-endian 7-bit format)."""
    total = value = 0
    for byte in blob:
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            total += value
            value = 0
    return total


def _doc_sizes(conn: sqlite3.Connection, table: str) -> tuple[np.ndarray, np.ndarray]:
    """(rowids, tokens per row) from ``<table>_docsize``, ascending: decoded with numpy from three
    ``group_concat`` strings (~3x faster than a row at a time; at a million rows that is most of a
    fresh process's first query), row by row for a record that is not one varint per column."""
    ids, sizes, hexed = conn.execute(f"SELECT group_concat(id), group_concat(length(sz)), group_concat(hex(sz), '') "
                                     f"FROM (SELECT id, sz FROM {table}_docsize ORDER BY id)").fetchone()
    if not ids:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    rowids = np.fromstring(ids, dtype=np.int64, sep=",")
    data = np.frombuffer(bytes.fromhex(hexed), dtype=np.uint8)
    last = data < 0x80  # the last byte of each varint
    ends = np.flatnonzero(last)
    row_ends = np.cumsum(np.fromstring(sizes, dtype=np.int64, sep=",")) - 1
    two_each = 2 * np.arange(1, len(rowids) + 1)
    if len(ends) != 2 * len(rowids) or not last[-1] or (np.cumsum(last)[row_ends] != two_each).any():
        lengths = [_column_sizes(blob) for (blob,) in conn.execute(f"SELECT sz FROM {table}_docsize ORDER BY id")]
        return rowids, np.asarray(lengths, dtype=np.float64)
    which = np.r_[0, np.cumsum(last)[:-1]]  # the varint each byte belongs to
    shift = 7 * (ends[which] - np.arange(len(data)))
    values = np.bincount(which, weights=(data & 0x7F).astype(np.int64) << shift, minlength=len(ends))
    return rowids, values.reshape(-1, 2).sum(axis=1)


def _doc_sizes_of(conn: sqlite3.Connection, table: str, rowids: np.ndarray) -> Raw:
    """(rowids, tokens per row) of the ascending ``rowids`` still in ``<table>_docsize``."""
    found: list[tuple[int, int]] = []
    for at in range(0, len(rowids), 500):
        part = rowids[at:at + 500].tolist()
        found += [(rid, _column_sizes(blob)) for rid, blob in conn.execute(
            f"SELECT id, sz FROM {table}_docsize WHERE id IN ({', '.join('?' * len(part))}) ORDER BY id", part)]
    return Raw(np.fromiter((r for r, _ in found), dtype=np.int64, count=len(found)),
               np.fromiter((n for _, n in found), dtype=np.float64, count=len(found)))


class Bm25Index:
    """Per-term bm25 parts for one read snapshot of ``<table>``. Build it inside a read transaction and drop
    it when the data changes (the store does both)."""

    def __init__(self, conn: sqlite3.Connection, table: str = "chunks_fts", analyzer: str = "standard",
                 saved: Saved | None = None, generation: int = 0) -> None:
        self.table = table
        self._key = term_key(analyzer)
        self._saved, self.generation = saved, generation
        sizes = saved.lengths(conn, generation, lambda ids: _doc_sizes_of(conn, table, ids)) if saved else None
        if sizes is None:
            sizes = Raw(*_doc_sizes(conn, table))
            if saved is not None:
                saved.save_later(None, generation, sizes)
        self.rowids, self.lengths = sizes
        self.n_rows = len(self.rowids)
        self.avgdl = float(int(self.lengths.sum())) / self.n_rows if self.n_rows else 0.0
        #: folded term -> its Postings; None: FTS5 disagrees on the term
        self._terms: OrderedDict[str, Postings | None] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()  # the term cache is shared by the threads that search
        self._inverse: np.ndarray | None = None
        self._norms: np.ndarray | None = None
        attach_vocab(conn, table)

    def _raw(self, conn: sqlite3.Connection, term: str, folded: str) -> Raw | None:
        """The term's rowids and occurrences at this snapshot: from its saved form (sqlite_postings) when
        there is one, else from FTS5 (and then saved, when long); None when FTS5 reads the term otherwise."""
        if self._saved is not None and (raw := self._saved.read(conn, self.generation, term, folded)) is not None:
            return raw
        text = conn.execute(f"SELECT group_concat(doc) FROM {_VOCAB} WHERE term = ?", (folded,)).fetchone()[0]
        docs = np.fromstring(text, dtype=np.int64, sep=",") if text else np.empty(0, dtype=np.int64)
        if len(docs) > 1 and not (docs[1:] >= docs[:-1]).all():
            docs = np.sort(docs)
        starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]]) if len(docs) else np.empty(0, np.int64)
        raw = Raw(docs[starts], np.diff(np.r_[starts, len(docs)]).astype(np.float64))
        matched = int(conn.execute(f"SELECT count(*) FROM {self.table} WHERE {self.table} MATCH ?",
                                   (f'"{term}"',)).fetchone()[0])
        if matched != len(raw.rows):
            return None
        if self._saved is not None:
            self._saved.save_later(folded, self.generation, raw)
        return raw

    def _positions(self, rows: np.ndarray) -> np.ndarray | None:
        """Positions in ``rowids`` of the ascending ``rows``, or None when one is not there. Through the
        inverse map (one gather per row) where the rowids are not too sparse for one, else by binary search."""
        if not len(rows):
            return np.empty(0, dtype=np.int64)
        inverse = self._inverse_map()
        if inverse is None:
            positions = np.searchsorted(self.rowids, rows)
            if positions[-1] >= self.n_rows or (self.rowids[positions] != rows).any():
                return None
            return positions
        if rows[0] < 0 or rows[-1] >= len(inverse):
            return None
        positions = inverse[rows]
        return None if (positions < 0).any() else positions

    def _row_norms(self) -> np.ndarray:
        """Every row's ``k1 * (1 - b + b * D / avgdl)``, computed once per index: the same operations in the
        same order as per posting, so the parts are bit for bit the same."""
        norms = self._norms
        if norms is None:
            norms = self._norms = K1 * (1 - B + B * self.lengths / self.avgdl)
        return norms

    def _inverse_map(self) -> np.ndarray | None:
        """rowid -> position (-1: no such row), built once per index when the largest rowid is below
        INVERSE_SPARSITY x the rows (4 bytes per rowid up to it); None otherwise."""
        inverse = self._inverse
        if inverse is None and self.n_rows and int(self.rowids[-1]) < INVERSE_SPARSITY * max(self.n_rows, 1024):
            inverse = np.full(int(self.rowids[-1]) + 1, -1, dtype=np.int32)
            inverse[self.rowids] = np.arange(self.n_rows, dtype=np.int32)
            self._inverse = inverse
        return inverse

    def _load(self, conn: sqlite3.Connection, term: str) -> Postings | None:
        key = self._key(term)
        raw = self._raw(conn, term, key)
        if raw is None:
            return None
        head = None
        if self._saved is not None and len(raw.rows) >= HEAD_MIN:
            head = self._head(conn, key)
        try:
            entry = Postings(self, key, raw, head)
            if head is not None and not entry.head_holds():
                entry = Postings(self, key, raw, None)
            return entry
        except Stale:
            return None

    def _head(self, conn: sqlite3.Connection, key: str) -> np.ndarray | None:
        """The positions of the term's saved head, best first, when one holds for this snapshot."""
        assert self._saved is not None
        rows = self._saved.head(conn, self.generation, key)
        if rows is None or not len(rows):
            return None
        order = np.argsort(rows)
        positions = self._positions(rows[order])
        if positions is None:
            return None
        head = np.empty(len(rows), dtype=np.int64)
        head[order] = positions
        return head

    def postings(self, conn: sqlite3.Connection, term: str) -> Postings | None:
        """The term's postings, cached; None when FTS5 would read the term differently."""
        key = self._key(term)
        with self._lock:
            if key in self._terms:
                self._terms.move_to_end(key)
                return self._terms[key]
        entry = self._load(conn, term)
        with self._lock:
            if key not in self._terms:
                self._terms[key] = entry
                self._size += entry.nbytes() if entry else 0
            while self._size > MAX_BYTES and len(self._terms) > 1:
                _, old = self._terms.popitem(last=False)
                self._size -= old.nbytes() if old else 0
        return entry

    def top(self, conn: sqlite3.Connection, terms: Sequence[str], limit: int,
            allowed: np.ndarray | None = None) -> list[tuple[int, float]] | None:
        """The ``limit`` best ``(rowid, score)`` among rows matching any term (and, given sorted ``allowed``
        rowids, only those), best first, ties by rowid, as FTS5 ranks them: exactly ``exhaustive``'s answer,
        by the prefix bound of the module docstring. None when a term must go to FTS5 instead."""
        if not self.n_rows or not terms or limit <= 0:
            return []
        loaded = [self.postings(conn, t) for t in terms]
        if any(entry is None for entry in loaded):
            return None
        try:
            return self._top([e for e in loaded if e is not None], limit, allowed)
        except Stale:
            return None

    def _top(self, entries: list[Postings], limit: int, allowed: np.ndarray | None) -> list[tuple[int, float]]:
        mask: np.ndarray | None = None
        if allowed is not None:
            wanted = positions_of(self.rowids, allowed)
            if 8 * len(wanted) <= self.n_rows:  # a selective filter: score its rows, all of them
                return self._ranked(wanted, self._scores(entries, wanted), limit)
            mask = np.zeros(self.n_rows, dtype=bool)
            mask[wanted] = True
        cuts = [PREFIX] * len(entries)  # per term, in query order
        while True:
            bound, parts, bounds = 0.0, [], []
            for e, cut in zip(entries, cuts, strict=True):  # in query order, as the scores are summed
                if cut >= len(e):
                    parts.append(e.full()[0])
                    bounds.append(0.0)
                else:
                    head, first_left_out = e.prefix(cut)
                    parts.append(head)
                    bound += first_left_out
                    bounds.append(first_left_out)
                    self._save_head(e)
            candidates = np.sort(np.concatenate(parts))  # (np.unique hashes: ~50x slower here)
            candidates = candidates[np.r_[True, candidates[1:] != candidates[:-1]]] if len(candidates) else candidates
            if mask is not None:
                candidates = candidates[mask[candidates]]
            scores = self._scores(entries, candidates)
            kth = np.partition(scores, len(scores) - limit)[len(scores) - limit] if len(scores) >= limit else 0.0
            if bound == 0.0 or kth > bound:
                return self._ranked(candidates, scores, limit)
            cuts = _grown(cuts, bounds, bound - float(kth))
            if GROW_MAX * sum(min(cut, len(e)) for e, cut in zip(entries, cuts, strict=True)) > self.n_rows:
                # longer prefixes would cost about what scoring every row does
                return self.exhaustive(entries, limit, mask, floor=float(kth))

    def _save_head(self, e: Postings) -> None:
        """Queue, once, the head of a common term ranked here (it had none that held): saved in the
        background if the store stays unchanged, for the next processes' first queries."""
        if e.head is None and not e.head_saved and self._saved is not None and len(e) >= HEAD_MIN:
            e.head_saved = True
            self._saved.save_head_later(e.key, self.generation, Head(self.rowids, *e.full(), HEAD_ROWS))

    def _scores(self, entries: Sequence[Postings], positions: np.ndarray) -> np.ndarray:
        """The exact scores of the sorted ``positions``: each term's part added in query order (0.0 plus the
        first part is that part, so the sums are bit for bit those of ``exhaustive``). A term's rows are
        found among the positions by binary search, or, for a term with at most SLOT_SHARE rows per
        position, by one pass over its rows through a position -> slot map (a binary search per position
        would cost more)."""
        scores = np.zeros(len(positions), dtype=np.float64)
        if not len(positions):
            return scores
        slots: np.ndarray | None = None
        for e in entries:
            if (dense := e.dense_built if len(positions) < DENSE_CANDIDATES else e.dense()) is not None:
                scores += dense[positions]
                continue
            if not len(e):  # a term no row holds
                continue
            if len(e) <= SLOT_SHARE * len(positions):
                if slots is None:
                    slots = np.full(self.n_rows, -1, dtype=np.int32)
                    slots[positions] = np.arange(len(positions), dtype=np.int32)
                slot, part = e.scores_by_slot(slots, positions)
                scores[slot] += part
            else:
                hit, part = e.scores_at(positions)
                scores[hit] += part
        return scores

    def _ranked(self, positions: np.ndarray, scores: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` best of ``positions`` (sorted) with their ``scores``, ties by rowid; rows scoring 0
        (holding no term) are left out."""
        keep = scores > 0.0
        positions, scores = positions[keep], scores[keep]
        if len(scores) > limit:
            # everything at or above the limit-th best score, so that ties at the cut go by rowid
            kth = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            top = scores >= kth
            positions, scores = positions[top], scores[top]
        order = np.lexsort((positions, -scores))[:limit]  # positions ascend with rowids
        return [(int(self.rowids[p]), float(s)) for p, s in zip(positions[order], scores[order], strict=True)]

    def exhaustive(self, entries: Sequence[Postings], limit: int, mask: np.ndarray | None = None,
                   floor: float = 0.0) -> list[tuple[int, float]]:
        """The plain scorer: every posting of every term added into one score per row (rows outside
        ``mask``, a boolean per position, left out), then the top ``limit``. ``floor``: a score the k-th
        best is known to reach; only the rows scoring at least that are ranked."""
        scores = np.zeros(self.n_rows, dtype=np.float64)
        for e in entries:
            if (dense := e.dense()) is not None:
                scores += dense  # 0.0 where absent: the same sums as the scatter below
            else:
                positions, part = e.full()
                scores[positions] += part  # positions are unique within a term
        if mask is not None:
            scores[~mask] = 0.0
        hits = np.flatnonzero(scores >= floor) if floor > 0.0 else np.flatnonzero(scores)  # matches score > 0
        return self._ranked(hits, scores[hits], limit)


def _grown(cuts: list[int], bounds: list[float], short: float) -> list[int]:
    """The next round's prefix sizes: fourfold for the terms that hold the bound up (a bound of at least
    ``short``, what the bound exceeds the k-th candidate by, over the terms still cut), the others unchanged.
    A common word's first part left out is small (its idf is), so its prefix grows only when it matters."""
    cut_terms = sum(b > 0.0 for b in bounds)
    top = max(bounds)
    return [c * 4 if b > 0.0 and (b * cut_terms >= short or b == top) else c
            for c, b in zip(cuts, bounds, strict=True)]
