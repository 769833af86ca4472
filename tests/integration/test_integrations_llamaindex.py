"""esrag's LlamaIndex retriever on a real index of each store: a LlamaIndex query engine with LlamaIndex's
own mock LLM, LlamaIndex metadata filters, options, async and threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.llms import CompletionResponse, MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters
from pydantic import Field

from esrag.config import Settings
from esrag.errors import ConfigError
from esrag.integrations.llamaindex import EsragRetriever
from esrag.types import Hit
from tests.integration.adapter_corpus import QUERY, RecordingEngine, hits, indexed_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(fake_distribution: Path, store_settings: Callable[..., Settings]) -> Iterator[RecordingEngine]:
    with indexed_engine(store_settings(embedder="hashed")) as eng:
        yield eng


class PromptRecordingLLM(MockLLM):
    """LlamaIndex's mock LLM, keeping the prompts it was given."""

    prompts: list[str] = Field(default_factory=list)

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        self.prompts.append(prompt)
        return super().complete(prompt, formatted, **kwargs)


def assert_same(nodes: list[NodeWithScore], expected: list[Hit]) -> None:
    """The nodes are the hits (some), in the same order, with their text, ids, scores and metadata."""
    assert expected
    assert [n.node.node_id for n in nodes] == [h.id for h in expected]
    for n, h in zip(nodes, expected, strict=True):
        assert n.score == h.score
        assert n.node.get_content() == h.text
        assert n.node.relationships[NodeRelationship.SOURCE].node_id == h.doc_id
        assert n.node.metadata == {**h.metadata, "chunk_id": h.id, "doc_id": h.doc_id, "source": h.source,
                                   "title": h.title, "chunk_index": h.chunk_index, "score": h.score,
                                   "bm25_score": h.bm25_score, "dense_score": h.dense_score,
                                   "bm25_rank": h.bm25_rank, "dense_rank": h.dense_rank, "bm25_norm": h.bm25_norm,
                                   "dense_norm": h.dense_norm}


def test_a_query_engine_answers_from_esrag_hits_in_esrag_order(engine: RecordingEngine) -> None:
    llm = PromptRecordingLLM(max_tokens=8)
    retriever = EsragRetriever(engine, similarity_top_k=3)
    query_engine = RetrieverQueryEngine.from_args(retriever, llm=llm)
    response = query_engine.query(QUERY)
    expected = hits(engine, k=3)
    assert_same(response.source_nodes, expected)
    assert str(response) == " ".join(["text"] * 8)  # the mock LLM's answer
    # the prompt the LLM got holds the passages in esrag's order, with source and title but no scores
    assert len(llm.prompts) == 1
    prompt = llm.prompts[0]
    positions = [prompt.index(h.text) for h in expected]
    assert positions == sorted(positions)
    assert f"source: {expected[0].source}" in prompt and "bm25_score" not in prompt
    assert "chunk_id" not in response.source_nodes[0].node.get_content(MetadataMode.LLM)


def test_llamaindex_filters_and_options_reach_esrag(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine, similarity_top_k=4, filters=MetadataFilters(filters=[
        MetadataFilter(key="team", value=["platform", "security"], operator=FilterOperator.IN),
        MetadataFilter(key="year", value=2022)]))
    assert_same(retriever.retrieve(QUERY), hits(engine, k=4, filters={"team": ("platform", "security"),
                                                                      "year": ("2022",)}))
    # the same key twice in an AND keeps the values both allow; attributes are read at each call
    retriever.filters = MetadataFilters(filters=[
        MetadataFilter(key="team", value=["platform", "security"], operator=FilterOperator.IN),
        MetadataFilters(filters=[MetadataFilter(key="team", value="security")])])
    retriever.alpha, retriever.mode = 0.25, "hybrid"
    assert_same(retriever.retrieve(QUERY), hits(engine, k=4, alpha=0.25, filters={"team": ("security",)}))
    retriever.filters = {"team": "nobody"}
    assert retriever.retrieve(QUERY) == []
    retriever.filters = MetadataFilters(filters=[MetadataFilter(key="team", value="data"),
                                                 MetadataFilter(key="team", value="platform")])
    assert retriever.retrieve(QUERY) == []
    assert_same(EsragRetriever(engine, mode="bm25").retrieve(QUERY), hits(engine, mode="bm25"))
    assert EsragRetriever(engine, similarity_top_k=0).retrieve(QUERY) == []


def test_unsupported_filters_and_bad_options_are_config_errors(engine: RecordingEngine) -> None:
    with pytest.raises(ConfigError, match="equality only"):
        EsragRetriever(engine, filters=MetadataFilters(filters=[
            MetadataFilter(key="year", value=2023, operator=FilterOperator.GT)]))
    with pytest.raises(ConfigError, match="AND only"):
        EsragRetriever(engine, filters=MetadataFilters(condition=FilterCondition.OR, filters=[
            MetadataFilter(key="team", value="data"), MetadataFilter(key="year", value=2023)]))
    with pytest.raises(ConfigError, match="similarity_top_k|k must be"):
        EsragRetriever(engine, similarity_top_k=-1)


@pytest.mark.anyio
async def test_aretrieve_searches_in_a_worker_thread_not_on_the_event_loop(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine, similarity_top_k=2, filters={"team": "data"})
    engine.threads.clear()
    nodes = await retriever.aretrieve(QUERY)
    assert engine.threads and threading.get_ident() not in engine.threads
    assert_same(nodes, hits(engine, k=2, filters={"team": ("data",)}))


def test_one_retriever_called_from_two_threads_at_once(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine, similarity_top_k=4)
    queries = [QUERY, "database backups", "deploy canary", "on-call rotation"] * 4
    expected = {q: [h.id for h in hits(engine, q, k=4)] for q in set(queries)}
    barrier = threading.Barrier(2)

    def run(half: list[str]) -> list[tuple[str, list[str]]]:
        barrier.wait()
        return [(q, [n.node.node_id for n in retriever.retrieve(q)]) for q in half]

    with ThreadPoolExecutor(2) as pool:
        results = [r for f in [pool.submit(run, queries[0::2]), pool.submit(run, queries[1::2])] for r in f.result()]
    assert len(results) == len(queries)
    assert all(ids == expected[q] for q, ids in results)
