"""Pure parts of the SQLite store: schema, tokenisation of query text the way FTS5's ``unicode61`` does it,
and the SQL that ``SQLiteStore`` runs (also what ``explain_request`` shows). No I/O."""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from esrag.errors import ConfigError, setting
from esrag.stores.sqlite_bm25 import TOKENIZERS
from esrag.types import TOP_LEVEL_FILTER_FIELDS, Filters, IndexMeta, MetadataValue, ScoredChunk, SearchRequest
from esrag.validation import check_filters, clean_metadata

#: chunks per write transaction
WRITE_BATCH = 500
#: values per ``IN (...)`` list
IN_BATCH = 500
#: title, text (Bm25Index weighs both 1.0, as here)
BM25_WEIGHTS = (1.0, 1.0)
BUSY_TIMEOUT_S = 30.0
#: page cache of the write connection (SQLite's default is 2 MiB): a write into a large store updates the
#: id, sha and filter B-trees at random places, and would otherwise re-read most of their pages from the
#: OS on every transaction
WRITE_CACHE = "PRAGMA cache_size = -65536"

FTS_TABLE = ("CREATE VIRTUAL TABLE chunks_fts USING fts5(title, text, content='chunks', content_rowid='rowid', "
             "tokenize='{tokenizer}')")
_FTS_ADD = "INSERT INTO chunks_fts(rowid, title, text) VALUES (new.rowid, new.title, new.text);"
_FTS_DEL = ("INSERT INTO chunks_fts(chunks_fts, rowid, title, text) "
            "VALUES ('delete', old.rowid, old.title, old.text);")
SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # Small columns first and text last: filters and vector loads then never touch the overflow pages of
    # a long text.
    """CREATE TABLE chunks (
        rowid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, doc_id TEXT NOT NULL, source TEXT NOT NULL,
        title TEXT NOT NULL, chunk_index INTEGER NOT NULL, chunk_count INTEGER NOT NULL,
        section INTEGER NOT NULL DEFAULT -1, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
        doc_sha TEXT NOT NULL, chunk_sha TEXT NOT NULL, ingested_at TEXT NOT NULL, metadata TEXT NOT NULL,
        embedding BLOB NOT NULL, context TEXT NOT NULL DEFAULT '', text TEXT NOT NULL)""",
    # doc_id lookups, and a covering index for filters: a filter scan reads this, not the chunk rows
    "CREATE INDEX chunks_filter ON chunks(doc_id, source, title, metadata)",
    FTS_TABLE,  # formatted with the analyzer's tokenizer by schema()
    f"CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN {_FTS_ADD} END",
    f"CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN {_FTS_DEL} END",
    "CREATE TRIGGER chunks_au AFTER UPDATE OF title, text ON chunks "
    f"WHEN old.title IS NOT new.title OR old.text IS NOT new.text BEGIN {_FTS_DEL} {_FTS_ADD} END",
)


def schema(analyzer: str) -> tuple[str, ...]:
    """The schema's statements, the FTS5 table with the tokenizer of ``analyzer`` (see ``TOKENIZERS``)."""
    return tuple(s.format(tokenizer=tokenizer(analyzer)) if s is FTS_TABLE else s for s in SCHEMA)


def tokenizer(analyzer: str) -> str:
    """The FTS5 tokenizer of ``analyzer``; ConfigError naming the choices for any other name."""
    if analyzer not in TOKENIZERS:
        raise ConfigError(f"the SQLite store has no analyzer {analyzer!r}: set {setting('analyzer')} to "
                          f"{' or '.join(sorted(TOKENIZERS))} (any other analyzer needs Elasticsearch)")
    return TOKENIZERS[analyzer]


#: schema 1 -> 2: chunks record their section (-1 for the chunks written before)
ADD_SECTION = "ALTER TABLE chunks ADD COLUMN section INTEGER NOT NULL DEFAULT -1"
#: schema 3 -> 4: chunks keep the context their embedded text adds before the chunk ('' for those before)
ADD_CONTEXT = "ALTER TABLE chunks ADD COLUMN context TEXT NOT NULL DEFAULT ''"
COLUMNS = ("id", "doc_id", "source", "title", "chunk_index", "chunk_count", "section", "start", "end", "doc_sha",
            "chunk_sha", "ingested_at", "metadata", "embedding", "context", "text")
_QUOTED = [f'"{c}"' for c in COLUMNS]
#: rows per INSERT statement of a write. FTS5 (SQLite 3.40) writes its pending terms out as a new segment
#: when each statement that changed it ends, so one statement per row wrote a segment per row, and its
#: merges, for about a third of a large write's time
ROWS_PER_STATEMENT = 256


@functools.lru_cache(maxsize=4)
def upsert_sql(rows: int) -> str:
    """One statement upserting ``rows`` chunks (``COLUMNS`` of each, row after row), by id."""
    one = f"({', '.join('?' * len(COLUMNS))})"
    return (f"INSERT INTO chunks({', '.join(_QUOTED)}) VALUES {', '.join([one] * rows)} "
            f"ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in _QUOTED[1:])}")


