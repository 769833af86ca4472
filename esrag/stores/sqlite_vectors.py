"""The dense side of the SQLite store: exact kNN below a size, an approximate (HNSW) index above it.

Source of truth: the ``chunks.embedding`` column. Everything here is a cache of it that can be thrown away.

Change log (its schema, its queries and the pointer row are in ``sqlite_vector_log``): triggers on
``chunks`` record, in the same transaction as the chunk rows, each rowid whose vector was added, replaced
or deleted, with the generation that transaction commits (``vector_changes``: one row per rowid, the
latest change). So "what changed after generation g" is one indexed range read, and a
crash (SIGKILL mid-write included) can never separate the log from the chunks.

Bases and deltas. A search process holds one *base* and the *delta* since it:

- exact base (a store under ``ann_min_chunks`` chunks, or the ``exact_knn`` setting): the L2-normalised
  float32 matrix of every vector, read once at generation g;
- approximate base: a USearch HNSW index over int8-quantised vectors, saved as the file
  ``<db>.vectors-<generation>-<nonce>.usearch`` beside the database and memory-mapped read-only (opening
  it reads nothing; the pages a query walks are read on demand and shared by every process). The
  ``meta`` row ``vectors`` names the file, its generation and its vector count: the generation recorded on
  both sides.

The delta is the rowids logged after the base's generation: their entries in the base are masked out, and
their current vectors (those still present) are searched exactly. A write therefore costs a search
process one read of the rows it changed, never a reload. Deleted chunks are masked, so they never come
back. The final hits are read by rowid in the same SQLite snapshot as the BM25 side.

Merges. After a write, a background thread of the writing process (one at a time; the store's ``close``
waits for it, a write does not) folds the delta into a new HNSW file when the delta reaches ``max(MERGE_MIN,
MERGE_FRACTION x base)`` (or builds the first one when the store reaches ``ann_min_chunks``): it copies the
current file into memory, removes and adds the changed vectors (read a batch per short read transaction: no
snapshot is held while the graph is built, so the WAL keeps being checkpointed; see ``_merged``), saves a
new file (written under a temporary name, fsynced, renamed), then, in one transaction, points ``vectors`` at
it (only if nobody else did meanwhile) and drops the log up to the merged generation. A crash at any point
leaves either the old pointer (an orphan file, deleted by the next merge) or the new one. A pointer whose
file is missing, unreadable or of the wrong size is stale: the process rebuilds it from the vectors in
SQLite and, until then, answers exactly; it never serves a different set of chunks.

Approximate answers are re-scored: the HNSW candidates' float vectors are read from SQLite and the hits
carry exact ``(1 + cos) / 2`` scores. Filtered kNN returns ``limit`` hits whenever that many match: a
filter that keeps few rows is answered exactly over those rows; a broad one widens the HNSW breadth until
enough candidates pass (and falls back to exact over the subset if they do not).

Thread safety: a ``DenseIndex`` is shared by the store's threads; a search works on an immutable
``_View`` (swapped under a lock), so threads never see a half-applied change.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from esrag.errors import CorruptStoreError, EsragError, ModelMismatchError
from esrag.stores import sqlite_sql as sql
from esrag.stores import sqlite_vector_log as vector_log
from esrag.stores.sqlite_vector_log import KIND, Pointer, read_state

log = logging.getLogger(__name__)

#: HNSW parameters (measured in scripts/bench_store.py: recall@10 >= 0.98 of exact on MiniLM vectors)
CONNECTIVITY, EXPANSION_ADD, EXPANSION_SEARCH = 16, 128, 128
#: a merge folds the delta in when it reaches max(MERGE_MIN, MERGE_FRACTION x the base's vectors)
MERGE_MIN, MERGE_FRACTION = 20_000, 0.10
#: a filter keeping at most this many rows is answered exactly over its rows
FILTER_EXACT_MAX = 5_000
#: HNSW candidates read per hit wanted, before masking and re-scoring: the int8 graph orders near ties
#: coarsely, so the exact top k is fetched from a wider set (at 2, recall@10 on 300 MiniLM vectors dipped to 0.96)
OVERSAMPLE = 4
#: the graph search (ef 128) misses members of a tight cluster of near-duplicates: while the candidates within
#: CROWD_GAP (cosine distance, int8) of the limit-th fill more than a quarter of them, the search widens
#: fourfold (straight to WIDEN_MAX when a step would pass half of it), up to WIDEN_MAX candidates, and the best
#: of them by int8 distance (which orders them as the float vectors do to a correlation of 0.99995) are
#: re-scored as before. Measured on 2,400 MiniLM vectors x 83 noisy copies: recall@10 0.84 at 56 candidates,
#: 0.885 at 224, 0.993 at 896; at 1M (12,000 x 83), recall@10 0.970 with WIDEN_MAX 1024, 0.999 with 2048.
CROWD_GAP, WIDEN_MAX = 0.08, 2048
#: rows per batch when vectors are streamed out of SQLite into an index
BUILD_BATCH = 10_000
def normalised(blobs: list[bytes], dims: int, where: Path) -> np.ndarray:
    """(n, dims) unit float32 rows of stored vector blobs; CorruptStoreError for a blob of the wrong size."""
    out = np.empty((len(blobs), dims), dtype=np.float32)
    for i, blob in enumerate(blobs):
        if len(blob) != 4 * dims:
            raise CorruptStoreError(f"{where}: a stored vector has {len(blob)} bytes, expected {4 * dims}")
        out[i] = np.frombuffer(blob, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", out, out))
    norms[norms == 0.0] = 1.0
    out /= norms[:, None]
    return out


def _isin_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``values`` are in the sorted ``sorted_set``."""
    if not len(sorted_set) or not len(values):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(sorted_set, values)
    at[at >= len(sorted_set)] = len(sorted_set) - 1
    return sorted_set[at] == values


