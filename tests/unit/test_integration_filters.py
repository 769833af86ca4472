"""The adapters' pure parts: filters in (esrag's, LlamaIndex's and Haystack's), options checked, hits out."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

from llama_index.core.vector_stores.types import (  # noqa: E402
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from esrag.errors import ConfigError  # noqa: E402
from esrag.integrations import _common  # noqa: E402
from esrag.integrations import haystack as hs  # noqa: E402
from esrag.integrations import llamaindex as li  # noqa: E402
from esrag.types import Hit  # noqa: E402


def test_esrag_filters_become_string_tuples_as_the_stores_compare_them() -> None:
    assert _common.to_filters(None) == {}
    assert _common.to_filters({"team": "db", "year": 2024, "ok": True, "tags": ["a", "b"], "none": [],
                               "x": (1.5, False)}) == {
        "team": ("db",), "year": ("2024",), "ok": ("true",), "tags": ("a", "b"), "none": (), "x": ("1.5", "false")}


@pytest.mark.parametrize(("filters", "message"), [
    ({"team": None}, "filters.team: expected a string, number or boolean"),
    ({"team": {"a": 1}}, "filters.team"),
    ({"team": [["a"]]}, "filters.team"),
    ({"": "a"}, "non-empty string"),
    (["team", "a"], "expected a mapping"),
])
def test_bad_filters_are_config_errors_naming_the_field(filters: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        _common.to_filters(filters)  # type: ignore[arg-type]
    assert err.value.field == "filters"


def test_a_conjunction_intersects_the_values_of_a_key_given_twice() -> None:
    c = _common.Conjunction()
    c.add("team", ["a", "b", "c"])
    c.add("year", [2024])
    c.add("team", ["c", "b", "z"])
    assert c.filters == {"team": ("b", "c"), "year": ("2024",)}
    c.add("year", [2025])
    assert c.filters["year"] == ()  # matches nothing, as the AND of year == 2024 and year == 2025


@pytest.mark.parametrize(("k", "options", "field"), [
    (-1, {}, "k"), (True, {}, "k"), (None, {"mode": "semantic"}, "mode"), (None, {"fusion": "max"}, "fusion"),
    (None, {"normalization": "l2"}, "normalization"), (None, {"alpha": 1.01}, "alpha"),
    (None, {"alpha": float("nan")}, "alpha"), (None, {"doc_weight": -0.1}, "doc_weight"),
    (None, {"candidates": 0}, "candidates"), (None, {"rrf_k": 0}, "rrf_k"), (None, {"boost": 2}, "boost"),
])
def test_bad_options_are_config_errors_naming_the_option(k: int | None, options: dict[str, object],
                                                          field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _common.check_options(k, options)
    assert err.value.field == field


def test_good_options_pass() -> None:
    _common.check_options(0, {"mode": "dense", "alpha": 1.0, "fusion": "rrf", "normalization": "none",
                              "doc_weight": 0.0, "candidates": 1, "rrf_k": 60})
    _common.check_options(None, dict.fromkeys(_common.SEARCH_OPTIONS))


def test_hit_metadata_is_the_hits_metadata_then_its_positions_and_scores() -> None:
    hit = Hit(id="c1", doc_id="d", source="d.md", title="T", text="x", chunk_index=2, score=0.9, bm25_score=None,
              dense_score=0.8, bm25_rank=None, dense_rank=1, bm25_norm=0.0, dense_norm=1.0,
              metadata={"team": "db", "score": "user's"})
    assert _common.hit_metadata(hit) == {
        "team": "db", "chunk_id": "c1", "doc_id": "d", "source": "d.md", "title": "T", "chunk_index": 2,
        "score": 0.9, "bm25_score": None, "dense_score": 0.8, "bm25_rank": None, "dense_rank": 1, "bm25_norm": 0.0,
        "dense_norm": 1.0}


def test_llamaindex_equality_filters_translate_and_others_are_refused() -> None:
    filters = MetadataFilters(filters=[
        MetadataFilter(key="team", value="db"),
        MetadataFilter(key="year", value=[2023, 2024], operator=FilterOperator.IN),
        MetadataFilters(filters=[MetadataFilter(key="year", value=[2024, 2025], operator=FilterOperator.IN)]),
    ])
    assert li.to_esrag_filters(filters) == {"team": ("db",), "year": ("2024",)}
    assert li.to_esrag_filters({"team": ["a", "b"]}) == {"team": ("a", "b")}
    assert li.to_esrag_filters(MetadataFilters(filters=[MetadataFilter(key="t", value="x")],
                                               condition=FilterCondition.OR)) == {"t": ("x",)}  # OR of one
    for bad in (MetadataFilters(filters=[MetadataFilter(key="y", value=1, operator=FilterOperator.NE)]),
                MetadataFilters(filters=[MetadataFilter(key="a", value="x"), MetadataFilter(key="b", value="y")],
                                condition=FilterCondition.OR),
                MetadataFilters(filters=[MetadataFilter(key="a", value="x")], condition=FilterCondition.NOT)):
        with pytest.raises(ConfigError):
            li.to_esrag_filters(bad)


def test_haystack_equality_filters_translate_and_others_are_refused() -> None:
    filters = {"operator": "AND", "conditions": [
        {"field": "meta.team", "operator": "==", "value": "db"},
        {"field": "meta.doc_id", "operator": "in", "value": ["a.md", "b.md"]},
        {"operator": "AND", "conditions": [{"field": "meta.doc_id", "operator": "==", "value": "b.md"}]},
    ]}
    assert hs.to_esrag_filters(filters) == {"team": ("db",), "doc_id": ("b.md",)}
    assert hs.to_esrag_filters({"field": "meta.ok", "operator": "==", "value": True}) == {"ok": ("true",)}
    assert hs.to_esrag_filters({"team": "db"}) == {"team": ("db",)}  # esrag's own form
    assert hs.to_esrag_filters(None) == {}
    for bad, message in [
        ({"field": "meta.year", "operator": ">=", "value": 2020}, "equality only"),
        ({"field": "meta.year", "operator": "not in", "value": [2020]}, "equality only"),
        ({"field": "meta.team", "operator": "in", "value": "db"}, "takes a list"),
        ({"field": "id", "operator": "==", "value": "x"}, "meta fields only"),
        ({"operator": "NOT", "conditions": [{"field": "meta.a", "operator": "==", "value": "x"}]}, "AND only"),
        ({"operator": "AND", "conditions": [{"field": "meta.a", "value": "x"}]}, "not a Haystack filter"),
    ]:
        with pytest.raises(ConfigError, match=message):
            hs.to_esrag_filters(bad)


def test_saved_settings_leave_out_secrets_urls_with_passwords_and_defaults() -> None:
    from esrag.config import Settings

    s = Settings(es_url="https://u:p@es:9200", es_api_key="k", es_password="p",  # noqa: S106
                 llm_api_key="l", index="docs",
                 llm_url="http://llm:8080/v1")
    assert hs.saved_settings(s) == {"index": "docs", "llm_url": "http://llm:8080/v1"}
    assert hs.saved_settings(Settings(es_url="https://es:9200", llm_url="http://u:p@llm/v1")) == {
        "es_url": "https://es:9200"}
