"""The embedded default store: one SQLite file per index, BM25 with FTS5, exact cosine kNN with numpy.

File: ``<sqlite_dir>/<index>.db`` (default ``./.esrag/esrag.db``), plus SQLite's ``-wal``/``-shm`` files.

Schema: ``meta`` (key/value: the esrag marker, the schema version and the IndexMeta JSON); ``chunks`` (one
row per chunk, the vector as a float32 BLOB); ``chunks_fts``, an FTS5 index over ``chunks.title`` and
``chunks.text`` with external content (rowid = ``chunks.rowid``), kept in sync by triggers, so that the
FTS rows change in the same transaction as the chunk rows.

BM25: FTS5 ``bm25()`` with weight 1.0 on title and text, negated so that higher is better. The
``unicode61`` tokenizer with ``remove_diacritics 0`` is close to Elasticsearch's standard analyzer: splits on
anything that is not a letter, digit or mark, lowercases, keeps diacritics. Query text never reaches FTS5's
query syntax: it is split the same way and each term is quoted and ORed (like ES ``match``). FTS5 itself
scores row by row, too slowly for words found in much of the index, so queries are answered by
``sqlite_bm25.Bm25Index``: FTS5's formula over FTS5's postings, in numpy, cached per term (same hits, same
scores; the plain FTS5 query remains for terms it cannot read the same way). Note FTS5's idf,
``log((N - n + 0.5) / (n + 0.5))`` floored at 1e-6, differs from Lucene's ``log(1 + ...)`` for terms in
more than half the chunks.

Dense: exact cosine kNN over an in-memory (n, dims) float32 matrix of L2-normalised vectors, loaded from the
file on the first dense search and reloaded after any write, by this process or another one (detected with
``PRAGMA data_version``). Scores follow ES cosine: ``(1 + cos) / 2``. Filters become a boolean mask before
the top-k cut (a covering index makes the filter scan cheap). Only the rows of the hits are read back from
SQL, so a query process holds about one copy of the raw vectors.

Concurrency: one connection per store object, opened with ``check_same_thread=False`` and guarded by a
re-entrant lock, so the ingest writer thread and reader threads share one page cache and one matrix (SQLite
serialises a connection's calls anyway). Other processes may use the same file: WAL lets readers run during
a write and a 30 s busy timeout makes writers queue.

Durability: WAL with ``synchronous=NORMAL``. Every transaction is atomic and survives a crash of the process
(SIGKILL included); an OS crash or power loss can lose the last commits, never consistency. Ingest is
incremental, so a lost commit is redone by the next run; ``FULL`` would fsync every batch for nothing.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sqlite3
import threading
import time
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from esrag.config import Settings
from esrag.errors import ConfigError, CorruptStoreError, IndexNotFoundError, ModelMismatchError, StoreError
from esrag.stores.sqlite_bm25 import Bm25Index, positions_of
from esrag.types import (
    TOP_LEVEL_FILTER_FIELDS,
    ChunkRef,
    Counts,
    EmbeddedChunk,
    Filters,
    IndexMeta,
    ScoredChunk,
    SearchRequest,
    SearchResponse,
    WriteError,
    WriteResult,
    canonical_json,
)

SCHEMA_VERSION = 1
MARKER = "esrag-sqlite-store"
#: chunks per write transaction
WRITE_BATCH = 500
#: values per ``IN (...)`` list
IN_BATCH = 500
#: title, text (Bm25Index weighs both 1.0, as here)
BM25_WEIGHTS = (1.0, 1.0)
BUSY_TIMEOUT_S = 30.0

_FTS_ADD = "INSERT INTO chunks_fts(rowid, title, text) VALUES (new.rowid, new.title, new.text);"
_FTS_DEL = ("INSERT INTO chunks_fts(chunks_fts, rowid, title, text) "
            "VALUES ('delete', old.rowid, old.title, old.text);")
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Small columns first and text last: filters and vector loads then never touch the overflow pages of
    # a long text.
    """CREATE TABLE chunks (
        rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, source TEXT NOT NULL,
        title TEXT NOT NULL, chunk_index INTEGER NOT NULL, chunk_count INTEGER NOT NULL,
        start INTEGER NOT NULL, "end" INTEGER NOT NULL, doc_sha TEXT NOT NULL, chunk_sha TEXT NOT NULL,
        ingested_at TEXT NOT NULL, metadata TEXT NOT NULL, embedding BLOB NOT NULL, text TEXT NOT NULL)""",
    # doc_id lookups, and a covering index for filters: a filter scan reads this, not the chunk rows
    "CREATE INDEX chunks_filter ON chunks(doc_id, source, title, metadata)",
    "CREATE VIRTUAL TABLE chunks_fts USING fts5(title, text, content='chunks', content_rowid='rowid', "
    "tokenize='unicode61 remove_diacritics 0')",
    f"CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN {_FTS_ADD} END",
    f"CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN {_FTS_DEL} END",
    "CREATE TRIGGER chunks_au AFTER UPDATE OF title, text ON chunks "
    f"WHEN old.title IS NOT new.title OR old.text IS NOT new.text BEGIN {_FTS_DEL} {_FTS_ADD} END",
)
_COLUMNS = ("id", "doc_id", "source", "title", "chunk_index", "chunk_count", "start", "end", "doc_sha",
            "chunk_sha", "ingested_at", "metadata", "embedding", "text")
_QUOTED = [f'"{c}"' for c in _COLUMNS]
_UPSERT = (f"INSERT INTO chunks({', '.join(_QUOTED)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
           f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _QUOTED[1:])}")
_HIT_COLUMNS = "c.rowid, c.id, c.doc_id, c.source, c.title, c.text, c.chunk_index, c.metadata"
_LOAD_SQL = "SELECT rowid, embedding FROM chunks ORDER BY rowid"
#: a metadata value as the string ES's ``flattened`` type would index: booleans as true/false
_META_VALUE = ("(CASE json_type(c.metadata, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
               "ELSE CAST(json_extract(c.metadata, ?) AS TEXT) END)")


# --- pure SQL building (also what explain_request shows) ------------------------------------------------

@functools.cache
def _token_re() -> re.Pattern[str]:
    """Tokens as ``unicode61`` sees them: runs of letters, digits, marks (M*) and private-use characters
    (Co); everything else separates. Marks and Co are listed from the BMP, built once (~20 ms)."""
    extra, start, prev = [], -2, -2
    for cp in [*(cp for cp in range(0x10000) if (c := unicodedata.category(chr(cp)))[0] == "M" or c == "Co"), -9]:
        if cp != prev + 1:
            if start >= 0:
                extra.append(re.escape(chr(start)) + ("-" + re.escape(chr(prev)) if prev > start else ""))
            start = cp
        prev = cp
    return re.compile(rf"(?:[^\W_]|[{''.join(extra)}])+")


def query_terms(text: str) -> list[str]:
    """Split query text into terms the way ``unicode61`` splits indexed text. Case is left to FTS5, which
    folds it exactly as it did when indexing."""
    return _token_re().findall(text)


def match_expression(terms: str | Sequence[str]) -> str | None:
    """A safe FTS5 MATCH expression for free text (or its terms): each term quoted, ORed. None when there
    is no term (an empty or all-punctuation query matches nothing)."""
    terms = query_terms(terms) if isinstance(terms, str) else terms
    return " OR ".join(f'"{t}"' for t in terms) if terms else None


def filter_sql(filters: Filters) -> tuple[str, list[Any]]:
    """WHERE condition over ``chunks AS c`` for ``filters`` (keys ANDed, values ORed) and its parameters.

    ``doc_id``/``source``/``title`` compare the column; any other key compares ``metadata.<key>`` as a
    string, like ES ``flattened`` (so 3 matches "3" and True matches "true"). An empty value tuple matches
    nothing. Empty filters give ``("", [])``.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for key in sorted(filters):
        values = [str(v) for v in filters[key]]
        marks = ", ".join("?" * len(values))
        if key in TOP_LEVEL_FILTER_FIELDS:
            clauses.append(f"c.{key} IN ({marks})")
        else:
            if '"' in key or not key:
                raise ConfigError(f"invalid metadata filter key {key!r}")
            # instr(): a cheap necessary condition (the value's JSON text occurs) before parsing the JSON
            needles = [json.dumps(v, ensure_ascii=False)[1:-1] for v in values]
            clauses.append(f"({' OR '.join(['instr(c.metadata, ?)'] * len(values)) or '0'}) "
                           f"AND {_META_VALUE} IN ({marks})")
            params += [*needles, f'$."{key}"', f'$."{key}"']
        params += values
    return " AND ".join(clauses), params


