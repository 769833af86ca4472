"""Compact, persistent postings of the BM25 side's common terms, kept in step with writes by a change log.

FTS5 hands out a term's postings one row per occurrence (``fts5vocab``): about 1.7 s for a word found in a
million chunks. ``sqlite_bm25.Bm25Index`` caches what it reads, but only per process, per generation and
within a memory bound, so at a million chunks common words were read again and again. Here, a term found in
at least ``PERSIST_MIN`` rows is saved once as two packed arrays in the ``bm25_postings`` table (its rowids,
ascending, as gaps of a byte or two where they fit; its occurrences per row: ``pack``) with the generation
they were read at. Any process then
reads it back in milliseconds (the BLOBs' pages are shared through the OS cache).

Kept in step without rewriting on every write: triggers log, in the write's own transaction, each rowid whose
title or text was added, changed or deleted (``bm25_changes``: one row per rowid, the latest generation). A
saved term of generation ``g`` is brought to the reader's snapshot by dropping every rowid logged after ``g``
and adding those rows' current occurrences, read by tokenising just those rows in an in-memory FTS5 table with
the index's tokenizer (``Delta``: same tokens as the index, by construction; shared by the threads and
advanced row by row as writes come). The rows logged after ``g`` are taken as a superset (all those after the
delta's start), which is exact: a row the saved list already reflects is dropped and added back as it is now.

The rows' lengths in tokens (FTS5's ``docsize``: one record per row, ~1 s to read at a million rows) are
saved and kept in step the same way, in ``bm25_lengths`` (the changed rows' lengths read from ``docsize``).

A common term (``sqlite_bm25.HEAD_MIN``) also saves its head (``bm25_heads``): the rowids of its
best-scoring rows, best first, as ranked at a generation. Its scores depend on every row (the row count, the
average length), so a head holds only for a snapshot in which nothing was logged since that generation
(``Saved.head``); it is saved by a background job when the store has not changed since, and read by
``sqlite_bm25`` so that a common word's first query in a process need not rank all its rows.

Bounds: a term more than ``DELTA_MAX`` changes behind (or behind the log's ``floor``) is read from FTS5 again;
one more than ``REFRESH`` changes behind is saved again at the reader's generation, in a background thread
through a connection of its own that never waits for a writer (a busy store just skips the save). The writer
prunes the log when it holds over ``2 x DELTA_MAX`` rows: the saved terms too old to catch up are deleted and
the ``floor`` (meta ``bm25_floor``) moves up, all in one transaction.

Crash safety: the log changes in the chunks' transaction, a save and a prune are one transaction each; a
SIGKILL anywhere leaves either the old or the new state, and a saved term is only ever combined with the log
after its generation, so a search never sees postings of another snapshot.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

log = logging.getLogger(__name__)

#: terms found in at least this many rows are saved (shorter lists read from FTS5 in a few milliseconds)
PERSIST_MIN = 2048
#: a saved term further behind than this many changed rows is read from FTS5 again
DELTA_MAX = 50_000
#: a saved term further behind than this is saved again at the reader's generation
REFRESH = 5_000

_NEXT = "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0) + 1"
_LOG = ("INSERT INTO bm25_changes(rowid, generation) VALUES ({row}.rowid, " + _NEXT + ") "
        "ON CONFLICT(rowid) DO UPDATE SET generation = excluded.generation;")
#: the statements that add the saved postings and their change log to a store (new, or of schema 4)
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS bm25_postings (term TEXT PRIMARY KEY, generation INTEGER NOT NULL, "
    "rows BLOB NOT NULL, freqs BLOB NOT NULL, format INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS bm25_changes (rowid INTEGER PRIMARY KEY, generation INTEGER NOT NULL)",
    # every row's tokens (FTS5's docsize, one varint per column, takes ~1 s to read at a million rows)
    "CREATE TABLE IF NOT EXISTS bm25_lengths (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "generation INTEGER NOT NULL, rows BLOB NOT NULL, lengths BLOB NOT NULL, format INTEGER NOT NULL DEFAULT 0)",
    # a common term's best rows at a generation, best first (schema 6)
    "CREATE TABLE IF NOT EXISTS bm25_heads (term TEXT PRIMARY KEY, generation INTEGER NOT NULL, rows BLOB NOT NULL)",
    f"CREATE TRIGGER IF NOT EXISTS chunks_bi AFTER INSERT ON chunks BEGIN {_LOG.format(row='new')} END",
    f"CREATE TRIGGER IF NOT EXISTS chunks_bd AFTER DELETE ON chunks BEGIN {_LOG.format(row='old')} END",
    "CREATE TRIGGER IF NOT EXISTS chunks_bu AFTER UPDATE OF title, text ON chunks "
    f"WHEN old.title IS NOT new.title OR old.text IS NOT new.text BEGIN {_LOG.format(row='new')} END",
)
_FLOOR = "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'bm25_floor'"
_SAVE = ("INSERT INTO bm25_postings(term, generation, rows, freqs, format) VALUES (?, ?, ?, ?, ?) "
         "ON CONFLICT(term) DO UPDATE SET generation = excluded.generation, rows = excluded.rows, "
         "freqs = excluded.freqs, format = excluded.format WHERE excluded.generation >= bm25_postings.generation")
_SAVE_LENGTHS = ("INSERT INTO bm25_lengths(id, generation, rows, lengths, format) VALUES (1, ?, ?, ?, ?) "
                 "ON CONFLICT(id) DO UPDATE SET generation = excluded.generation, rows = excluded.rows, "
                 "lengths = excluded.lengths, format = excluded.format "
                 "WHERE excluded.generation > bm25_lengths.generation")
_SAVE_HEAD = ("INSERT INTO bm25_heads(term, generation, rows) VALUES (?, ?, ?) "
              "ON CONFLICT(term) DO UPDATE SET generation = excluded.generation, rows = excluded.rows "
              "WHERE excluded.generation > bm25_heads.generation")
_CHANGES_AFTER = "SELECT count(*) FROM bm25_changes WHERE generation > ?"
#: the lengths are saved for an index of at least this many rows
LENGTHS_MIN = 20_000


class Raw(NamedTuple):
    """One term's postings: ``rows`` (rowids, ascending, int64) and ``freqs`` (occurrences per row: float64,
    or uint16 as saved; either converts exactly)."""

    rows: np.ndarray
    freqs: np.ndarray


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring saved postings of schema 5 to this one (in the caller's write transaction, after SCHEMA): the
    ``format`` column, 0 for the lists saved before (int64 rowids)."""
    for table in ("bm25_postings", "bm25_lengths"):
        if "format" not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN format INTEGER NOT NULL DEFAULT 0")


