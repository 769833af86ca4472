"""The dense side's change log and its pointer to the HNSW file (see ``sqlite_vectors``): the log's schema
(its table and the triggers that fill it in the writes' own transactions), the queries over it, and the
``vectors`` meta row, the file, generation and count the store records for its HNSW file.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3

KIND = "usearch-hnsw-i8"

LOG_TABLE = "CREATE TABLE IF NOT EXISTS vector_changes (rowid INTEGER PRIMARY KEY, generation INTEGER NOT NULL)"
LOG_INDEX = "CREATE INDEX IF NOT EXISTS vector_changes_generation ON vector_changes(generation)"
_NEXT = "coalesce((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0) + 1"
# an upsert, not INSERT OR REPLACE: the conflict clause of the statement firing a trigger overrides the
# trigger's own OR REPLACE, and the chunks upsert is such a statement
_LOG = ("INSERT INTO vector_changes(rowid, generation) VALUES ({row}.rowid, " + _NEXT + ") "
        "ON CONFLICT(rowid) DO UPDATE SET generation = excluded.generation;")
LOG_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS chunks_vi AFTER INSERT ON chunks BEGIN {_LOG.format(row='new')} END",
    f"CREATE TRIGGER IF NOT EXISTS chunks_vd AFTER DELETE ON chunks BEGIN {_LOG.format(row='old')} END",
    "CREATE TRIGGER IF NOT EXISTS chunks_vu AFTER UPDATE OF embedding ON chunks "
    f"WHEN old.embedding IS NOT new.embedding BEGIN {_LOG.format(row='new')} END",
)
#: the statements that add the change log to a store (new, or of schema 2)
SCHEMA = (LOG_TABLE, LOG_INDEX, *LOG_TRIGGERS)
#: the rows logged after a generation, with their current vectors (NULL: deleted)
CHANGES = ("SELECT v.rowid, c.embedding FROM vector_changes AS v LEFT JOIN chunks AS c ON c.rowid = v.rowid "
           "WHERE v.generation > ? ORDER BY v.rowid")
#: how many rows are logged after a generation
PENDING = "SELECT count(*) FROM vector_changes WHERE generation > ?"
#: a merge's batches (keyset pages by rowid): every vector up to a rowid, or those logged in (base, merged]
ALL_AFTER = "SELECT rowid, embedding FROM chunks WHERE rowid <= ? AND rowid > ? ORDER BY rowid LIMIT ?"
LOGGED_AFTER = ("SELECT v.rowid, c.embedding FROM vector_changes AS v LEFT JOIN chunks AS c ON c.rowid = v.rowid "
                "WHERE v.generation > ? AND v.generation <= ? AND v.rowid > ? ORDER BY v.rowid LIMIT ?")
_STATE = "SELECT key, value FROM meta WHERE key IN ('generation', 'vectors')"


@dataclasses.dataclass(frozen=True)
class Pointer:
    """The ``vectors`` meta row: the HNSW file (a name beside the database), the generation it holds and its
    vector count."""

    file: str
    generation: int
    count: int

    @classmethod
    def parse(cls, text: str | None) -> Pointer | None:
        if not text:
            return None
        try:
            d = json.loads(text)
            return cls(file=str(d["file"]), generation=int(d["generation"]), count=int(d["count"]))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as no index, rebuilt by the next merge

    def dump(self) -> str:
        return json.dumps({"file": self.file, "generation": self.generation, "count": self.count, "kind": KIND})


def read_state(conn: sqlite3.Connection) -> tuple[int, Pointer | None]:
    """(generation, vectors pointer) in the caller's snapshot."""
    values = dict(conn.execute(_STATE).fetchall())
    return int(values.get("generation", 0) or 0), Pointer.parse(values.get("vectors"))


