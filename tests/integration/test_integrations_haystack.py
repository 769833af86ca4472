"""esrag's Haystack retriever on a real index of each store: a Haystack Pipeline with a PromptBuilder,
serialisation (component and pipeline), Haystack filters and filter policies, async and threads."""

from __future__ import annotations

import os

os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")  # before haystack is imported: no usage reports

import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from haystack import Document, Pipeline  # noqa: E402
from haystack.components.builders import PromptBuilder  # noqa: E402
from haystack.core.errors import DeserializationError  # noqa: E402

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.errors import ConfigError  # noqa: E402
from esrag.integrations.haystack import EsragRetriever  # noqa: E402
from esrag.types import Hit  # noqa: E402
from tests.integration.adapter_corpus import QUERY, RecordingEngine, hits, indexed_engine  # noqa: E402

pytestmark = pytest.mark.integration

TEMPLATE = """{% for d in documents %}[{{ loop.index }}] {{ d.meta.title }}: {{ d.content }}
{% endfor %}Question: {{ query }}"""
MODULE = "esrag.integrations.haystack"


@pytest.fixture
def engine(fake_distribution: Path, store_settings: Callable[..., Settings]) -> Iterator[RecordingEngine]:
    with indexed_engine(store_settings(embedder="hashed")) as eng:
        yield eng


def assert_same(docs: list[Document], expected: list[Hit]) -> None:
    """The documents are the hits (some), in the same order, with their text, id, score and metadata."""
    assert expected
    assert [d.id for d in docs] == [h.id for h in expected]
    for d, h in zip(docs, expected, strict=True):
        assert (d.content, d.score) == (h.text, h.score)
        assert d.meta == {**h.metadata, "chunk_id": h.id, "doc_id": h.doc_id, "source": h.source, "title": h.title,
                          "chunk_index": h.chunk_index, "score": h.score, "bm25_score": h.bm25_score,
                          "dense_score": h.dense_score, "bm25_rank": h.bm25_rank, "dense_rank": h.dense_rank,
                          "bm25_norm": h.bm25_norm, "dense_norm": h.dense_norm}


def rag_pipeline(retriever: EsragRetriever) -> Pipeline:
    pipeline = Pipeline()
    pipeline.add_component("retriever", retriever)
    pipeline.add_component("prompt", PromptBuilder(template=TEMPLATE, required_variables=["documents", "query"]))
    pipeline.connect("retriever.documents", "prompt.documents")
    return pipeline


def run(pipeline: Pipeline, **retriever_inputs: Any) -> dict[str, Any]:
    return pipeline.run({"retriever": {"query": QUERY, **retriever_inputs}, "prompt": {"query": QUERY}},
                        include_outputs_from={"retriever"})


def test_a_pipeline_builds_its_prompt_from_esrag_hits_in_esrag_order(engine: RecordingEngine) -> None:
    out = run(rag_pipeline(EsragRetriever(engine=engine, top_k=3)))
    expected = hits(engine, k=3)
    assert_same(out["retriever"]["documents"], expected)
    assert out["prompt"]["prompt"] == "".join(f"[{i}] {h.title}: {h.text}\n" for i, h in enumerate(expected, 1)) \
        + f"Question: {QUERY}"


def test_top_k_filters_and_options_reach_esrag(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, top_k=4, alpha=0.3,
                               filters={"field": "meta.team", "operator": "in", "value": ["platform", "data"]})
    assert_same(retriever.run(QUERY)["documents"], hits(engine, k=4, alpha=0.3, filters={"team": ("platform", "data")}))
    # replace (Haystack's default policy): the run's filters instead of the constructor's
    assert_same(retriever.run(QUERY, filters={"field": "meta.team", "operator": "==", "value": "security"},
                              top_k=2)["documents"], hits(engine, k=2, alpha=0.3, filters={"team": ("security",)}))
    nested = {"operator": "AND", "conditions": [
        {"field": "meta.team", "operator": "in", "value": ["platform", "data"]},
        {"operator": "AND", "conditions": [{"field": "meta.year", "operator": "==", "value": 2023}]}]}
    assert_same(retriever.run(QUERY, filters=nested)["documents"],
                hits(engine, k=4, alpha=0.3, filters={"team": ("platform", "data"), "year": ("2023",)}))
    assert retriever.run(QUERY, filters={"field": "meta.team", "operator": "==", "value": "nobody"})["documents"] == []
    assert retriever.run(QUERY, top_k=0)["documents"] == []
    assert_same(run(rag_pipeline(retriever), top_k=1, filters={"team": "data"})["retriever"]["documents"],
                hits(engine, k=1, alpha=0.3, filters={"team": ("data",)}))
    assert_same(EsragRetriever(engine=engine, mode="bm25").run(QUERY)["documents"], hits(engine, k=10, mode="bm25"))


def test_the_merge_policy_replaces_only_the_fields_the_run_names(engine: RecordingEngine) -> None:
    init = {"operator": "AND", "conditions": [{"field": "meta.team", "operator": "==", "value": "platform"},
                                              {"field": "meta.year", "operator": "in", "value": [2022, 2023]}]}
    retriever = EsragRetriever(engine=engine, top_k=5, filter_policy="merge", filters=init)
    assert_same(retriever.run(QUERY)["documents"], hits(engine, k=5, filters={"team": ("platform",),
                                                                             "year": ("2022", "2023")}))
    security = {"field": "meta.team", "operator": "==", "value": "security"}
    assert_same(retriever.run(QUERY, filters=security)["documents"],
                hits(engine, k=5, filters={"team": ("security",), "year": ("2022", "2023")}))


