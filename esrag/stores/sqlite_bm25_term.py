"""One term's postings in a ``sqlite_bm25.Bm25Index``: its rows as read, and what the scorers derive from
them on first need (positions and bm25 parts, prefixes, dense parts), from a saved head or not."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from esrag.stores.sqlite_postings import Raw

if TYPE_CHECKING:
    from esrag.stores.sqlite_bm25 import Bm25Index

K1, B = 1.2, 0.75
#: ``Bm25Index.top`` grows its prefixes while they hold under 1/GROW_MAX of the rows in all, then scores
#: every row
GROW_MAX = 8
#: a term in more than 1/DENSE_SHARE of the rows also keeps, once needed, a dense array of parts
DENSE_SHARE = 4


class Stale(Exception):
    """A term's saved postings name a row the index does not hold: its queries go to FTS5."""


class Postings:
    """One term's postings in a ``Bm25Index``: its rows as read (``raw``: rowids ascending, occurrences) and
    its ``idf``; from these, on first need, ``positions`` into ``Bm25Index.rowids`` with each row's bm25
    ``part`` (``full``; ``raw`` is then let go), the heads ``prefix`` has found (by cut), and the parts as
    one value per row of the index (``dense``, for a term in more than 1/DENSE_SHARE of the rows). Given a
    ``head`` (positions of its best rows, best first, from ``sqlite_postings.Saved.head``), prefixes come
    from it and candidates are scored from ``raw`` alone, so a common term's first query does not rank,
    or even score, all its rows. Threads that need the same derived array at once both compute it, the
    same."""

    def __init__(self, index: Bm25Index, key: str, raw: Raw, head: np.ndarray | None) -> None:
        self.key, self.head = key, head
        self.raw: Raw | None = raw
        self._n = len(raw.rows)
        self._positions, self._inverse = index._positions, index._inverse_map
        self._index_rowids, self._norms = index.rowids, index._row_norms()
        idf = math.log((index.n_rows - self._n + 0.5) / (self._n + 0.5))
        self.idf = 1e-6 if idf <= 0.0 else idf
        self.dense_rows = index.n_rows if DENSE_SHARE * self._n > index.n_rows else 0
        self.head_saved = False  # whether its head was queued to be saved (Bm25Index.top)
        self._full: tuple[np.ndarray, np.ndarray] | None = None
        self._prefixes: dict[int, tuple[np.ndarray, float]] = {}
        self._dense: np.ndarray | None = None
        if head is None:
            self.full()  # the positions are checked when the term is loaded

    def __len__(self) -> int:
        return self._n

    def head_holds(self) -> bool:
        """Whether the head's rows all hold the term, their parts never rising (a check that a head read
        for this snapshot is one; which rows it holds is ``Saved.head``'s guarantee)."""
        assert self.head is not None
        order = np.argsort(self.head)
        hit, part = self.scores_at(self.head[order])
        if not hit.all():
            return False
        ranked = np.empty(len(part), dtype=np.float64)
        ranked[order] = part
        return bool((ranked[:-1] >= ranked[1:]).all())

    @property
    def dense_built(self) -> np.ndarray | None:
        """The dense parts, if ``dense`` has built them."""
        return self._dense

    def _part(self, freqs: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """The bm25 parts of rows at ``positions`` holding the term ``freqs`` times: the same operations
        in the same order wherever they are computed, so the parts are bit for bit the same (an integer
        count converts to float64 exactly)."""
        return self.idf * ((freqs * (K1 + 1.0)) / (freqs + self._norms[positions]))

    def full(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions, parts) of every row holding the term; Stale when one is not in the index."""
        got = self._full
        if got is None:
            raw = self.raw
            if raw is None:  # another thread built them meanwhile
                got = self._full
                assert got is not None
                return got
            positions = self._positions(raw.rows)
            if positions is None:
                raise Stale(self.key)
            got = self._full = (positions.astype(np.int32), self._part(raw.freqs, positions))
            self.raw = None
        return got

    def _lazy(self) -> Raw | None:
        """``raw`` while the term is scored from it (it has a head and was not scored in full)."""
        return self.raw if self.head is not None and self._full is None else None

    def scores_at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which of the sorted ``positions`` hold the term, their parts), by a binary search each."""
        raw = self._lazy()
        if raw is None:
            held, part = self.full()
            at = np.searchsorted(held, positions)
            at[at >= len(held)] = 0
            hit = held[at] == positions
            return hit, part[at[hit]]
        rows = self._index_rowids[positions]
        at = np.searchsorted(raw.rows, rows)
        at[at >= len(raw.rows)] = 0
        hit = raw.rows[at] == rows
        return hit, self._part(raw.freqs[at[hit]], positions[hit])

    def scores_by_slot(self, slots: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slots, parts) of the term's rows among ``positions``, ``slots`` mapping each position of the
        index to its place in ``positions`` (-1: not there): one pass over the term's rows."""
        raw = self._lazy()
        inverse = self._inverse() if raw is not None else None
        if raw is None or inverse is None:
            held, part = self.full()
            slot = slots[held]
            hit = slot >= 0
            return slot[hit], part[hit]
        if raw.rows[-1] >= len(inverse):
            raise Stale(self.key)  # a rowid beyond the index's largest
        slot = slots[inverse[raw.rows]]  # (a rowid the index lacks maps to -1, the last slot: checked below)
        hit = slot >= 0
        slot = slot[hit]
        if (self._index_rowids[positions[slot]] != raw.rows[hit]).any():
            raise Stale(self.key)
        return slot, self._part(raw.freqs[hit], positions[slot])

    def dense(self) -> np.ndarray | None:
        """The parts as one float64 per row of the index (0.0 where absent), for a term in more than
        1/DENSE_SHARE of the rows (else None): built the first time a scorer needs it (the exhaustive
        one, or a query of DENSE_CANDIDATES candidates), not when the term is loaded."""
        if not self.dense_rows:
            return None
        dense = self._dense
        if dense is None:
            positions, part = self.full()
            dense = np.zeros(self.dense_rows, dtype=np.float64)
            dense[positions] = part
            self._dense = dense
        return dense

    def prefix(self, cut: int) -> tuple[np.ndarray, float]:
        """The positions of the ``cut`` highest parts (``cut`` < the rows; which of equal parts at the cut is
        left to the ranking) and the highest part left out: from the head when it holds more than ``cut``
        rows, else by one O(rows) partition per cut, the first time it is asked for."""
        got = self._prefixes.get(cut)
        if got is None:
            if self.head is not None and cut < len(self.head):
                _, bound = self.scores_at(self.head[cut:cut + 1])
                got = (self.head[:cut], float(bound[0]))
            else:
                positions, part = self.full()
                at = np.argpartition(-part, cut)
                got = (positions[at[:cut]], float(part[at[cut]]))
            self._prefixes[cut] = got
        return got

    def nbytes(self) -> int:
        """Bytes held, counted at their largest: the rows as read (10 per row) or scored (12), the heads
        found (at most 1/GROW_MAX of the rows) and the dense parts."""
        return 12 * self._n + 4 * self._n // GROW_MAX + 8 * self.dense_rows