def sparse_sql(text: str | Sequence[str], filters: Filters, limit: int) -> tuple[str, list[Any]] | None:
    """The BM25 query for free text (or its terms): top ``limit`` rowids by bm25 (filters applied before the
    cut), then their rows. None when there is no term."""
    match = match_expression(text)
    if match is None:
        return None
    where, fparams = filter_sql(filters)
    # The filter set is computed once; "+" keeps FTS5 from being re-run once per filtered rowid.
    restrict = f" AND +chunks_fts.rowid IN (SELECT c.rowid FROM chunks AS c WHERE {where})" if where else ""
    weights = ", ".join(str(w) for w in BM25_WEIGHTS)
    inner = (f"SELECT chunks_fts.rowid AS rid, bm25(chunks_fts, {weights}) AS score FROM chunks_fts "
             f"WHERE chunks_fts MATCH ?{restrict} ORDER BY score, rid LIMIT ?")
    sql = (f"SELECT {_HIT_COLUMNS}, -t.score FROM ({inner}) AS t JOIN chunks AS c ON c.rowid = t.rid "
           "ORDER BY t.score, t.rid")
    return sql, [match, *fparams, limit]


def dense_filter_sql(filters: Filters) -> tuple[str, list[Any]] | None:
    """The rowids the kNN side may return under ``filters``; None when unfiltered."""
    where, params = filter_sql(filters)
    if not where:
        return None
    return f"SELECT c.rowid FROM chunks AS c WHERE {where}", params