def pack(rows: np.ndarray, counts: np.ndarray) -> tuple[bytes, bytes, int]:
    """(rows blob, counts blob, format) of ascending ``rows`` and their non-negative integer ``counts``: the
    rows as the first rowid (int64) then the gaps between them in the narrowest of 1, 2 or 4 bytes that
    holds them all (else the int64 rowids as they are), the counts in the narrowest of 1, 2 or 4 bytes.
    ``format`` is 16 x the gaps' width (8: plain rowids) + the counts' width. A common word's gaps fit in a
    byte: a million rows take 2 MB, not 10, and read back in a third of the time."""
    top = int(counts.max()) if len(counts) else 0
    count_width = next(w for w in (1, 2, 4) if top < 1 << (8 * w))
    packed_counts = counts.astype(f"<u{count_width}").tobytes()
    gaps = np.diff(rows)
    gap = int(gaps.max()) if len(gaps) else 0
    width = next((w for w in (1, 2, 4) if gap < 1 << (8 * w)), 8)
    if width == 8 or not len(rows):
        return rows.astype("<i8").tobytes(), packed_counts, 8 * 16 + count_width
    packed = rows[:1].astype("<i8").tobytes() + gaps.astype(f"<u{width}").tobytes()
    return packed, packed_counts, width * 16 + count_width


