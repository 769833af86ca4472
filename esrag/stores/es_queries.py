"""Pure builders of Elasticsearch request bodies: plain dicts in, plain dicts out, no client and no I/O.

The store (``esrag.stores.elasticsearch``) runs what these build, so tests can assert the exact requests and
``--explain`` can print them for Kibana Dev Tools.

Limits applied here (Elasticsearch's own): a search returns at most ``MAX_RESULT_WINDOW`` (10,000) hits and
a kNN search takes at most ``MAX_NUM_CANDIDATES`` (10,000) candidates, so larger requests are clamped to
them rather than rejected by the server.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import numpy as np

from esrag.config import Settings
from esrag.types import TOP_LEVEL_FILTER_FIELDS, EmbeddedChunk, Filters, IndexMeta, SearchRequest
from esrag.validation import check_filters

#: Field holding the chunk vector.
VECTOR_FIELD = "embedding"
#: Fields the BM25 side searches (``multi_match`` best_fields: a chunk scores by its best field).
TEXT_FIELDS = ("title", "text")
#: ``_source`` fields every search returns: what a hit shows, nothing else (vectors are large, and bookkeeping
#: fields like the hashes only cost parsing time on the client).
SEARCH_SOURCE: list[str] = ["doc_id", "source", "title", "text", "chunk_index", "section", "metadata"]
#: ``filter_path`` of ``_msearch``: only what the searcher parses.
MSEARCH_FILTER_PATH = (
    "took,responses.status,responses.error,responses.hits.hits._id,responses.hits.hits._score,"
    "responses.hits.hits._source,responses.hits.hits._index"
)
#: Elasticsearch's default ``index.max_result_window`` and its hard ``num_candidates`` limit.
MAX_RESULT_WINDOW = 10_000
MAX_NUM_CANDIDATES = 10_000
#: Fields ``list_chunks`` reads (everything a ChunkRef needs besides the id, and the position to sort by).
REF_FIELDS = ("doc_id", "doc_sha", "chunk_sha", "chunk_count", "chunk_index")
#: Fields ``iter_chunks`` reads: everything a stored chunk holds but ``ingested_at``.
STORED_FIELDS = ("doc_id", "source", "title", "text", "context", "chunk_index", "chunk_count", "section", "start",
                 "end", "doc_sha", "chunk_sha", "metadata", VECTOR_FIELD)
#: Fields added to the mapping after its first release, with their mapping: an index made before one of
#: them gets it by a put-mapping (``ensure_index``); its older chunks lack the value.
LATER_FIELDS: dict[str, dict[str, Any]] = {"section": {"type": "integer"},
                                           "context": {"type": "text", "index": False}}
#: How long a ``list_chunks`` point in time stays open between pages.
PIT_KEEP_ALIVE = "2m"


@functools.cache
def _template() -> dict[str, Any]:
    text = files("esrag").joinpath("mappings/chunks.json").read_text(encoding="utf-8")
    return dict(json.loads(text))


def load_template() -> dict[str, Any]:
    """The ``mappings/chunks.json`` template (a fresh deep copy; placeholders are ``null``)."""
    return copy.deepcopy(_template())


def build_index_body(settings: Settings, meta: IndexMeta) -> dict[str, Any]:
    """The create-index body: settings and mappings from the template, with the vector's dims (from
    ``meta``), similarity and ``index_options`` type (from ``settings``), the text analyzer (from
    ``meta``) and ``_meta`` filled in.

    ``_meta`` is ``meta.to_dict()`` with ``similarity`` set to the one the mapping actually uses, so that
    what is recorded is what the index does.
    """
    body = load_template()
    props = body["mappings"]["properties"]
    props["title"]["analyzer"] = meta.analyzer
    props["text"]["analyzer"] = meta.analyzer
    vector = props[VECTOR_FIELD]
    vector["dims"] = meta.dims
    vector["similarity"] = settings.similarity
    vector["index_options"] = {"type": settings.index_options}
    body["mappings"]["_meta"] = {**meta.to_dict(), "similarity": settings.similarity}
    return body


def filter_field(key: str) -> str:
    """The indexed field a filter key addresses: ``doc_id``/``source`` as is, ``title`` through its
    ``title.keyword`` subfield (exact title), anything else inside the ``metadata`` flattened field."""
    if key in TOP_LEVEL_FILTER_FIELDS:
        return "title.keyword" if key == "title" else key
    return f"metadata.{key}"


def build_filter_clauses(filters: Filters) -> list[dict[str, Any]]:
    """Filters as ES ``bool.filter`` clauses, in the order given: one ``term`` for a single accepted value,
    one ``terms`` for several (values ORed); keys ANDed by being separate clauses.

    Values are matched exactly as strings. ``metadata`` is a flattened field, which indexes numbers and
    booleans as their JSON text (``5``, ``true``), so ``{"year": ("2024",)}`` matches ``year: 2024``. A key
    with no values (an empty tuple) becomes an empty ``terms`` and matches nothing. A bare string value is
    taken as one value, not as a sequence of characters. ConfigError for a filter the stores cannot take
    (``esrag.validation.check_filters``).
    """
    check_filters(filters)
    clauses: list[dict[str, Any]] = []
    for key, values in filters.items():
        vals = [values] if isinstance(values, str) else [str(v) for v in values]
        field = filter_field(key)
        if len(vals) == 1:
            clauses.append({"term": {field: vals[0]}})
        else:
            clauses.append({"terms": {field: vals}})
    return clauses


def vector_to_list(vector: np.ndarray | Sequence[float]) -> list[float]:
    """A vector as a JSON-ready list of floats, cast to float32 first (what ES stores), so each value is
    exactly the float32 the model produced."""
    values: list[float] = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
    return values


def build_bm25_body(text: str, size: int, filters: Filters) -> dict[str, Any]:
    """The BM25 search: ``multi_match`` (best_fields) over title and text, filters in ``bool.filter`` (they
    restrict the candidates without scoring), top ``size`` hits.

    ``multi_match`` rather than ``match`` on text alone because titles carry much of a document's topic and
    are repeated on every chunk; best_fields scores a chunk by its better field instead of summing them, so a
    title match does not swamp the body text. ``size`` is clamped to ``[0, MAX_RESULT_WINDOW]``. Total-hit
    counting is off: the searcher never needs it and it costs time.
    """
    match = {"multi_match": {"query": text, "fields": list(TEXT_FIELDS), "type": "best_fields"}}
    query: dict[str, Any] = {"bool": {"must": [match]}}
    clauses = build_filter_clauses(filters)
    if clauses:
        query["bool"]["filter"] = clauses
    return {
        "size": _clamp(size, MAX_RESULT_WINDOW),
        "query": query,
        "track_total_hits": False,
        "_source": list(SEARCH_SOURCE),
    }


def knn_sizes(k: int, num_candidates: int | None) -> tuple[int, int]:
    """``(k, num_candidates)`` as ES accepts them: ``k`` clamped to ``[1, MAX_NUM_CANDIDATES]`` and
    ``num_candidates`` at least ``2 * k`` (None means exactly that), at most ``MAX_NUM_CANDIDATES``."""
    k = max(1, _clamp(k, MAX_NUM_CANDIDATES))
    nc = max(num_candidates or 0, 2 * k)
    return k, min(nc, MAX_NUM_CANDIDATES)


def build_dense_body(
    vector: np.ndarray | Sequence[float], k: int, num_candidates: int | None, filters: Filters
) -> dict[str, Any]:
    """The kNN search: top-level ``knn`` on the embedding with the filters *inside* ``knn.filter``, so
    they apply during the graph search and the result still has up to ``k`` hits (a post-filter would cut
    the k nearest first). ``size`` = ``k``. See ``knn_sizes`` for the bounds of ``k`` and
    ``num_candidates``."""
    k, nc = knn_sizes(k, num_candidates)
    knn: dict[str, Any] = {
        "field": VECTOR_FIELD,
        "query_vector": vector_to_list(vector),
        "k": k,
        "num_candidates": nc,
    }
    clauses = build_filter_clauses(filters)
    if clauses:
        knn["filter"] = clauses
    return {"knn": knn, "size": k, "_source": list(SEARCH_SOURCE)}


def build_msearch(index: str, request: SearchRequest) -> list[dict[str, Any]]:
    """The ``_msearch`` body as header/body pairs: the BM25 search (if ``request.text`` is not None), then the
    kNN search (if ``request.vector`` is not None). Empty when both sides are skipped."""
    searches: list[dict[str, Any]] = []
    if request.text is not None:
        searches += [{"index": index}, build_bm25_body(request.text, request.candidates, request.filters)]
    if request.vector is not None:
        searches += [
            {"index": index},
            build_dense_body(request.vector, request.candidates, request.num_candidates, request.filters),
        ]
    return searches


def chunk_source(ec: EmbeddedChunk, ingested_at: str) -> dict[str, Any]:
    """The stored document of one chunk (everything but the id), embedding as a list of floats. ``context``
    (what the embedded text adds before the chunk, kept so that a reindex can embed it again; not indexed)
    is left out when empty."""
    c = ec.chunk
    source = {
        "doc_id": c.doc_id,
        "source": c.source,
        "title": c.title,
        "text": c.text,
        "context": c.context,
        "chunk_index": c.chunk_index,
        "chunk_count": c.chunk_count,
        "section": c.section,
        "start": c.start,
        "end": c.end,
        "doc_sha": c.doc_sha,
        "chunk_sha": c.chunk_sha,
        "metadata": dict(c.metadata),
        "ingested_at": ingested_at,
        VECTOR_FIELD: vector_to_list(ec.embedding),
    }
    if not c.context:
        del source["context"]
    return source


def bulk_actions(
    index: str, chunks: Iterable[EmbeddedChunk], now: datetime | None = None, require_alias: bool = False
) -> Iterator[dict[str, Any]]:
    """``streaming_bulk`` actions upserting each chunk under its id (``index`` op: a re-write replaces).

    Lazy: one action per chunk as the iterable is consumed. ``ingested_at`` is ``now`` (default: the current
    UTC time, taken once per call) in ISO 8601. ``require_alias`` makes ES reject the write instead of
    auto-creating a dynamically mapped index when ``index`` is not an alias (for instance after a drop).
    """
    stamp = (now or datetime.now(UTC)).isoformat()
    for ec in chunks:
        action: dict[str, Any] = {"_op_type": "index", "_index": index, "_id": ec.chunk.id}
        if require_alias:
            action["require_alias"] = True
        action["_source"] = chunk_source(ec, stamp)
        yield action


def build_refs_query(doc_ids: Sequence[str]) -> dict[str, Any]:
    """The query selecting every chunk of ``doc_ids`` (used by ``list_chunks``)."""
    return {"bool": {"filter": [{"terms": {"doc_id": list(doc_ids)}}]}}


def build_prefix_query(prefix: str) -> dict[str, Any]:
    """Every chunk whose doc_id starts with ``prefix`` (all chunks for ""), used by ``list_documents``."""
    if not prefix:
        return {"match_all": {}}
    return {"bool": {"filter": [{"prefix": {"doc_id": prefix}}]}}


def build_pit_page(
    pit_id: str, query: dict[str, Any], fields: Sequence[str], size: int, search_after: list[Any] | None = None
) -> dict[str, Any]:
    """One page of a point-in-time scan (``list_chunks``, ``list_documents``): the hits of ``query`` with
    ``_source`` ``fields``, sorted by ``_shard_doc`` (the cheapest total order; ES cannot sort on ``_id``),
    continuing after ``search_after``.

    Keyword arguments for ``Elasticsearch.search`` (no index: a PIT search names none).
    """
    body: dict[str, Any] = {
        "pit": {"id": pit_id, "keep_alive": PIT_KEEP_ALIVE},
        "query": query,
        "sort": [{"_shard_doc": "asc"}],
        "size": size,
        "_source": list(fields),
        "track_total_hits": False,
    }
    if search_after is not None:
        body["search_after"] = search_after
    return body


def build_refs_page(
    pit_id: str, doc_ids: Sequence[str], size: int, search_after: list[Any] | None = None
) -> dict[str, Any]:
    """One page of ``list_chunks``: the chunks of ``doc_ids`` with the fields a ChunkRef needs."""
    return build_pit_page(pit_id, build_refs_query(doc_ids), REF_FIELDS, size, search_after)


def build_count_body() -> dict[str, Any]:
    """Chunks (exact total hits) and documents (``cardinality`` of doc_id) in one search.

    ``cardinality`` is exact up to ``precision_threshold`` distinct values (40,000, the maximum ES allows)
    and approximate (HyperLogLog++, typically within a few percent) above it.
    """
    return {
        "size": 0,
        "track_total_hits": True,
        "aggs": {"documents": {"cardinality": {"field": "doc_id", "precision_threshold": 40_000}}},
    }


def to_ndjson(body: Sequence[dict[str, Any]]) -> str:
    """An ``_msearch``/``_bulk`` body as NDJSON: one compact JSON object per line, newline-terminated."""
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in body)


def kibana_request(method: str, path: str, body: Sequence[dict[str, Any]]) -> str:
    """The request as Kibana Dev Tools text: ``GET esrag/_msearch`` then the NDJSON body."""
    return f"{method} {path.lstrip('/')}\n{to_ndjson(body)}"


def _clamp(n: int, hi: int) -> int:
    return max(0, min(int(n), hi))
