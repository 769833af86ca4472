"""The pure Elasticsearch request builders produce exactly the expected dicts."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import numpy as np
import pytest

from esrag.config import Settings
from esrag.stores import es_queries as q
from esrag.types import Chunk, EmbeddedChunk, IndexMeta, SearchRequest

NO_VECTOR = ["doc_id", "source", "title", "text", "chunk_index", "section", "metadata"]


def test_template_has_null_placeholders_and_strict_mapping() -> None:
    t = q.load_template()
    props = t["mappings"]["properties"]
    assert t["mappings"]["dynamic"] == "strict"
    assert props["embedding"]["dims"] is None
    assert props["embedding"]["similarity"] is None
    assert props["title"]["analyzer"] is None and props["text"]["analyzer"] is None
    assert set(props) == {
        "doc_id", "source", "title", "text", "chunk_index", "chunk_count", "section", "start", "end", "doc_sha",
        "chunk_sha", "metadata", "ingested_at", "embedding", "context",
    }
    assert props["context"] == {"type": "text", "index": False}  # kept for a reindex, never searched
    assert {f: props[f] for f in q.LATER_FIELDS} == q.LATER_FIELDS  # what an older index is given


def test_load_template_returns_independent_copies() -> None:
    a = q.load_template()
    a["mappings"]["properties"]["embedding"]["dims"] = 3
    assert q.load_template()["mappings"]["properties"]["embedding"]["dims"] is None


def test_build_index_body_fills_vector_analyzer_and_meta() -> None:
    settings = Settings(index_options="hnsw", similarity="dot_product", analyzer="english")
    meta = IndexMeta(model="m", dims=8, similarity="cosine", esrag_version="0.1.0", analyzer="english")
    assert q.build_index_body(settings, meta) == {
        "settings": {"index": {"number_of_shards": 1}},
        "mappings": {
            "dynamic": "strict",
            "_meta": {
                "model": "m", "dims": 8, "similarity": "dot_product", "normalized": True, "chunk_size": 256,
                "chunk_overlap": 32, "esrag_version": "0.1.0", "embed_template": "{text}", "analyzer": "english",
                "fingerprint": "",
            },
            "properties": {
                "doc_id": {"type": "keyword"},
                "source": {"type": "keyword"},
                "title": {
                    "type": "text", "analyzer": "english",
                    "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}},
                },
                "text": {"type": "text", "analyzer": "english"},
                "context": {"type": "text", "index": False},
                "chunk_index": {"type": "integer"},
                "chunk_count": {"type": "integer"},
                "section": {"type": "integer"},
                "start": {"type": "integer", "index": False},
                "end": {"type": "integer", "index": False},
                "doc_sha": {"type": "keyword"},
                "chunk_sha": {"type": "keyword"},
                "metadata": {"type": "flattened"},
                "ingested_at": {"type": "date"},
                "embedding": {
                    "type": "dense_vector", "dims": 8, "index": True, "similarity": "dot_product",
                    "index_options": {"type": "hnsw"},
                },
            },
        },
    }


def test_build_index_body_defaults_to_int8_hnsw_cosine_standard() -> None:
    body = q.build_index_body(Settings(), IndexMeta(model="m", dims=384))
    vec = body["mappings"]["properties"]["embedding"]
    assert (vec["dims"], vec["similarity"], vec["index_options"]) == (384, "cosine", {"type": "int8_hnsw"})
    assert body["mappings"]["properties"]["text"]["analyzer"] == "standard"


def test_filter_clauses_single_value_is_term_several_is_terms() -> None:
    filters = {"lang": ("en",), "doc_id": ("a", "b"), "source": ("s.txt",), "title": ("T",)}
    assert q.build_filter_clauses(filters) == [
        {"term": {"metadata.lang": "en"}},
        {"terms": {"doc_id": ["a", "b"]}},
        {"term": {"source": "s.txt"}},
        {"term": {"title.keyword": "T"}},
    ]


def test_filter_clauses_edge_cases() -> None:
    assert q.build_filter_clauses({}) == []
    assert q.build_filter_clauses({"k": ()}) == [{"terms": {"metadata.k": []}}]  # matches nothing
    assert q.build_filter_clauses({"k": "abc"}) == [{"term": {"metadata.k": "abc"}}]  # type: ignore[dict-item]


def test_bm25_body_multi_match_over_title_and_text_with_filters() -> None:
    assert q.build_bm25_body("hello world", 20, {"lang": ("en", "de")}) == {
        "size": 20,
        "query": {
            "bool": {
                "must": [{"multi_match": {"query": "hello world", "fields": ["title", "text"],
                                          "type": "best_fields"}}],
                "filter": [{"terms": {"metadata.lang": ["en", "de"]}}],
            }
        },
        "track_total_hits": False,
        "_source": NO_VECTOR,
    }


def test_bm25_body_without_filters_has_no_filter_key_and_clamps_size() -> None:
    body = q.build_bm25_body("x", 50_000, {})
    assert body["size"] == 10_000
    assert "filter" not in body["query"]["bool"]


def test_dense_body_filters_inside_knn() -> None:
    vec = np.array([0.5, -0.25, 0.0, 1.0], dtype=np.float32)
    assert q.build_dense_body(vec, 5, 50, {"doc_id": ("d1",)}) == {
        "knn": {
            "field": "embedding",
            "query_vector": [0.5, -0.25, 0.0, 1.0],
            "k": 5,
            "num_candidates": 50,
            "filter": [{"term": {"doc_id": "d1"}}],
        },
        "size": 5,
        "_source": NO_VECTOR,
    }


@pytest.mark.parametrize(
    ("k", "num_candidates", "expected"),
    [(5, None, (5, 10)), (5, 7, (5, 10)), (5, 100, (5, 100)), (8000, None, (8000, 10_000)),
     (20_000, 30_000, (10_000, 10_000)), (0, None, (1, 2))],
)
def test_knn_sizes_keep_num_candidates_at_least_2k_within_es_limits(
    k: int, num_candidates: int | None, expected: tuple[int, int]
) -> None:
    assert q.knn_sizes(k, num_candidates) == expected


def test_dense_body_without_filters_has_no_filter_key() -> None:
    body = q.build_dense_body([1.0, 0.0], 3, None, {})
    assert body["knn"] == {"field": "embedding", "query_vector": [1.0, 0.0], "k": 3, "num_candidates": 6}


def test_vector_to_list_is_float32_exact() -> None:
    values = q.vector_to_list(np.array([0.1], dtype=np.float64))
    assert values == [float(np.float32(0.1))]
    assert all(type(v) is float for v in values)


def test_msearch_both_sides_in_order() -> None:
    req = SearchRequest(text="q", vector=np.array([1.0, 0.0], dtype=np.float32), candidates=4,
                        filters={"lang": ("en",)}, num_candidates=20)
    assert q.build_msearch("esrag", req) == [
        {"index": "esrag"},
        q.build_bm25_body("q", 4, {"lang": ("en",)}),
        {"index": "esrag"},
        {
            "knn": {"field": "embedding", "query_vector": [1.0, 0.0], "k": 4, "num_candidates": 20,
                    "filter": [{"term": {"metadata.lang": "en"}}]},
            "size": 4,
            "_source": NO_VECTOR,
        },
    ]


def test_msearch_skips_missing_sides() -> None:
    vec = np.array([1.0], dtype=np.float32)
    assert q.build_msearch("i", SearchRequest(text=None, vector=vec, candidates=2)) == [
        {"index": "i"}, q.build_dense_body(vec, 2, None, {})
    ]
    assert q.build_msearch("i", SearchRequest(text="t", vector=None, candidates=2)) == [
        {"index": "i"}, q.build_bm25_body("t", 2, {})
    ]
    assert q.build_msearch("i", SearchRequest(text=None, vector=None, candidates=2)) == []


def _chunk(idx: int, vec: list[float]) -> EmbeddedChunk:
    c = Chunk(
        id=f"id{idx}", doc_id="d", source="docs/d.md", title="T", text=f"text {idx}", chunk_index=idx,
        chunk_count=2, start=idx * 10, end=idx * 10 + 6, chunk_sha=f"cs{idx}", doc_sha="ds",
        metadata={"lang": "en", "year": 2024},
    )
    return EmbeddedChunk(chunk=c, embedding=np.array(vec, dtype=np.float32))


def test_bulk_actions_exact_upsert_actions() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    actions = list(q.bulk_actions("esrag", [_chunk(0, [0.5, 0.25]), _chunk(1, [1.0, 0.0])], now=now))
    assert actions[0] == {
        "_op_type": "index",
        "_index": "esrag",
        "_id": "id0",
        "_source": {
            "doc_id": "d", "source": "docs/d.md", "title": "T", "text": "text 0", "chunk_index": 0,
            "chunk_count": 2, "section": 0, "start": 0, "end": 6, "doc_sha": "ds", "chunk_sha": "cs0",
            "metadata": {"lang": "en", "year": 2024}, "ingested_at": "2024-05-06T07:08:09+00:00",
            "embedding": [0.5, 0.25],
        },
    }
    assert actions[1]["_id"] == "id1" and actions[1]["_source"]["embedding"] == [1.0, 0.0]
    json.dumps(actions)  # serialisable as is
    with_context = _chunk(0, [1.0])
    with_context = EmbeddedChunk(dataclasses.replace(with_context.chunk, context="A > B\n\n"), with_context.embedding)
    assert q.chunk_source(with_context, "now")["context"] == "A > B\n\n"  # left out only when empty
    assert "context" in q.STORED_FIELDS and "context" not in q.SEARCH_SOURCE


def test_bulk_actions_require_alias_and_laziness() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield _chunk(0, [1.0])
        raise AssertionError("consumed too far")

    first = next(q.bulk_actions("a", gen(), require_alias=True))
    assert first["require_alias"] is True
    assert first["_source"]["ingested_at"].endswith("+00:00")


def test_refs_page_uses_pit_and_search_after() -> None:
    assert q.build_refs_page("PIT", ["a", "b"], 100, ["x", 3]) == {
        "pit": {"id": "PIT", "keep_alive": "2m"},
        "query": {"bool": {"filter": [{"terms": {"doc_id": ["a", "b"]}}]}},
        "sort": [{"_shard_doc": "asc"}],
        "size": 100,
        "_source": ["doc_id", "doc_sha", "chunk_sha", "chunk_count", "chunk_index"],
        "track_total_hits": False,
        "search_after": ["x", 3],
    }
    assert "search_after" not in q.build_refs_page("PIT", ["a"], 10)


def test_prefix_query_selects_doc_ids_by_prefix_or_everything() -> None:
    assert q.build_prefix_query("docs/") == {"bool": {"filter": [{"prefix": {"doc_id": "docs/"}}]}}
    assert q.build_prefix_query("") == {"match_all": {}}


def test_pit_page_reads_only_the_given_fields() -> None:
    assert q.build_pit_page("PIT", {"match_all": {}}, ("doc_id", "doc_sha"), 7, [5]) == {
        "pit": {"id": "PIT", "keep_alive": q.PIT_KEEP_ALIVE},
        "query": {"match_all": {}},
        "sort": [{"_shard_doc": "asc"}],
        "size": 7,
        "_source": ["doc_id", "doc_sha"],
        "track_total_hits": False,
        "search_after": [5],
    }


def test_count_body() -> None:
    assert q.build_count_body() == {
        "size": 0,
        "track_total_hits": True,
        "aggs": {"documents": {"cardinality": {"field": "doc_id", "precision_threshold": 40_000}}},
    }


def test_kibana_request_is_path_then_ndjson() -> None:
    text = q.kibana_request("GET", "/esrag/_msearch", [{"index": "esrag"}, {"size": 1}])
    assert text == 'GET esrag/_msearch\n{"index": "esrag"}\n{"size": 1}\n'