def unpack(rows: bytes, counts: bytes, fmt: int, legacy_counts: int) -> tuple[np.ndarray, np.ndarray]:
    """``pack``'s (rows int64, counts as unsigned integers); ``fmt`` 0: int64 rowids and counts of
    ``legacy_counts`` bytes, as saved before formats. ValueError for blobs that do not fit their format."""
    width, count_width = (8, legacy_counts) if fmt == 0 else divmod(fmt, 16)
    if width not in (1, 2, 4, 8) or count_width not in (1, 2, 4):
        raise ValueError(f"unknown postings format {fmt}")
    found = np.frombuffer(counts, dtype=f"<u{count_width}")
    if width == 8:
        got = np.frombuffer(rows, dtype="<i8").astype(np.int64, copy=False)  # read-only, no copy
    else:
        gaps = np.frombuffer(rows, dtype=f"<u{width}", offset=8)
        got = np.empty(len(gaps) + 1, dtype=np.int64)
        got[0] = np.frombuffer(rows, dtype="<i8", count=1)[0]
        np.cumsum(gaps, dtype=np.int64, out=got[1:])
        got[1:] += got[0]
    if len(got) != len(found):
        raise ValueError(f"{len(got)} rows but {len(found)} counts")
    return got, found


def floor(conn: sqlite3.Connection) -> int:
    """The generation after which the change log is complete (0: complete since the start)."""
    row = conn.execute(_FLOOR).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def changed_after(conn: sqlite3.Connection, generation: int) -> np.ndarray:
    """Rowids logged after ``generation``, ascending."""
    return np.fromiter((r for (r,) in conn.execute(
        "SELECT rowid FROM bm25_changes WHERE generation > ? ORDER BY rowid", (generation,))), dtype=np.int64)


