"""The embedded default store: one SQLite file per index, BM25 with FTS5, kNN exact or with an HNSW index.

File: ``<sqlite_dir>/<index>.db`` (default ``./.esrag/esrag.db``), plus SQLite's ``-wal``/``-shm`` files.

Schema: ``meta`` (key/value: the esrag marker, the schema version and the IndexMeta JSON); ``chunks`` (one
row per chunk, the vector as a float32 BLOB); ``chunks_fts``, an FTS5 index over ``chunks.title`` and
``chunks.text`` with external content (rowid = ``chunks.rowid``), kept in sync by triggers, so that the
FTS rows change in the same transaction as the chunk rows; the change logs ``vector_changes`` and
``bm25_changes`` and the saved ``bm25_postings`` (sqlite_vectors, sqlite_postings).

BM25: FTS5 ``bm25()`` with weight 1.0 on title and text, negated so that higher is better. The
``unicode61`` tokenizer with ``remove_diacritics 0`` is close to Elasticsearch's standard analyzer: splits on
anything that is not a letter, digit or mark, lowercases, keeps diacritics. Query text never reaches FTS5's
query syntax: it is split the same way and each term is quoted and ORed (like ES ``match``). FTS5 itself
scores row by row, too slowly for words found in much of the index, so queries are answered by
``sqlite_bm25.Bm25Index``: FTS5's formula over FTS5's postings, in numpy, cached per term (same hits, same
scores; the plain FTS5 query remains for terms it cannot read the same way), common terms read from their
saved form (``sqlite_postings``). FTS5's idf differs from Lucene's for terms in more than half the chunks.

Dense: ``sqlite_vectors.DenseIndex``: exact cosine kNN over an in-memory matrix below
``ann_min_chunks`` chunks (or with ``exact_knn``), a memory-mapped int8 HNSW index with float re-scoring
above, both kept current by a change log that triggers write in the same transaction as the chunks (a
write never reloads the vectors). Scores follow ES cosine: ``(1 + cos) / 2``.

Concurrency: safe to share between threads. Each thread reads through a connection of its own (WAL lets
them all read while one writes, so a search never waits for an ingest and never sees "database is
locked"), and one write connection serialises writers under a lock. The dense index and the BM25 postings
are cached once per store object and shared by every thread; they are keyed by a ``generation`` counter in
the ``meta`` table that every write transaction increments, so a commit by any connection or process
reaches them (the postings are reloaded, the dense side applies the logged changes). Other processes may
use the same file: a 30 s busy timeout makes writers queue, and a write (or refresh) after another process
deleted the file fails loudly instead of writing to a lost file.

Durability: WAL with ``synchronous=NORMAL``: every transaction is atomic and survives a process crash; an OS
crash can lose the last commits (redone by the next incremental ingest), never consistency.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from esrag.config import Settings
from esrag.errors import CorruptStoreError, IndexNotFoundError, ModelMismatchError, StoreError
from esrag.stores import sqlite_files, sqlite_rows
from esrag.stores import sqlite_postings as postings
from esrag.stores import sqlite_sql as sql
from esrag.stores import sqlite_vector_log as vector_log
from esrag.stores.sqlite_bm25 import Bm25Index, attach_vocab
from esrag.stores.sqlite_sql import bm25_sql, match_expression, query_terms
from esrag.stores.sqlite_vector_log import read_state
from esrag.stores.sqlite_vectors import DenseIndex
from esrag.types import (
    ChunkRef,
    Counts,
    DocRef,
    EmbeddedChunk,
    IndexMeta,
    ScoredChunk,
    SearchRequest,
    SearchResponse,
    WriteError,
    WriteResult,
    canonical_json,
)

__all__ = ["MARKER", "SCHEMA_VERSION", "SQLiteStore", "match_expression", "query_terms", "bm25_sql"]

SCHEMA_VERSION = 6  # 2: section; 3: vector change log (sqlite_vectors); 4: context; 5: sqlite_postings; 6: heads
MARKER = "esrag-sqlite-store"


class SQLiteStore:
    """The Store protocol over one local SQLite file. Construction does no I/O; the first operation opens
    the file (and only ``ensure_index`` creates it). Thread-safe (see the module docstring)."""

    name = "sqlite"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.sqlite_dir).expanduser() / f"{settings.index}.db"
        self._write_lock = threading.RLock()  # the write connection and every write
        self._state = threading.RLock()  # _meta, _epoch, _readers
        self._cache_lock = threading.Lock()  # loading the shared matrix / postings
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._epoch = 0  # bumped by close(): thread-local connections of an older epoch are stale
        self._wconn: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (device, inode) of the file _wconn writes to
        self._meta: IndexMeta | None = None
        # shared caches, each tagged with the generation it was read at
        self._dense: DenseIndex | None = None
        self._bm25: tuple[int, Bm25Index] | None = None
        self._saved: postings.Saved | None = None  # the saved postings (sqlite_postings), per tokenizer

    # --- connection and errors -------------------------------------------------------------------------

    def _guard(self, action: str) -> contextlib.AbstractContextManager[None]:
        """Turn sqlite3 errors into StoreErrors that name the file (``sqlite_files.guard``)."""
        return sqlite_files.guard(self.path, action)

    def _open(self, create: bool) -> sqlite3.Connection:
        uri = f"{self.path.absolute().as_uri()}?mode={'rwc' if create else 'rw'}"
        conn = sqlite3.connect(uri, uri=True, timeout=sql.BUSY_TIMEOUT_S, isolation_level=None,
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
        if version < SCHEMA_VERSION:
            self._upgrade(conn)
        return meta

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        """An older schema -> SCHEMA_VERSION in one write transaction (another process may have done it
        already): the chunks written before schema 2 record section -1, which search treats as a chunk that
        stands for itself; schema 3 adds the vector change log (the current vectors are the base it starts
        from); schema 4 stores each chunk's context ('' for the chunks written before); schema 5 adds the
        saved postings and their change log, schema 6 the saved heads and the saved lists' format (all filled
        as searches read them)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            columns = {r[1] for r in conn.execute("PRAGMA table_info(chunks)")}
            if "section" not in columns:
                conn.execute(sql.ADD_SECTION)
            if "context" not in columns:
                conn.execute(sql.ADD_CONTEXT)
            for stmt in (*vector_log.SCHEMA, *postings.SCHEMA):
                conn.execute(stmt)
            postings.upgrade(conn)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _open_existing(self) -> sqlite3.Connection:
        """A new connection to an existing store (its meta read on the first one); IndexNotFoundError if
        there is none."""
        missing = IndexNotFoundError(f"no esrag index at {self.path}; run `esrag ingest` to create it")
        if not self.path.is_file():
            raise missing
        with self._guard("open"):
            conn = self._open(create=False)
            try:
                with self._state:
                    if self._meta is None:
                        meta = self._inspect(conn)
                        if meta is None:
                            raise missing
                        self._meta = meta
            except BaseException:
                conn.close()
                raise
        return conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, opened on first use."""
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and local.epoch == self._epoch:
            return conn
        conn = self._open_existing()
        try:
            with self._guard("open"):
                attach_vocab(conn)
        except BaseException:
            conn.close()
            raise
        with self._state:
            self._readers.append(conn)
            local.conn, local.epoch = conn, self._epoch
        return conn

    def _writer(self) -> sqlite3.Connection:
        """The write connection. Hold ``_write_lock``."""
        if self._wconn is None:
            self._wconn = self._open_existing()
            self._wconn.execute(sql.WRITE_CACHE)
            self._file_id = sqlite_files.file_id(self.path)
        return self._wconn

    def _check_still_there(self) -> None:
        """StoreError if another process deleted or replaced the file since it was opened for writing."""
        if self._wconn is not None and self._file_id is not None and sqlite_files.file_id(self.path) != self._file_id:
            raise StoreError(f"the index at {self.path} was deleted or replaced by another process while this "
                             "one was writing to it; nothing more is written (run the ingest again)")

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (rolled back on any exception), bumping the generation that keys the
        shared caches."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            conn.execute(sql.BUMP)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # --- Store protocol --------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {"store": self.name, "location": str(self.path), "index": self.settings.index}

    def exists(self) -> bool:
        """Whether the file holds an esrag index. A foreign or corrupt file raises CorruptStoreError."""
        try:
            self._reader()
        except IndexNotFoundError:
            return False
        return True

    def ensure_index(self, meta: IndexMeta) -> bool:
        """Create the file and schema and record ``meta`` (True), or check the existing index was built
        with the same model and dims (False; else ModelMismatchError). Only this method creates the
        directory and the file. An interrupted creation leaves an empty database, which the next call
        completes."""
        with self._write_lock:
            created = False
            if self._wconn is None:
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
                                    created = True
                        elif not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_sha'").fetchone():
                            with self._transaction(conn):
                                conn.execute(sql.SHA_INDEX)
                except BaseException:
                    conn.close()
                    raise
                conn.execute(sql.WRITE_CACHE)
                with self._state:
                    self._wconn = conn
                    self._file_id = sqlite_files.file_id(self.path)
                    self._meta = self._meta or existing or meta
                if created:
                    return True
            old = self._meta
            assert old is not None
            if old.model != meta.model or old.dims != meta.dims:
                raise ModelMismatchError.of(f"at {self.path}", old.model, old.dims, meta.model, meta.dims)
            if old.build_params() != meta.build_params():
                self._rebuild(old, meta)
            return False

    def _rebuild(self, old: IndexMeta, meta: IndexMeta) -> None:
        """Record ``meta``'s build parameters (chunking, embed template, analyzer) over ``old``'s; a new
        analyzer rebuilds the FTS5 index from the stored text, in the same transaction (no re-embedding)."""
        new = dataclasses.replace(old, **meta.build_params())
        conn = self._writer()
        with self._guard("update the index meta of"), self._transaction(conn):
            if new.analyzer != old.analyzer:
                conn.execute("DROP TABLE chunks_fts")
                conn.execute(sql.FTS_TABLE.format(tokenizer=sql.tokenizer(new.analyzer)))
                conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")
                conn.execute("DELETE FROM bm25_postings")  # saved with the old tokenizer
            conn.execute("UPDATE meta SET value = ? WHERE key = 'index_meta'", (canonical_json(new.to_dict()),))
        with self._state:
            self._meta = new

    @staticmethod
    def _create_schema(conn: sqlite3.Connection, meta: IndexMeta) -> None:
        for stmt in (*sql.schema(meta.analyzer), sql.SHA_INDEX, *vector_log.SCHEMA, *postings.SCHEMA):
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
        try:
            self._reader()
        except IndexNotFoundError:
            return None
        return self._meta

    def write(self, chunks: Iterable[EmbeddedChunk], delete_ids: Sequence[str] = ()) -> WriteResult:
        """Upsert chunks, then delete ``delete_ids``, in one transaction. A chunk that cannot be stored
        (wrong dims or dtype, NaN, bad field) is reported in the result, not raised; the rest are
        written."""
        errors: list[WriteError] = []
        written = deleted = 0
        with self._write_lock:
            sqlite_files.check_writable(self.path)
            conn = self._writer()
            self._check_still_there()
            assert self._meta is not None
            dims = self._meta.dims
            now = datetime.now(UTC).isoformat()
            with self._guard("write to"), self._transaction(conn):
                batch: list[tuple[Any, tuple[Any, ...]]] = []  # (chunk, its row), upserted in one statement
                for item in chunks:
                    chunk = getattr(item, "chunk", None)
                    try:
                        c = item.chunk
                        batch.append((c, (str(c.id), str(c.doc_id), str(c.source), str(c.title),
                                          int(c.chunk_index), int(c.chunk_count), int(c.section), int(c.start),
                                          int(c.end), str(c.doc_sha), str(c.chunk_sha), now,
                                          sql.metadata_json(c.metadata), sql.vector(item.embedding, dims).tobytes(),
                                          str(c.context), str(c.text))))
                    except sqlite_rows.ROW_ERRORS as e:
                        errors.append(sqlite_rows.write_error(chunk, e))
                    if len(batch) == sql.ROWS_PER_STATEMENT:
                        written += sqlite_rows.upsert(conn, batch, errors)
                        batch = []
                written += sqlite_rows.upsert(conn, batch, errors)
                deleted = sqlite_rows.delete_in(conn, "id", delete_ids)
            self._check_still_there()  # a delete during this transaction: what it wrote is gone
            self._maintain(conn)
        return WriteResult(written=written, errors=tuple(errors), deleted=deleted)

    def refresh(self) -> None:
        """Wait for this process's vector merge, if one runs (writes are visible at once); StoreError if
        another process deleted the file this store wrote to."""
        with self._write_lock:
            self._check_still_there()
        self._reader()
        if self._dense is not None:
            self._dense.wait()

    def list_documents(self, prefix: str = "") -> dict[str, DocRef]:
        """Stored documents whose doc_id starts with ``prefix``; ``DocRef.doc_sha`` is "" for a document whose
        chunks carry more than one doc_sha."""
        where, params = "", []
        if prefix:
            where, params = "WHERE doc_id >= ? AND doc_id < ?", [prefix, prefix + "\U0010ffff"]
        out: dict[str, DocRef] = {}
        with self._guard("read"):
            rows = self._reader().execute(
                "SELECT doc_id, min(doc_sha), max(doc_sha), count(*) FROM chunks "
                f"{where} GROUP BY doc_id", params)
            for doc_id, lo, hi, n in rows:
                if doc_id.startswith(prefix):
                    out[doc_id] = DocRef(doc_id=doc_id, doc_sha=lo if lo == hi else "", chunks=int(n))
        return out

    def list_chunks(self, doc_ids: Sequence[str]) -> dict[str, list[ChunkRef]]:
        out: dict[str, list[ChunkRef]] = {}
        with self._guard("read"):
            conn = self._reader()
            conn.execute("BEGIN")
            try:
                for part in sql.batches(list(dict.fromkeys(doc_ids))):
                    rows = conn.execute(
                        "SELECT id, doc_id, doc_sha, chunk_sha, chunk_count FROM chunks "
                        f"WHERE doc_id IN ({', '.join('?' * len(part))}) ORDER BY doc_id, chunk_index, id", part)
                    for r in rows:
                        out.setdefault(r[1], []).append(ChunkRef(id=r[0], doc_id=r[1], doc_sha=r[2],
                                                                 chunk_sha=r[3], chunk_count=int(r[4])))
            finally:
                conn.execute("COMMIT")
        return out

    def get_embeddings(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        return self._embeddings("id", ids)

    def get_embeddings_by_sha(self, chunk_shas: Sequence[str]) -> dict[str, np.ndarray]:
        """A stored sql.vector for each ``chunk_sha`` held by any chunk of the index; absent ones are left out."""
        return self._embeddings("chunk_sha", chunk_shas)

    def _embeddings(self, column: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        with self._guard("read"):
            conn = self._reader()
            for part in sql.batches(list(dict.fromkeys(keys))):
                rows = conn.execute(
                    f"SELECT {column}, embedding FROM chunks WHERE {column} IN ({', '.join('?' * len(part))})",
                    part)
                for key, blob in rows:
                    out[key] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def delete_chunks(self, ids: Sequence[str]) -> int:
        return self._delete("id", ids)

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        return self._delete("doc_id", doc_ids)

    def _delete(self, column: str, values: Sequence[str]) -> int:
        """Delete rows whose ``column`` is in ``values``, all in one transaction; returns the rows deleted."""
        with self._write_lock:
            conn = self._writer()
            if not values:
                return 0
            sqlite_files.check_writable(self.path)
            with self._guard("delete from"), self._transaction(conn):
                deleted = sqlite_rows.delete_in(conn, column, values)
            self._maintain(conn)
            return deleted

    def _maintain(self, conn: sqlite3.Connection) -> None:
        """After a committed write: the dense side's merge when due (in the background), and the BM25 change
        log's pruning."""
        self._dense_index().maintain_in_background(lambda: self._open(create=False))
        with self._guard("prune the BM25 change log of"):
            postings.prune(conn)

    def search(self, request: SearchRequest) -> SearchResponse:
        """Both sides in one read snapshot, each returning up to ``request.candidates`` hits, best first."""
        t0 = time.perf_counter()
        limit = max(0, int(request.candidates))
        bm25: list[ScoredChunk] = []
        dense: list[ScoredChunk] = []
        with self._guard("search"):
            conn = self._reader()
            for _ in range(100):
                conn.execute("BEGIN")
                try:
                    generation, pointer = read_state(conn)
                    view = self._dense_index().view(conn, generation, pointer) if request.vector is not None else None
                    if request.vector is not None and view is None:
                        continue  # another thread's view is newer than this snapshot: take a newer one
                    wanted: np.ndarray | None = None
                    if limit and (filtered := sql.dense_filter_sql(request.filters)) is not None:
                        wanted = np.sort(np.fromiter((r for (r,) in conn.execute(*filtered)), dtype=np.int64))
                    if request.text is not None and limit:
                        bm25 = self._bm25_side(conn, generation, request.text, request.filters, wanted, limit)
                    if view is not None and limit:
                        assert request.vector is not None
                        knn = self._dense_index().knn(conn, view, request.vector, wanted, limit)
                        dense = sqlite_rows.hits(conn, knn)
                    break
                finally:
                    conn.execute("COMMIT")
            if self._dense is not None and self._dense.needs_repair():
                self._dense.repair_in_background(lambda: self._open(create=False))
        return SearchResponse(bm25=bm25, dense=dense, took_ms=(time.perf_counter() - t0) * 1e3)

    def _bm25_side(self, conn: sqlite3.Connection, generation: int, text: str, filters: Any,
                wanted: np.ndarray | None, limit: int) -> list[ScoredChunk]:
        """BM25 top ``limit`` (``wanted``: the filters' rowids, sorted), by Bm25Index, else by FTS5."""
        terms = query_terms(text)
        if not terms:
            return []
        cached = self._bm25
        if cached is None or cached[0] != generation:
            with self._cache_lock:
                cached = self._bm25
                if cached is None or cached[0] != generation:
                    self._bm25 = None  # free the old postings first
                    analyzer = sql.index_analyzer(conn)
                    if self._saved is None or self._saved.delta.tokenizer != sql.tokenizer(analyzer):
                        self._saved = postings.Saved(sql.tokenizer(analyzer), lambda: self._open(create=False))
                    cached = self._bm25 = (generation, Bm25Index(conn, analyzer=analyzer, saved=self._saved,
                                                                 generation=generation))
        ranked = cached[1].top(conn, terms, limit, wanted)
        if ranked is not None:
            return sqlite_rows.hits(conn, ranked)
        built = bm25_sql(terms, filters, limit)
        assert built is not None
        return [sql.scored(r, float(r[9])) for r in conn.execute(*built)]

    def _dense_index(self) -> DenseIndex:
        """The dense side (sqlite_vectors), made on first use, once the store's dims are known."""
        dense = self._dense
        if dense is None:
            with self._state:
                if self._dense is None:
                    assert self._meta is not None
                    self._dense = DenseIndex(self.path, self._meta.dims, exact=self.settings.exact_knn,
                                             ann_min=self.settings.ann_min_chunks)
                dense = self._dense
        return dense

    def vector_index(self) -> dict[str, Any]:
        """The dense side's state for ``esrag status``: kind, vectors, bytes, whether it is current."""
        conn = self._reader()
        with self._guard("read"):
            return self._dense_index().status(conn)

    def explain_request(self, request: SearchRequest) -> dict[str, Any]:
        """The SQL ``search`` runs, with parameters (``sqlite_sql.explain``). Pure: no I/O."""
        return sql.explain(request, str(self.path), self.settings.ann_min_chunks)

    def iter_chunks(self, batch_size: int = 500) -> Iterator[list[EmbeddedChunk]]:
        """Every chunk, in rowid order, from one read transaction on a connection of its own (closed when
        the stream ends or is closed)."""
        conn = self._open_existing()
        try:
            with self._guard("read"):
                conn.execute("BEGIN")
                assert self._meta is not None
                yield from sqlite_files.stream_chunks(conn, self._meta.dims, max(1, batch_size))
        finally:
            conn.close()

    def versions(self) -> sqlite_files.SqliteVersions:
        """The versions of this index's file (``esrag reindex``, ``esrag status``)."""
        return sqlite_files.SqliteVersions(self)

    def count(self) -> Counts:
        with self._guard("read"):
            docs, chunks = self._reader().execute(
                "SELECT count(DISTINCT doc_id), count(*) FROM chunks").fetchone()
        return Counts(documents=int(docs), chunks=int(chunks))

    def drop(self) -> bool:
        """Delete the file and its -wal/-shm. Refuses (CorruptStoreError) to delete a file that is not an
        esrag store, so a wrong --sqlite-dir cannot destroy someone else's database."""
        with self._write_lock:
            existed = self.path.exists()
            if existed:
                try:
                    self._reader()
                except IndexNotFoundError:
                    existed = False  # an empty database: nothing was indexed
            self.close()
            sqlite_files.drop_versions(self.path)
            for path in [*(Path(f"{self.path}{s}") for s in ("", "-wal", "-shm", "-journal")),
                         *DenseIndex(self.path, 0).files()]:
                try:
                    path.unlink(missing_ok=True)
                except OSError as e:
                    raise StoreError(f"cannot delete {path}: {e.strerror or e}") from e
            return existed

    def close(self) -> None:
        """Close every connection (other threads reopen theirs on next use)."""
        with self._write_lock, self._state:
            conns = [c for c in (self._wconn, *self._readers) if c is not None]
            self._wconn, self._readers = None, []
            self._epoch += 1
            dense, self._meta, self._dense, self._bm25 = self._dense, None, None, None
            saved, self._saved = self._saved, None
        if saved is not None:
            saved.flush()  # the queued saves (each a few milliseconds; a busy store skips them)
        if dense is not None:
            dense.wait()
            dense.forget()
        for conn in conns:
            conn.close()