def test_unsupported_filters_and_bad_options_are_config_errors(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine)
    with pytest.raises(ConfigError, match="equality only"):
        retriever.run(QUERY, filters={"field": "meta.year", "operator": ">", "value": 2022})
    with pytest.raises(ConfigError, match="AND only"):
        retriever.run(QUERY, filters={"operator": "OR", "conditions": [
            {"field": "meta.team", "operator": "==", "value": "data"}]})
    with pytest.raises(ConfigError, match="meta fields only"):
        retriever.run(QUERY, filters={"field": "content", "operator": "==", "value": "x"})
    with pytest.raises(ConfigError, match="normalization must be one of"):
        EsragRetriever(engine=engine, normalization="l2")
    with pytest.raises(ConfigError, match="not both"):
        EsragRetriever(engine=engine, settings={"index": "other"})


def test_to_dict_and_from_dict_round_trip_the_component_and_a_pipeline(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, top_k=2, filters={"team": "platform"}, alpha=0.4, mode="hybrid")
    data = retriever.to_dict()
    assert data["type"] == f"{MODULE}.EsragRetriever"
    params = data["init_parameters"]
    assert params["settings"]["index"] == engine.settings.index and params["settings"]["embedder"] == "hashed"
    assert (params["top_k"], params["filters"], params["alpha"], params["mode"]) == (2, {"team": "platform"}, 0.4,
                                                                                      "hybrid")
    again = EsragRetriever.from_dict(data)
    assert again.engine.settings.index == engine.settings.index
    assert_same(again.run(QUERY)["documents"], hits(engine, k=2, alpha=0.4, filters={"team": ("platform",)}))
    again.engine.close()

    pipeline = rag_pipeline(retriever)
    with pytest.raises(DeserializationError, match="allowlist"):  # Haystack trusts third-party modules by choice
        Pipeline.loads(pipeline.dumps())
    loaded = Pipeline.loads(pipeline.dumps(), allowed_modules=[MODULE])
    assert run(loaded)["prompt"] == run(pipeline)["prompt"]
    loaded_retriever = loaded.get_component("retriever")
    assert isinstance(loaded_retriever, EsragRetriever)
    loaded_retriever.engine.close()


def test_to_dict_writes_no_secret_and_the_loaded_one_reads_them_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(es_url="http://elastic:s3cret-pw@localhost:9200", es_api_key="key-123", index="docs",
                        llm_api_key="llm-456", alpha=0.5)
    data = EsragRetriever(engine=Engine(settings)).to_dict()  # an engine connects on first use only
    text = repr(data)
    assert "s3cret-pw" not in text and "key-123" not in text and "llm-456" not in text
    assert data["init_parameters"]["settings"] == {"index": "docs", "alpha": 0.5}
    monkeypatch.setenv("ESRAG_ES_URL", "http://elastic:s3cret-pw@localhost:9200")
    monkeypatch.setenv("ESRAG_ES_API_KEY", "key-123")
    loaded = EsragRetriever.from_dict(data).engine.settings
    assert (loaded.es_url, loaded.es_api_key, loaded.index, loaded.alpha) == (settings.es_url, "key-123", "docs", 0.5)


@pytest.mark.anyio
async def test_run_async_searches_in_a_worker_thread_and_async_pipelines_use_it(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, top_k=2)
    engine.threads.clear()
    out = await retriever.run_async(QUERY, filters={"team": "security"})
    assert engine.threads and threading.get_ident() not in engine.threads
    assert_same(out["documents"], hits(engine, k=2, filters={"team": ("security",)}))
    engine.threads.clear()
    result = await rag_pipeline(retriever).run_async({"retriever": {"query": QUERY}, "prompt": {"query": QUERY}},
                                                     include_outputs_from={"retriever"})
    assert engine.threads and threading.get_ident() not in engine.threads
    assert_same(result["retriever"]["documents"], hits(engine, k=2))


def test_warm_up_loads_the_embedder_unless_the_retriever_is_bm25_only(engine: RecordingEngine) -> None:
    fresh = Engine(engine.settings)
    EsragRetriever(engine=fresh, mode="bm25").warm_up()
    assert not fresh.embedder.loaded
    EsragRetriever(engine=fresh).warm_up()
    assert fresh.embedder.loaded
    fresh.close()


def test_one_component_run_from_two_threads_at_once(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, top_k=4)
    queries = [QUERY, "database backups", "deploy canary", "on-call rotation"] * 4
    expected = {q: [h.id for h in hits(engine, q, k=4)] for q in set(queries)}
    barrier = threading.Barrier(2)

    def go(half: list[str]) -> list[tuple[str, list[str]]]:
        barrier.wait()
        return [(q, [d.id for d in retriever.run(q)["documents"]]) for q in half]

    with ThreadPoolExecutor(2) as pool:
        results = [r for f in [pool.submit(go, queries[0::2]), pool.submit(go, queries[1::2])] for r in f.result()]
    assert len(results) == len(queries)
    assert all(ids == expected[q] for q, ids in results)