UPSERT = upsert_sql(1)
_HIT_COLUMNS = "c.rowid, c.id, c.doc_id, c.source, c.title, c.text, c.chunk_index, c.metadata, c.section"
LOAD_SQL = "SELECT rowid, embedding FROM chunks ORDER BY rowid"
#: a metadata value as the string ES's ``flattened`` type would index: booleans as true/false. A row whose
#: metadata is not valid JSON to SQLite (a NaN written by an older version) matches no metadata filter,
#: instead of failing the whole query with "malformed JSON".
_META_VALUE = ("(CASE WHEN NOT json_valid(c.metadata) THEN NULL "
               "ELSE (CASE json_type(c.metadata, ?) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
               "ELSE CAST(json_extract(c.metadata, ?) AS TEXT) END) END)")



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
    nothing. Empty filters give ``("", [])``. ConfigError for a filter over the limits of
    ``esrag.validation`` (SQLite's expression depth), or a lone surrogate in a key or value.
    """
    check_filters(filters)
    clauses: list[str] = []
    params: list[Any] = []
    for key in sorted(filters):
        values = [str(v) for v in filters[key]]
        marks = ", ".join("?" * len(values))
        if key in TOP_LEVEL_FILTER_FIELDS:
            clauses.append(f"c.{key} IN ({marks})")
        else:
            if '"' in key or not key:
                raise ConfigError(f"invalid metadata filter key {key!r}", field="filters")
            # instr(): a cheap necessary condition (the value's JSON text occurs) before parsing the JSON
            needles = [json.dumps(v, ensure_ascii=False)[1:-1] for v in values]
            clauses.append(f"({' OR '.join(['instr(c.metadata, ?)'] * len(values)) or '0'}) "
                           f"AND {_META_VALUE} IN ({marks})")
            params += [*needles, f'$."{key}"', f'$."{key}"']
        params += values
    return " AND ".join(clauses), params


def bm25_sql(text: str | Sequence[str], filters: Filters, limit: int) -> tuple[str, list[Any]] | None:
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


def batches(values: Sequence[Any], size: int = IN_BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def scored(row: Sequence[Any], score: float) -> ScoredChunk:
    return ScoredChunk(id=row[1], score=score, doc_id=row[2], source=row[3], title=row[4], text=row[5],
                       chunk_index=int(row[6]), metadata=stored_metadata(row[7]), section=int(row[8]))


def stored_metadata(text: str) -> dict[str, MetadataValue]:
    """A row's metadata column as the flat map of finite scalars hits carry (``clean_metadata``); a row
    whose column is not JSON at all reads as ``{}`` rather than failing the query it is a hit of."""
    try:
        raw = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return {}
    return clean_metadata(raw)


def metadata_json(metadata: Mapping[str, Any]) -> str:
    """The metadata column of a chunk; ValueError for a non-finite number (SQLite's JSON functions cannot
    read NaN or Infinity, so one such row would break every filter that reaches it)."""
    return json.dumps(dict(metadata), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=str)


def vector(embedding: Any, dims: int) -> np.ndarray:
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


#: the index that makes ``get_embeddings_by_sha`` a lookup; added to older stores by ``ensure_index``
SHA_INDEX = "CREATE INDEX IF NOT EXISTS chunks_sha ON chunks(chunk_sha)"
BUMP = ("INSERT INTO meta(key, value) VALUES ('generation', '1') "
         "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
GENERATION = "SELECT value FROM meta WHERE key = 'generation'"


def explain(request: SearchRequest, database: str, ann_min_chunks: int) -> dict[str, Any]:
    """What ``SQLiteStore.search`` runs for ``request`` (its ``explain_request``): the BM25 side as the
    equivalent FTS5 query with its parameters, the kNN side described with its filter SQL (the vector
    shown as its size only)."""
    limit = max(0, int(request.candidates))
    out: dict[str, Any] = {"store": "sqlite", "database": database, "bm25": None, "dense": None}
    if request.text is not None:
        built = bm25_sql(request.text, request.filters, limit)
        out["bm25"] = ({"sql": built[0], "params": built[1],
                          "note": "search computes the same hits and scores with numpy from FTS5's postings "
                                  "(esrag.stores.sqlite_bm25); this is the equivalent FTS5 query"}
                         if built else {"sql": None, "note": "no terms in the query text: no BM25 hits"})
    if request.vector is not None:
        filtered = dense_filter_sql(request.filters)
        out["dense"] = {
            "method": "exact cosine kNN (numpy) over the L2-normalised vectors below "
                      f"{ann_min_chunks} chunks or with exact_knn, else an int8 HNSW index "
                      "(esrag.stores.sqlite_vectors) whose candidates are re-scored with the float vectors; "
                      "score = (1 + cos) / 2; filters restrict the rows before the top-k cut",
            "vector": f"<{int(np.asarray(request.vector).size)} floats>",
            "k": limit,
            "filter_sql": filtered[0] if filtered else None,
            "filter_params": filtered[1] if filtered else [],
            "fetch_sql": fetch_sql(limit) if limit else None,
        }
    return out


def index_analyzer(conn: Any) -> str:
    """The analyzer the index was built with, read in the caller's snapshot (another process may have
    rebuilt it with another one)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'index_meta'").fetchone()
    return (IndexMeta.from_dict(json.loads(row[0])) if row else IndexMeta("", 0)).analyzer