def in_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in the ascending ``sorted_set`` (a binary search each: at a million
    values, several times faster than ``np.isin``)."""
    if not len(sorted_set):
        return np.zeros(len(values), dtype=bool)
    at = np.searchsorted(sorted_set, values)
    at[at == len(sorted_set)] = 0
    return np.asarray(sorted_set[at] == values)


def merged(old: Raw, drop: np.ndarray, add: Raw) -> Raw:
    """``old`` without the rows in ascending ``drop``, plus ``add`` (rows ascending in both)."""
    keep = ~in_sorted(old.rows, drop) if len(drop) else slice(None)
    rows = np.concatenate([old.rows[keep], add.rows])
    order = np.argsort(rows, kind="stable")  # two ascending runs: a merge
    return Raw(rows[order], np.concatenate([old.freqs[keep], add.freqs])[order])


def prune(conn: sqlite3.Connection) -> None:
    """Through the write connection, no transaction open: when the log holds over 2 x DELTA_MAX rows, keep
    its DELTA_MAX newest, delete the saved terms that can no longer catch up and move the floor up."""
    if int(conn.execute("SELECT count(*) FROM bm25_changes").fetchone()[0]) <= 2 * DELTA_MAX:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        cut = conn.execute("SELECT generation FROM bm25_changes ORDER BY generation DESC LIMIT 1 OFFSET ?",
                           (DELTA_MAX,)).fetchone()
        if cut is not None:
            conn.execute("DELETE FROM bm25_postings WHERE generation < ?", (cut[0],))
            conn.execute("DELETE FROM bm25_lengths WHERE generation < ?", (cut[0],))
            conn.execute("DELETE FROM bm25_heads WHERE generation < ?", (cut[0],))
            conn.execute("DELETE FROM bm25_changes WHERE generation <= ?", (cut[0],))
            conn.execute("INSERT INTO meta(key, value) VALUES ('bm25_floor', ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(cut[0]),))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Head:
    """What a term's head is ranked from, at one generation: the ``positions`` of its rows in the index's
    ascending ``rowids`` and their bm25 ``parts``. ``best()`` ranks them (once) and keeps the rowids of the
    ``rows`` best, best first, ties by rowid."""

    def __init__(self, rowids: np.ndarray, positions: np.ndarray, parts: np.ndarray, rows: int) -> None:
        self.rowids, self.positions, self.parts, self.rows = rowids, positions, parts, rows
        self._best: np.ndarray | None = None

    def best(self) -> np.ndarray:
        if self._best is None:
            at = np.argpartition(-self.parts, self.rows - 1)[:self.rows] if len(self.parts) > self.rows else \
                np.arange(len(self.parts))
            order = np.lexsort((self.positions[at], -self.parts[at]))  # positions ascend with rowids
            self._best = self.rowids[self.positions[at[order]]]
        return self._best


class Delta:
    """The current title and text of the rows logged after ``since``, tokenised in an in-memory FTS5 table
    with the index's tokenizer, as of ``generation``. Thread-safe."""

    def __init__(self, tokenizer: str) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self._mem = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        self._mem.execute(f"CREATE VIRTUAL TABLE d USING fts5(title, text, tokenize='{tokenizer}')")
        self._mem.execute("CREATE VIRTUAL TABLE dv USING fts5vocab(d, 'instance')")
        self._mem.execute(f"CREATE VIRTUAL TABLE t USING fts5(text, tokenize='{tokenizer}')")
        self._mem.execute("CREATE VIRTUAL TABLE tv USING fts5vocab(t, 'instance')")
        self.since = self.generation = -1
        self.rowids = np.empty(0, np.int64)

    def token(self, term: str) -> str | None:
        """The one token the tokenizer makes of a query term, or None (none, or several)."""
        with self._lock:
            self._mem.execute("BEGIN")
            try:
                self._mem.execute("INSERT INTO t(rowid, text) VALUES (1, ?)", (term,))
                found = [t for (t,) in self._mem.execute("SELECT term FROM tv")]
            finally:
                self._mem.execute("ROLLBACK")
        return found[0] if len(found) == 1 else None

    def _load(self, conn: sqlite3.Connection, rowids: np.ndarray) -> None:
        """(Re)index ``rowids`` as they are in ``conn``'s snapshot (rows gone there are just removed)."""
        for at in range(0, len(rowids), 500):
            part = rowids[at:at + 500].tolist()
            marks = ", ".join("?" * len(part))
            self._mem.execute(f"DELETE FROM d WHERE rowid IN ({marks})", part)
            self._mem.executemany("INSERT INTO d(rowid, title, text) VALUES (?, ?, ?)", conn.execute(
                f"SELECT rowid, title, text FROM chunks WHERE rowid IN ({marks})", part))

    def _catch_up(self, conn: sqlite3.Connection, since: int, generation: int) -> None:
        """Cover the rows logged after ``since`` at ``generation`` (hold the lock; ``conn`` is in a read
        transaction at ``generation``)."""
        if self.since <= since and self.generation == generation:
            return
        self._mem.execute("BEGIN")
        try:
            if self.since <= since and 0 <= self.generation < generation and floor(conn) <= self.generation:
                new = changed_after(conn, self.generation)
                self._load(conn, new)
                self.rowids = np.union1d(self.rowids, new)
            else:
                self._mem.execute("DELETE FROM d")
                self.rowids = changed_after(conn, since)
                self._load(conn, self.rowids)
                self.since = since
            self.generation = generation
            self._mem.execute("COMMIT")
        except BaseException:
            self._mem.execute("ROLLBACK")
            self.since = self.generation = -1
            raise

    def apply(self, conn: sqlite3.Connection, generation: int, saved_generation: int, term: str,
              saved: Raw) -> Raw | None:
        """``saved`` (a term's postings at ``saved_generation``) brought to ``generation``; None when this
        delta is newer than the caller's snapshot (an old reader: it reads FTS5 instead)."""
        with self._lock:
            if self.generation > generation:
                return None
            self._catch_up(conn, saved_generation, generation)
            rows = self._mem.execute("SELECT doc, count(*) FROM dv WHERE term = ? GROUP BY doc ORDER BY doc",
                                     (term,)).fetchall()
            changed = self.rowids
        return merged(saved, changed, Raw(np.fromiter((r for r, _ in rows), dtype=np.int64, count=len(rows)),
                                          np.fromiter((f for _, f in rows), dtype=np.float64, count=len(rows))))

    def close(self) -> None:
        with self._lock:
            self._mem.close()