def _top(cos: np.ndarray, rowids: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``limit`` best (rowids, cos), best first, ties by rowid."""
    k = min(limit, len(cos))
    if k <= 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-cos, k - 1)[:k] if k < len(cos) else np.arange(len(cos))
    order = np.lexsort((rowids[top], -cos[top]))
    return rowids[top[order]], cos[top[order]]


@dataclasses.dataclass(frozen=True)
class _View:
    """What a search at ``generation`` sees: a base (exact matrix or HNSW file) and the delta since it."""

    generation: int
    base_generation: int
    pointer: Pointer | None  # the HNSW base, None for an exact base
    ann: Any  # usearch Index (memory-mapped view) or None
    matrix: np.ndarray  # exact base: (n, dims) unit rows; empty for an HNSW base
    rowids: np.ndarray  # exact base's rowids, sorted
    changed: np.ndarray  # sorted rowids logged after base_generation: masked out of the base
    delta: np.ndarray  # (m, dims) unit rows: current vectors of the changed rowids still present
    delta_rowids: np.ndarray  # sorted


class DenseIndex:
    """The dense side of one store file (see the module docstring). ``exact``: never use the HNSW base;
    ``ann_min``: build one once the store holds that many chunks."""

    def __init__(self, db_path: Path, dims: int, exact: bool = False, ann_min: int = 50_000) -> None:
        self.path = db_path
        self.dims = dims
        self.exact = exact
        self.ann_min = ann_min
        self._lock = threading.Lock()
        self._view: _View | None = None
        self._stale: str | None = None  # why the last pointer read was unusable
        self._bad: Pointer | None = None  # that pointer: searched exactly until the pointer moves
        self._repairing = False
        self._merger: threading.Thread | None = None  # the background merge (maintain_in_background)
        self._merge_again = False

    # --- search ------------------------------------------------------------------------------------

    def view(self, conn: sqlite3.Connection, generation: int, pointer: Pointer | None) -> _View | None:
        """The shared view brought to ``generation`` with the base ``pointer`` names (both read by the caller
        in its snapshot, see ``read_state``); None when the view is already newer than that snapshot (the
        caller starts a newer snapshot and asks again)."""
        v = self._view
        if v is not None and v.generation == generation and self._same_base(v, pointer):
            return v
        with self._lock:
            v = self._view
            if v is not None and v.generation > generation:
                return None
            if v is not None and self._same_base(v, pointer):
                v = self._view = self._advance(conn, v, generation)
                return v
            self._view = None  # free the old one before loading
            self._view = v = self._load(conn, generation, pointer)
        return v

    def _use_ann(self, pointer: Pointer | None) -> bool:
        return not self.exact and pointer is not None and pointer != self._bad

    def _same_base(self, v: _View, pointer: Pointer | None) -> bool:
        """Whether ``v``'s base still serves: the same HNSW file, or an exact base the log still reaches
        (a merge drops the log up to its generation)."""
        if self._use_ann(pointer):
            return v.pointer == pointer
        return v.pointer is None and (pointer is None or pointer.generation <= v.generation)

    def _load(self, conn: sqlite3.Connection, generation: int, pointer: Pointer | None) -> _View:
        if self._use_ann(pointer):
            assert pointer is not None
            ann = self._open_ann(pointer)
            if ann is not None:
                empty = np.empty(0, np.int64)
                base = _View(generation=pointer.generation, base_generation=pointer.generation, pointer=pointer,
                             ann=ann, matrix=np.empty((0, self.dims), np.float32), rowids=empty, changed=empty,
                             delta=np.empty((0, self.dims), np.float32), delta_rowids=empty)
                return self._advance(conn, base, generation)
        return self._load_exact(conn, generation)

    def _open_ann(self, pointer: Pointer) -> Any:
        """The pointer's HNSW file, memory-mapped; None (and ``_stale`` set) when it is missing or does not
        hold the recorded count."""
        from usearch.index import Index

        problem = self.check(pointer)
        if problem is None:
            try:  # another process's merge may delete a superseded file between the check and the mapping
                ann = Index.restore(str(self.path.parent / pointer.file), view=True)
            except (RuntimeError, OSError, ValueError) as e:
                ann, problem = None, f"{pointer.file} could not be mapped ({e})"
            if ann is not None:
                ann.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # it has a setter
                self._bad = self._stale = None
                return ann
            problem = problem or f"{pointer.file} is unreadable"
        self._bad, self._stale = pointer, problem
        log.warning("the vector index of %s is stale (%s): searching exactly until it is rebuilt", self.path,
                    problem)
        return None

    def check(self, pointer: Pointer) -> str | None:
        """Why the pointer's HNSW file cannot serve (missing, unreadable, another count or dims), or None."""
        from usearch.index import Index

        file = self.path.parent / pointer.file
        if not file.is_file():
            return f"{file.name} is missing"
        try:
            meta = Index.metadata(str(file))
        except (ValueError, RuntimeError, OSError) as e:
            return f"{file.name} is unreadable ({e})"
        if not meta or meta.get("count_present") != pointer.count or meta.get("dimensions") != self.dims:
            return (f"{file.name} holds {meta and meta.get('count_present')} x {meta and meta.get('dimensions')} "
                    f"vectors, the store recorded {pointer.count} x {self.dims}")
        return None

    def _load_exact(self, conn: sqlite3.Connection, generation: int) -> _View:
        """An exact base: every vector, read in the caller's snapshot."""
        rowids, blobs = [], []
        for rid, blob in conn.execute(sql.LOAD_SQL):
            rowids.append(rid)
            blobs.append(blob)
        matrix = normalised(blobs, self.dims, self.path)
        del blobs
        empty = np.empty(0, np.int64)
        return _View(generation=generation, base_generation=generation, pointer=None, ann=None, matrix=matrix,
                     rowids=np.asarray(rowids, dtype=np.int64), changed=empty,
                     delta=np.empty((0, self.dims), np.float32), delta_rowids=empty)

    def _advance(self, conn: sqlite3.Connection, v: _View, generation: int) -> _View:
        """``v`` with the changes logged after ``v.generation`` applied (an O(changes) step)."""
        if generation == v.generation:
            return v
        rows = conn.execute(vector_log.CHANGES, (v.generation,)).fetchall()
        if not rows:
            return dataclasses.replace(v, generation=generation)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        present = [(r[0], r[1]) for r in rows if r[1] is not None]
        keep = ~_isin_sorted(v.delta_rowids, ids)
        new_ids = np.fromiter((r for r, _ in present), dtype=np.int64, count=len(present))
        new_rows = normalised([b for _, b in present], self.dims, self.path)
        delta_ids = np.concatenate([v.delta_rowids[keep], new_ids])
        delta = np.concatenate([v.delta[keep], new_rows])
        order = np.argsort(delta_ids, kind="stable")
        changed = np.union1d(v.changed, ids) if len(v.changed) else ids  # ids: unique, ascending (ORDER BY)
        return dataclasses.replace(v, generation=generation, changed=changed,
                                   delta=delta[order], delta_rowids=delta_ids[order])

    def knn(self, conn: sqlite3.Connection, v: _View, query: np.ndarray, wanted: np.ndarray | None,
            limit: int) -> list[tuple[int, float]]:
        """``(rowid, (1 + cos) / 2)`` best first, ties by rowid: the ``limit`` nearest among ``wanted``
        rowids (sorted) when given. Exact on an exact base; re-scored HNSW candidates otherwise."""
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.dims:
            raise ModelMismatchError(f"query vector has {q.shape[0]} dims but the index at {self.path} "
                                     f"holds {self.dims}-dim vectors")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0 or limit <= 0:
            return []
        q = q / norm
        ids, cos = self._delta_side(v, q, wanted, limit)
        if v.ann is not None:
            base_ids, base_cos = self._ann_side(conn, v, q, wanted, limit)
        else:
            base_ids, base_cos = self._exact_side(v, q, wanted, limit)
        ids, cos = _top(np.concatenate([cos, base_cos]), np.concatenate([ids, base_ids]), limit)
        return [(int(r), min(1.0, max(0.0, (1.0 + float(c)) / 2.0))) for r, c in zip(ids, cos, strict=True)]

    @staticmethod
    def _delta_side(v: _View, q: np.ndarray, wanted: np.ndarray | None, limit: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        rowids, matrix = v.delta_rowids, v.delta
        if wanted is not None and len(rowids):
            ok = _isin_sorted(rowids, wanted)
            rowids, matrix = rowids[ok], matrix[ok]
        if not len(rowids):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return _top(np.einsum("ij,j->i", matrix, q), rowids, limit)

    @staticmethod
    def _exact_side(v: _View, q: np.ndarray, wanted: np.ndarray | None, limit: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact over the base. ``einsum`` rather than ``@``: numpy's own loop is single-threaded and on
        this workload about twice as fast as BLAS sgemv, whose threads contend with the caller's."""
        matrix, rowids = v.matrix, v.rowids
        if wanted is not None:
            from esrag.stores.sqlite_bm25 import positions_of

            positions = positions_of(rowids, wanted)
            # a selective filter scores only its rows; a broad one scores all and picks (no big copy)
            cos = (np.einsum("ij,j->i", matrix[positions], q) if 4 * len(positions) < len(rowids)
                   else np.einsum("ij,j->i", matrix, q)[positions])
            rowids = rowids[positions]
        else:
            cos = np.einsum("ij,j->i", matrix, q)
        if len(v.changed):
            stale = _isin_sorted(rowids, v.changed)
            if stale.any():
                cos, rowids = cos[~stale], rowids[~stale]
        return _top(cos, rowids, limit)

    def _ann_side(self, conn: sqlite3.Connection, v: _View, q: np.ndarray, wanted: np.ndarray | None,
                  limit: int) -> tuple[np.ndarray, np.ndarray]:
        """HNSW candidates (changed rowids masked, the filter applied), re-scored with their float vectors
        from SQLite. A filter of at most FILTER_EXACT_MAX rows, or one the widening search cannot satisfy,
        is answered exactly over its rows."""
        size = len(v.ann)
        if wanted is not None and len(wanted) <= FILTER_EXACT_MAX:
            return self._exact_rows(conn, v, wanted, q, limit)
        share = 1.0 if wanted is None else max(len(wanted) / max(size, 1), 1e-9)
        count = rescore = min(size, int(OVERSAMPLE * limit / share) + 16)
        while True:
            found = v.ann.search(q, count, threads=1)
            keys = np.asarray(found.keys, dtype=np.int64)  # nearest first (int8 distance)
            ok = ~_isin_sorted(keys, v.changed)
            if wanted is not None:
                ok &= _isin_sorted(keys, wanted)
            distances, keys = np.asarray(found.distances)[ok], keys[ok]
            if len(keys) >= limit:
                crowd = int(np.count_nonzero(distances <= distances[limit - 1] + CROWD_GAP))
                if count >= min(size, WIDEN_MAX) or len(found.keys) < count or 4 * crowd <= len(keys):
                    break
                count = min(size, WIDEN_MAX if 8 * count > WIDEN_MAX else 4 * count)  # a crowd at the cut: wider
                continue
            if wanted is not None and (count >= size or count * 4 > size / 4):
                # cheaper than walking most of the graph, and exact: a graph search asked for every vector
                # may still miss a few, so k filtered hits would not be guaranteed
                return self._exact_rows(conn, v, wanted, q, limit)
            if count >= size:
                break
            count = min(size, count * 4)
        return self._rescore(conn, keys[:rescore], q, limit)

    def _rescore(self, conn: sqlite3.Connection, keys: np.ndarray, q: np.ndarray, limit: int
                 ) -> tuple[np.ndarray, np.ndarray]:
        ids, blobs = [], []
        for part in sql.batches(keys.tolist()):
            for rid, blob in conn.execute(f"SELECT rowid, embedding FROM chunks WHERE rowid IN "
                                          f"({', '.join('?' * len(part))})", part):
                ids.append(rid)
                blobs.append(blob)
        if not ids:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        return _top(np.einsum("ij,j->i", normalised(blobs, self.dims, self.path), q),
                    np.asarray(ids, dtype=np.int64), limit)

    def _exact_rows(self, conn: sqlite3.Connection, v: _View, wanted: np.ndarray, q: np.ndarray, limit: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact over the filter's rows of the base (the delta's rows are scored by the caller)."""
        rows = wanted[~_isin_sorted(wanted, v.changed)]
        return self._rescore(conn, rows, q, limit)

    # --- writing side: merges ----------------------------------------------------------------------

    def maintain(self, conn: sqlite3.Connection) -> None:
        """After a committed write, through the write connection (no transaction open): fold the delta into
        a new HNSW file when it is due (see the module docstring). Failures are logged, never raised: the
        data is committed, and searches stay correct with a larger delta."""
        try:
            self._maintain(conn)
        except (OSError, RuntimeError, ValueError, MemoryError, sqlite3.Error) as e:
            log.warning("could not update the vector index of %s (searches stay exact over the changes): %s",
                        self.path, e)

    def _maintain(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        try:
            generation, pointer = read_state(conn)
            base = pointer
            if pointer is None:
                if int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0]) < self.ann_min:
                    return
            elif self.check(pointer) is not None:
                base = None  # stale: rebuilt from SQLite
            else:
                pending = int(conn.execute(vector_log.PENDING,
                                           (pointer.generation,)).fetchone()[0])
                if pending < max(MERGE_MIN, MERGE_FRACTION * pointer.count):
                    return
        finally:
            conn.execute("COMMIT")
        t0 = time.perf_counter()
        index = self._merged(conn, base, generation)
        self._publish(conn, index, generation, pointer)
        log.info("vector index of %s: %d vectors at generation %d (%.1f s)", self.path, len(index), generation,
                 time.perf_counter() - t0)

    def maintain_in_background(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """``maintain`` in a thread of its own through a ``connect()``ed connection, so that a write returns
        without waiting for a merge; one at a time (a call during a run makes it check again when done).
        ``wait`` joins it (the store's ``close`` does)."""
        with self._lock:
            self._merge_again = True
            if self._merger is not None:
                return
            self._merger = threading.Thread(target=self._merge_loop, args=(connect,), name="esrag-vector-merge",
                                            daemon=True)
            self._merger.start()

    def _merge_loop(self, connect: Callable[[], sqlite3.Connection]) -> None:
        while True:
            with self._lock:
                if not self._merge_again:
                    self._merger = None
                    return
                self._merge_again = False
            try:
                conn = connect()
            except (OSError, sqlite3.Error, EsragError) as e:  # the file went away: nothing to merge into
                log.warning("could not update the vector index of %s: %s", self.path, e)
                continue
            try:
                self.maintain(conn)
            finally:
                conn.close()

    def wait(self) -> None:
        """Wait for the background merge, if one runs."""
        merger = self._merger
        if merger is not None:
            merger.join()

    def rebuild(self, conn: sqlite3.Connection) -> None:
        """Build the HNSW file from every vector in SQLite and point the store at it (a stale index's
        repair; also ``maintain``'s first build). Through a connection with no transaction open."""
        conn.execute("BEGIN")
        try:
            generation, pointer = read_state(conn)
        finally:
            conn.execute("COMMIT")
        self._publish(conn, self._merged(conn, None, generation), generation, pointer)

    def _merged(self, conn: sqlite3.Connection, pointer: Pointer | None, generation: int) -> Any:
        """An in-memory HNSW index of the store at ``generation`` as far as the log after it does not mask:
        the pointer's file with the rowids logged in (its generation, ``generation``] removed and their
        vectors added, or (no pointer) every vector.

        Read ``BUILD_BATCH`` rows at a time, each batch in a read transaction of its own (``conn`` has none
        open), so that no snapshot is held while the graph is built: a snapshot held for the minutes a large
        merge takes kept the WAL from being checkpointed (it grew to gigabytes during a bulk load). Exact all
        the same: a row changed after ``generation`` is logged after it, so the new file's entry for it,
        whichever a batch read, is masked and its current vector searched in the delta until the next merge."""
        from usearch.index import Index

        if pointer is None:
            index = Index(ndim=self.dims, metric="cos", dtype="i8", connectivity=CONNECTIVITY,
                          expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH, multi=False)
            # up to the last rowid now, or the pages would chase a writer that keeps adding rows; a row added
            # after ``generation`` and not read is logged after it, in the delta
            conn.execute("BEGIN")
            try:
                params: tuple[int, ...] = (int(conn.execute("SELECT coalesce(max(rowid), 0) FROM chunks"
                                                             ).fetchone()[0]),)
            finally:
                conn.execute("COMMIT")
            query = vector_log.ALL_AFTER
        else:
            restored = Index.restore(str(self.path.parent / pointer.file))
            if restored is None or len(restored) != pointer.count:
                raise ValueError(f"{pointer.file} does not hold the {pointer.count} vectors recorded")
            index = restored
            query, params = vector_log.LOGGED_AFTER, (pointer.generation, generation)
        last = -1
        while True:
            conn.execute("BEGIN")
            try:
                batch = conn.execute(query, (*params, last, BUILD_BATCH)).fetchall()
            finally:
                conn.execute("COMMIT")
            if not batch:
                return index
            last = int(batch[-1][0])
            keys = np.fromiter((r[0] for r in batch), dtype=np.uint64, count=len(batch))
            if pointer is not None:
                index.remove(keys)
            present = [(r[0], r[1]) for r in batch if r[1] is not None]
            if present:
                index.add(np.fromiter((r for r, _ in present), dtype=np.uint64, count=len(present)),
                          normalised([b for _, b in present], self.dims, self.path))

    def _publish(self, conn: sqlite3.Connection, index: Any, generation: int, old: Pointer | None) -> None:
        """Save ``index`` (the snapshot at ``generation``) and point the store at it, unless another process
        moved the pointer meanwhile; drop the log up to ``generation`` and the files no longer pointed to."""
        name = f"{self.path.name}.vectors-{generation}-{secrets.token_hex(4)}.usearch"
        final = self.path.parent / name
        tmp = final.with_suffix(".tmp")
        index.save(str(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        new = Pointer(file=name, generation=generation, count=len(index))
        conn.execute("BEGIN IMMEDIATE")
        try:
            _, current = read_state(conn)
            if current != old:
                conn.execute("ROLLBACK")
                final.unlink(missing_ok=True)
                return
            conn.execute("INSERT INTO meta(key, value) VALUES ('vectors', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (new.dump(),))
            conn.execute("DELETE FROM vector_changes WHERE generation <= ?", (generation,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for f in self.files():
            if f.name != name and (not f.name.endswith(".tmp") or time.time() - f.stat().st_mtime > 3600):
                f.unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """The HNSW files of this store (the current one, orphans of interrupted merges)."""
        return sorted(self.path.parent.glob(f"{self.path.name}.vectors-*"))

    def status(self, conn: sqlite3.Connection) -> dict[str, Any]:
        """kind, vectors, file size, the changes logged since the HNSW file (searched exactly until the next
        merge folds them in) and whether the file is current (usable: present, readable, of the recorded
        count) or stale (and why)."""
        conn.execute("BEGIN")
        try:
            generation, pointer = read_state(conn)
            pending = int(conn.execute(vector_log.PENDING,
                                       (pointer.generation if pointer else -1,)).fetchone()[0]) if pointer else 0
        finally:
            conn.execute("COMMIT")
        if pointer is None:
            return {"kind": "exact", "vectors_in_index": 0, "bytes": 0, "current": True,
                    "note": f"exact kNN until the store holds {self.ann_min} chunks"}
        file = self.path.parent / pointer.file
        problem = self.check(pointer)
        return {"kind": "exact (exact_knn set)" if self.exact else KIND, "vectors_in_index": pointer.count,
                "bytes": file.stat().st_size if file.is_file() else 0, "generation": pointer.generation,
                "changes_since": pending, "current": problem is None, "stale": problem}

    def needs_repair(self) -> bool:
        """Whether the last view found the pointer's file unusable (and no repair is running)."""
        return self._stale is not None and not self.exact and not self._repairing

    def repair_in_background(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Rebuild a stale HNSW file from SQLite in a thread of its own (through a ``connect()``ed
        connection), once at a time; searches stay exact meanwhile."""
        with self._lock:
            if self._repairing:
                return
            self._repairing = True

        def repair() -> None:
            try:
                conn = connect()
                try:
                    self.rebuild(conn)
                finally:
                    conn.close()
            except (OSError, RuntimeError, ValueError, MemoryError, sqlite3.Error) as e:
                log.warning("could not rebuild the vector index of %s: %s", self.path, e)
            finally:
                self._repairing = False

        threading.Thread(target=repair, name="esrag-vector-repair", daemon=True).start()

    def forget(self) -> None:
        with self._lock:
            self._view = None
