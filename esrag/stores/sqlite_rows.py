"""Rows in and out of the SQLite store's ``chunks`` table: a write's upserts, deletes by a column, hits by
rowid.

A write upserts its chunks ``ROWS_PER_STATEMENT`` to a statement (``sqlite_sql.upsert_sql``): FTS5 writes
its pending terms out as a segment when each statement that changed it ends, so a statement per row cost a
segment per row and the merges after them. A statement SQLite refuses (one bad row) is rolled back alone and
its rows are upserted one by one, so only the refused chunks are reported and the others are written.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from esrag.stores import sqlite_sql as sql
from esrag.types import ScoredChunk, WriteError

#: what a chunk that cannot be stored raises (it is reported in the write's result; the others are written)
ROW_ERRORS = (ValueError, TypeError, AttributeError, OverflowError, sqlite3.IntegrityError,
              sqlite3.InterfaceError, sqlite3.ProgrammingError)


def write_error(chunk: Any, e: Exception) -> WriteError:
    return WriteError(chunk_id=str(getattr(chunk, "id", "")), source=str(getattr(chunk, "source", "")),
                      reason=f"{type(e).__name__}: {e}")


def upsert(conn: sqlite3.Connection, batch: Sequence[tuple[Any, tuple[Any, ...]]], errors: list[WriteError]) -> int:
    """Upsert the ``(chunk, row)`` batch in one statement; if SQLite refuses it, row by row, each refused
    chunk added to ``errors``. Returns the rows written."""
    if len(batch) > 1:
        with contextlib.suppress(*ROW_ERRORS):
            conn.execute(sql.upsert_sql(len(batch)), [v for _, row in batch for v in row])
            return len(batch)
    written = 0
    for chunk, row in batch:
        try:
            conn.execute(sql.UPSERT, row)
            written += 1
        except ROW_ERRORS as e:
            errors.append(write_error(chunk, e))
    return written


def delete_in(conn: sqlite3.Connection, column: str, values: Sequence[str]) -> int:
    """Delete the rows whose ``column`` is one of ``values``; returns how many."""
    deleted = 0
    for part in sql.batches(list(dict.fromkeys(values))):
        cur = conn.execute(f"DELETE FROM chunks WHERE {column} IN ({', '.join('?' * len(part))})", part)
        deleted += cur.rowcount
    return deleted


def hits(conn: sqlite3.Connection, ranked: list[tuple[int, float]]) -> list[ScoredChunk]:
    """The rows of ranked ``(rowid, score)`` pairs, in order (rows deleted meanwhile are skipped)."""
    found: dict[int, Sequence[Any]] = {}
    for part in sql.batches(ranked):
        for r in conn.execute(sql.fetch_sql(len(part)), [rid for rid, _ in part]):
            found[int(r[0])] = r
    return [sql.scored(found[rid], score) for rid, score in ranked if rid in found]