class Saved:
    """The saved postings of one store: reading them (brought up to a snapshot through a shared ``Delta``)
    and saving them in the background through ``connect()``ed connections. Thread-safe."""

    def __init__(self, tokenizer: str, connect: Callable[[], sqlite3.Connection]) -> None:
        self.delta = Delta(tokenizer)
        self._connect = connect
        #: (kind, term, generation, what): kind "postings" (what: Raw), "lengths" (Raw) or "head" (a Head)
        self._jobs: queue.Queue[tuple[str, str, int, Raw | Head]] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counted: tuple[int, dict[int, int]] = (-1, {})  # generation, {saved generation: rows behind}

    def read(self, conn: sqlite3.Connection, generation: int, term: str, key: str) -> Raw | None:
        """Term ``key``'s postings at ``generation`` (``conn``'s snapshot) from its saved form, or None when
        it is not saved, too far behind, or ``term`` does not tokenise to exactly ``key``."""
        row = conn.execute("SELECT generation, rows, freqs, format FROM bm25_postings WHERE term = ?",
                           (key,)).fetchone()
        if row is None or self.delta.token(term) != key:
            return None
        saved_generation = int(row[0])
        if saved_generation < floor(conn):
            return None
        behind = self._behind(conn, generation, saved_generation)
        if behind > DELTA_MAX:
            return None
        try:
            saved = Raw(*unpack(row[1], row[2], int(row[3]), 2))
        except ValueError as e:  # a damaged row: read FTS5 (and save the term again)
            log.warning("saved postings of %r unreadable (%s): reading them from FTS5", key, e)
            return None
        if not behind:
            return saved
        raw = self.delta.apply(conn, generation, saved_generation, key, saved)
        if raw is not None and behind > REFRESH:
            self.save_later(key, generation, raw)
        return raw

    def _behind(self, conn: sqlite3.Connection, generation: int, saved_generation: int) -> int:
        """Rows logged after ``saved_generation`` in a snapshot at ``generation``: counted once per pair (the
        terms saved together share it), the counts of older snapshots dropped."""
        with self._lock:
            if self._counted[0] != generation:
                self._counted = (generation, {})
            counts = self._counted[1]
            if saved_generation in counts:
                return counts[saved_generation]
        behind = int(conn.execute(_CHANGES_AFTER, (saved_generation,)).fetchone()[0])
        with self._lock:
            if self._counted[0] == generation:
                self._counted[1][saved_generation] = behind
        return behind

    def head(self, conn: sqlite3.Connection, generation: int, key: str) -> np.ndarray | None:
        """Term ``key``'s saved head (rowids, best first) when it holds for ``conn``'s snapshot at
        ``generation``: saved at or before it with nothing logged since; else None."""
        row = conn.execute("SELECT generation, rows FROM bm25_heads WHERE term = ?", (key,)).fetchone()
        if row is None or not floor(conn) <= int(row[0]) <= generation:
            return None
        if self._behind(conn, generation, int(row[0])):
            return None
        return np.frombuffer(row[1], dtype="<i8").astype(np.int64, copy=False)

    def save_head_later(self, key: str, generation: int, head: Head) -> None:
        """Queue term ``key``'s head at ``generation``, ranked in the background and saved if nothing was
        logged since (a store being written to skips it: the next quiet reader saves it)."""
        self._queue(("head", key, generation, head))

    def lengths(self, conn: sqlite3.Connection, generation: int,
                read: Callable[[np.ndarray], Raw]) -> Raw | None:
        """Every row's tokens at ``generation`` (``conn``'s snapshot) from their saved form, the rows logged
        since read by ``read(rowids)`` (those still present, ascending); None when not saved or too far
        behind."""
        row = conn.execute("SELECT generation, rows, lengths, format FROM bm25_lengths").fetchone()
        if row is None or int(row[0]) < floor(conn):
            return None
        changed = changed_after(conn, int(row[0]))
        if len(changed) > DELTA_MAX:
            return None
        try:
            rows, lengths = unpack(row[1], row[2], int(row[3]), 4)
        except ValueError as e:
            log.warning("saved row lengths unreadable (%s): reading them from FTS5", e)
            return None
        raw = Raw(rows, lengths.astype(np.float64))
        if len(changed):
            raw = merged(raw, changed, read(changed))
            if len(changed) > REFRESH:
                self.save_later(None, generation, raw)
        return raw

    def save_later(self, key: str | None, generation: int, raw: Raw) -> None:
        """Queue ``raw`` (term ``key`` at ``generation``; key None: the rows' lengths) to be saved, when long
        enough to be worth it."""
        top = float(raw.freqs.max()) if len(raw.freqs) else 0.0
        if (len(raw.rows) < PERSIST_MIN or top > 65535) if key is not None else (
                len(raw.rows) < LENGTHS_MIN or top >= 2.0 ** 32):
            return
        self._queue(("lengths", "", generation, raw) if key is None else ("postings", key, generation, raw))

    def _queue(self, job: tuple[str, str, int, Raw | Head]) -> None:
        with self._lock:
            self._jobs.put(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="esrag-bm25-save", daemon=True)
                self._worker.start()

    def flush(self) -> None:
        """Wait until every queued save is done (or skipped)."""
        self._jobs.join()

    @staticmethod
    def _save(conn: sqlite3.Connection, kind: str, key: str, generation: int, what: Raw | Head) -> None:
        """Save one job (the caller holds the write transaction). A head (ranked by ``_run`` before the
        transaction) is saved only if, inside it, nothing was logged since its generation."""
        if isinstance(what, Head):
            if not int(conn.execute(_CHANGES_AFTER, (generation,)).fetchone()[0]):
                conn.execute(_SAVE_HEAD, (key, generation, what.best().astype("<i8").tobytes()))
        elif kind == "lengths":
            conn.execute(_SAVE_LENGTHS, (generation, *pack(what.rows, what.freqs)))
        else:
            conn.execute(_SAVE, (key, generation, *pack(what.rows, what.freqs)))

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while True:
                try:
                    kind, key, generation, what = self._jobs.get(timeout=0.5)
                except queue.Empty:
                    with self._lock:
                        if self._jobs.empty():
                            self._worker = None
                            return
                    continue
                try:
                    if conn is None:
                        conn = self._connect()
                        conn.execute("PRAGMA busy_timeout = 100")  # never wait long for a writer
                    if isinstance(what, Head):
                        if int(conn.execute(_CHANGES_AFTER, (generation,)).fetchone()[0]):
                            continue  # written to since: not worth ranking (task_done runs in finally)
                        what.best()  # ranked before the write lock is taken
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        if floor(conn) <= generation:
                            self._save(conn, kind, key, generation, what)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                except sqlite3.Error as e:  # busy, read-only, gone: the next reader reads FTS5 again
                    log.debug("could not save the postings of %r: %s", key, e)
                finally:
                    self._jobs.task_done()
        finally:
            if conn is not None:
                conn.close()

    def close(self) -> None:
        self.delta.close()