def fetch_sql(n: int) -> str:
    """Rows of ``n`` hits by rowid."""
    return f"SELECT {_HIT_COLUMNS} FROM chunks AS c WHERE c.rowid IN ({', '.join('?' * n)})"


def _batches(values: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _scored(row: Sequence[Any], score: float) -> ScoredChunk:
    return ScoredChunk(id=row[1], score=score, doc_id=row[2], source=row[3], title=row[4], text=row[5],
                       chunk_index=int(row[6]), metadata=json.loads(row[7]))


def _vector(embedding: Any, dims: int) -> np.ndarray:
    """Validate one embedding and return it as float32 (dims,). Raises ValueError with the reason."""
    v = np.asarray(embedding)
    if v.dtype.kind not in "fiu":
        raise ValueError(f"embedding has dtype {v.dtype}, expected float32")
    v = v.astype(np.float32, copy=False)
    if v.ndim != 1 or v.shape[0] != dims:
        raise ValueError(f"embedding has shape {v.shape}, the index expects ({dims},)")
    if not np.isfinite(v).all():
        raise ValueError("embedding contains NaN or infinity")
    if not v.any():
        raise ValueError("embedding is all zeros (cosine similarity is undefined)")
    return v


class SQLiteStore:
    """The Store protocol over one local SQLite file. Construction does no I/O; the first operation opens
    the file (and only ``ensure_index`` creates it)."""

    name = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.sqlite_dir).expanduser() / f"{settings.index}.db"
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._meta: IndexMeta | None = None
        # dense side: normalised vectors, their chunk rowids (ascending) and the data_version loaded
        self._matrix: np.ndarray | None = None
        self._rowids: np.ndarray | None = None
        self._version: int | None = None
        # BM25 side: FTS5's postings as numpy, for the data_version in _bm25_version
        self._bm25: Bm25Index | None = None
        self._bm25_version: int | None = None

    # --- connection and errors -------------------------------------------------------------------------

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Turn sqlite3 errors into StoreErrors that name the file."""
        try:
            yield
        except sqlite3.Error as e:
            code = getattr(e, "sqlite_errorcode", 0) & 0xFF
            if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
                raise CorruptStoreError(
                    f"{self.path} is not a valid esrag store ({e}); move it away, or delete it and run "
                    f"`esrag ingest` again") from e
            if code == sqlite3.SQLITE_READONLY:
                raise StoreError(f"cannot {action} {self.path}: the file or its directory is read-only "
                                 f"({e})") from e
            if code == sqlite3.SQLITE_CANTOPEN:
                raise StoreError(f"cannot {action} {self.path}: cannot open the file or create its -wal/-shm "
                                 f"files; check that the directory exists and is writable ({e})") from e
            if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                raise StoreError(f"cannot {action} {self.path}: locked by another process for more than "
                                 f"{BUSY_TIMEOUT_S:.0f} s ({e})") from e
            raise StoreError(f"cannot {action} {self.path}: {e}") from e

    def _open(self, create: bool) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _inspect(self, conn: sqlite3.Connection) -> IndexMeta | None:
        """The IndexMeta of an open file; None for an empty database (a new file, or one whose creation was
        interrupted). Raises CorruptStoreError for a database that is not an esrag store."""
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return None
        values = dict(conn.execute("SELECT key, value FROM meta")) if "meta" in tables else {}
        if values.get("marker") != MARKER:
            raise CorruptStoreError(
                f"{self.path} is an SQLite database but not an esrag store (no esrag marker); choose another "
                f"--sqlite-dir or --index, or move the file away")
        try:
            version = int(values["schema_version"])
            meta = IndexMeta.from_dict(json.loads(values["index_meta"]))
        except (KeyError, ValueError, TypeError) as e:
            raise CorruptStoreError(f"{self.path}: unreadable esrag meta ({e!r})") from e
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer esrag (store schema {version}; this "
                             f"version reads up to {SCHEMA_VERSION}): upgrade esrag")
        if not {"chunks", "chunks_fts"} <= tables:
            raise CorruptStoreError(f"{self.path}: esrag store is missing its chunks tables")
        return meta

    def _connection(self) -> sqlite3.Connection:
        """The connection to an existing store; IndexNotFoundError if there is none. Hold the lock."""
        if self._conn is not None:
            return self._conn
        missing = IndexNotFoundError(f"no esrag index at {self.path}; run `esrag ingest` to create it")
        if not self.path.is_file():
            raise missing
        with self._guard("open"):
            conn = self._open(create=False)
            try:
                meta = self._inspect(conn)
            except BaseException:
                conn.close()
                raise
        if meta is None:
            conn.close()
            raise missing
        self._conn, self._meta = conn, meta
        return conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (rolled back on any exception); drops the cached matrix after."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            self._matrix = self._rowids = self._bm25 = None

    # --- Store protocol --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"store": self.name, "location": str(self.path), "index": self.settings.index}

    def exists(self) -> bool:
        """Whether the file holds an esrag index. A foreign or corrupt file raises CorruptStoreError."""
        with self._lock:
            try:
                self._connection()
            except IndexNotFoundError:
                return False
            return True

    def ensure_index(self, meta: IndexMeta) -> bool:
        """Create the file and schema and record ``meta`` (True), or check the existing index was built
        with the same model and dims (False; else ModelMismatchError). Only this method creates the
        directory and the file. An interrupted creation leaves an empty database, which the next call
        completes."""
        with self._lock:
            if self._conn is None:
                conn = self._open_for_create()
                try:
                    with self._guard("create the index in"):
                        existing = self._inspect(conn)  # before touching it: it may be someone else's file
                        if existing is None:
                            conn.execute("PRAGMA journal_mode=WAL")
                            with self._transaction(conn):
                                existing = self._inspect(conn)  # another process may have just made it
                                if existing is None:
                                    self._create_schema(conn, meta)
                except BaseException:
                    conn.close()
                    raise
                self._conn, self._meta = conn, existing or meta
                if existing is None:
                    return True
            old = self._meta
            assert old is not None
            if old.model != meta.model or old.dims != meta.dims:
                raise ModelMismatchError(
                    f"index at {self.path} was built with model {old.model!r} ({old.dims} dims), but the "
                    f"configured model is {meta.model!r} ({meta.dims} dims); use --model {old.model!r} or "
                    f"ingest into a new index (--index)")
            return False

    @staticmethod
    def _create_schema(conn: sqlite3.Connection, meta: IndexMeta) -> None:
        for stmt in _SCHEMA:
            conn.execute(stmt)
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
            ("marker", MARKER), ("schema_version", str(SCHEMA_VERSION)),
            ("index_meta", canonical_json(meta.to_dict())), ("created_at", datetime.now(UTC).isoformat())])

    def _open_for_create(self) -> sqlite3.Connection:
        """Open the file for ensure_index, creating the directory and the file when missing."""
        if self.path.is_file():
            with self._guard("open"):
                return self._open(create=False)
        directory = self.path.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the store directory {directory} for {self.path}: "
                             f"{e.strerror or e}") from e
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StoreError(f"cannot create {self.path}: directory {directory} is not writable")
        with self._guard("create"):
            return self._open(create=True)

    def read_meta(self) -> IndexMeta | None:
        with self._lock:
            try:
                self._connection()
            except IndexNotFoundError:
                return None
            return self._meta

    def write(self, chunks: Iterable[EmbeddedChunk]) -> WriteResult:
        """Upsert chunks, one transaction per WRITE_BATCH chunks. A chunk that cannot be stored (wrong dims
        or dtype, NaN, bad field) is reported in the result, not raised; the rest are written."""
        written = 0
        errors: list[WriteError] = []
        batch: list[EmbeddedChunk] = []
        for item in chunks:
            batch.append(item)
            if len(batch) >= WRITE_BATCH:
                written += self._write_batch(batch, errors)
                batch = []
        if batch:
            written += self._write_batch(batch, errors)
        return WriteResult(written=written, errors=tuple(errors))

    def _write_batch(self, batch: Sequence[EmbeddedChunk], errors: list[WriteError]) -> int:
        with self._lock:
            conn = self._connection()
            assert self._meta is not None
            dims = self._meta.dims
            now = datetime.now(UTC).isoformat()
            written = 0
            with self._guard("write to"), self._transaction(conn):
                for item in batch:
                    chunk = getattr(item, "chunk", None)
                    try:
                        c = item.chunk
                        row = (str(c.id), str(c.doc_id), str(c.source), str(c.title), int(c.chunk_index),
                               int(c.chunk_count), int(c.start), int(c.end), str(c.doc_sha), str(c.chunk_sha),
                               now, canonical_json(dict(c.metadata)), _vector(item.embedding, dims).tobytes(),
                               str(c.text))
                        conn.execute(_UPSERT, row)
                        written += 1
                    except (ValueError, TypeError, AttributeError, OverflowError, sqlite3.IntegrityError,
                            sqlite3.InterfaceError, sqlite3.ProgrammingError) as e:
                        # SQLite rolls back just the failed statement; the transaction goes on.
                        errors.append(WriteError(chunk_id=str(getattr(chunk, "id", "")),
                                                 source=str(getattr(chunk, "source", "")),
                                                 reason=f"{type(e).__name__}: {e}"))
            return written

    def list_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkRef]]:
        out: dict[str, list[ChunkRef]] = {}
        with self._lock, self._guard("read"):
            conn = self._connection()
            for part in _batches(list(dict.fromkeys(doc_ids))):
                rows = conn.execute(
                    "SELECT id, doc_id, doc_sha, chunk_sha, chunk_count FROM chunks "
                    f"WHERE doc_id IN ({', '.join('?' * len(part))}) ORDER BY doc_id, chunk_index, id", part)
                for r in rows:
                    out.setdefault(r[1], []).append(ChunkRef(id=r[0], doc_id=r[1], doc_sha=r[2],
                                                             chunk_sha=r[3], chunk_count=int(r[4])))
        return out

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._lock, self._guard("read"):
            conn = self._connection()
            for part in _batches(list(dict.fromkeys(ids))):
                rows = conn.execute(
                    f"SELECT id, embedding FROM chunks WHERE id IN ({', '.join('?' * len(part))})", part)
                for cid, blob in rows:
                    out[cid] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def delete_chunks(self, ids: Sequence[str]) -> int:
        return self._delete("id", ids)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return self._delete("doc_id", doc_ids)

    def _delete(self, column: str, values: Sequence[str]) -> int:
        """Delete rows whose ``column`` is in ``values``, all in one transaction; returns the rows deleted."""
        deleted = 0
        with self._lock:
            conn = self._connection()
            unique = list(dict.fromkeys(values))
            if not unique:
                return 0
            with self._guard("delete from"), self._transaction(conn):
                for part in _batches(unique):
                    cur = conn.execute(f"DELETE FROM chunks WHERE {column} IN ({', '.join('?' * len(part))})",
                                       part)
                    deleted += cur.rowcount
        return deleted

    def search(self, request: SearchRequest) -> SearchResponse:
        """Both sides in one read snapshot, each returning up to ``request.candidates`` hits, best first."""
        t0 = time.perf_counter()
        limit = max(0, int(request.candidates))
        sparse: list[ScoredChunk] = []
        dense: list[ScoredChunk] = []
        with self._lock, self._guard("search"):
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                wanted: np.ndarray | None = None
                if limit and (filtered := dense_filter_sql(request.filters)) is not None:
                    wanted = np.sort(np.fromiter((r for (r,) in conn.execute(*filtered)), dtype=np.int64))
                if request.text is not None and limit:
                    sparse = self._sparse(conn, request.text, request.filters, wanted, limit)
                if request.vector is not None and limit:
                    dense = self._hits(conn, self._knn(conn, request.vector, wanted, limit))
            finally:
                conn.execute("COMMIT")
        return SearchResponse(sparse=sparse, dense=dense, took_ms=(time.perf_counter() - t0) * 1e3)

    def _sparse(self, conn: sqlite3.Connection, text: str, filters: Filters, wanted: np.ndarray | None,
                limit: int) -> list[ScoredChunk]:
        """BM25 top ``limit`` (``wanted``: the filters' rowids, sorted), by Bm25Index, else by FTS5."""
        terms = query_terms(text)
        if not terms:
            return []
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if self._bm25 is None or version != self._bm25_version:
            self._bm25 = None  # free the old postings first
            self._bm25, self._bm25_version = Bm25Index(conn), version
        ranked = self._bm25.top(conn, terms, limit, wanted)
        if ranked is not None:
            return self._hits(conn, ranked)
        built = sparse_sql(terms, filters, limit)
        assert built is not None
        return [_scored(r, float(r[8])) for r in conn.execute(*built)]

    def _knn(self, conn: sqlite3.Connection, vector: np.ndarray, wanted: np.ndarray | None, limit: int
             ) -> list[tuple[int, float]]:
        """Exact kNN: ``(rowid, (1 + cos) / 2)`` best first, ties by rowid; only ``wanted`` rowids (sorted)
        when given.

        ``einsum`` rather than ``@``: numpy's own loop is single-threaded and on this workload about twice
        as fast as BLAS sgemv, whose threads also contend with the caller's (measured: 8 vs 15 ms for
        126k x 384)."""
        matrix, rowids = self._vectors(conn)
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        if q.shape[0] != matrix.shape[1]:
            raise ModelMismatchError(f"query vector has {q.shape[0]} dims but the index at {self.path} "
                                     f"holds {matrix.shape[1]}-dim vectors")
        norm = float(np.linalg.norm(q))
        if not np.isfinite(norm) or norm == 0.0:
            return []
        q = q / norm
        positions: np.ndarray | None = None
        if wanted is None:
            cos = np.einsum("ij,j->i", matrix, q)
        else:
            positions = positions_of(rowids, wanted)
            # a selective filter scores only its rows; a broad one scores all and picks (no big copy)
            cos = (np.einsum("ij,j->i", matrix[positions], q) if 4 * len(positions) < len(rowids)
                   else np.einsum("ij,j->i", matrix, q)[positions])
        k = min(limit, len(cos))
        if k == 0:
            return []
        top = np.argpartition(-cos, k - 1)[:k] if k < len(cos) else np.arange(len(cos))
        top_rows = rowids[top] if positions is None else rowids[positions[top]]
        order = np.lexsort((top_rows, -cos[top]))
        return [(int(top_rows[i]), min(1.0, max(0.0, (1.0 + float(cos[top[i]])) / 2.0))) for i in order]

    @staticmethod
    def _hits(conn: sqlite3.Connection, ranked: list[tuple[int, float]]) -> list[ScoredChunk]:
        """The rows of ranked ``(rowid, score)`` pairs, in order (rows deleted meanwhile are skipped)."""
        rows: dict[int, Sequence[Any]] = {}
        for part in _batches(ranked):
            for r in conn.execute(fetch_sql(len(part)), [rid for rid, _ in part]):
                rows[int(r[0])] = r
        return [_scored(rows[rid], score) for rid, score in ranked if rid in rows]

    def _vectors(self, conn: sqlite3.Connection) -> tuple[np.ndarray, np.ndarray]:
        """The normalised (n, dims) matrix and its rowids, reloaded when the file changed since the last
        load (own writes drop the cache; other processes' commits change ``PRAGMA data_version``)."""
        version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        if self._matrix is not None and self._rowids is not None and version == self._version:
            return self._matrix, self._rowids
        self._matrix = self._rowids = None  # free the old copy before loading the new one
        assert self._meta is not None
        dims = self._meta.dims
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")  # one snapshot for the count and the rows
        try:
            n = int(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])
            matrix = np.empty((n, dims), dtype=np.float32)
            rowids = np.empty(n, dtype=np.int64)
            i = 0
            for rid, blob in conn.execute(_LOAD_SQL):
                if len(blob) != 4 * dims:
                    raise CorruptStoreError(f"{self.path}: chunk rowid {rid} has a {len(blob)}-byte vector, "
                                            f"expected {4 * dims}")
                matrix[i] = np.frombuffer(blob, dtype=np.float32)
                rowids[i] = rid
                i += 1
        finally:
            if own:
                conn.execute("COMMIT")
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        norms[norms == 0.0] = 1.0
        np.divide(matrix, norms[:, None], out=matrix)
        self._matrix, self._rowids, self._version = matrix, rowids, version
        return matrix, rowids

    def explain_request(self, request: SearchRequest) -> dict[str, Any]:
        """The SQL ``search`` runs, with parameters; the kNN side is numpy, described with its filter SQL.
        Pure: no I/O."""
        limit = max(0, int(request.candidates))
        out: dict[str, Any] = {"store": self.name, "database": str(self.path), "sparse": None, "dense": None}
        if request.text is not None:
            built = sparse_sql(request.text, request.filters, limit)
            out["sparse"] = ({"sql": built[0], "params": built[1],
                              "note": "search computes the same hits and scores with numpy from FTS5's postings "
                                      "(esrag.stores.sqlite_bm25); this is the equivalent FTS5 query"}
                             if built else {"sql": None, "note": "no terms in the query text: no BM25 hits"})
        if request.vector is not None:
            filtered = dense_filter_sql(request.filters)
            out["dense"] = {
                "method": "exact cosine kNN (numpy) over the L2-normalised float32 matrix loaded with "
                          f"`{_LOAD_SQL}`; score = (1 + cos) / 2; filters mask rows before the top-k cut",
                "vector": f"<{int(np.asarray(request.vector).size)} floats>",
                "k": limit,
                "filter_sql": filtered[0] if filtered else None,
                "filter_params": filtered[1] if filtered else [],
                "fetch_sql": fetch_sql(limit) if limit else None,
            }
        return out

    def count(self) -> Counts:
        with self._lock, self._guard("read"):
            conn = self._connection()
            docs, chunks = conn.execute("SELECT count(DISTINCT doc_id), count(*) FROM chunks").fetchone()
        return Counts(documents=int(docs), chunks=int(chunks))

    def drop(self) -> bool:
        """Delete the file and its -wal/-shm. Refuses (CorruptStoreError) to delete a file that is not an
        esrag store, so a wrong --sqlite-dir cannot destroy someone else's database."""
        with self._lock:
            existed = self.path.exists()
            if existed:
                try:
                    self._connection()
                except IndexNotFoundError:
                    existed = False  # an empty database: nothing was indexed
            self.close()
            for suffix in ("", "-wal", "-shm", "-journal"):
                try:
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot delete {self.path}{suffix}: {e.strerror or e}") from e
            return existed

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            self._meta = self._matrix = self._rowids = self._bm25 = None
            self._version = None
            if conn is not None:
                conn.close()
