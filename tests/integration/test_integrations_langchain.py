"""esrag's LangChain retriever on a real index of each store: LangChain's own standard retriever tests
(langchain-tests, unmodified), an LCEL chain with LangChain's own fake chat model, per-call options, async
and threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document as LCDocument
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import ConfigurableField, RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests

from esrag.config import Settings
from esrag.errors import ConfigError, IndexNotFoundError
from esrag.integrations.langchain import EsragRetriever
from esrag.types import Hit
from tests.integration.adapter_corpus import QUERY, RecordingEngine, hits, indexed_engine

pytestmark = pytest.mark.integration


@pytest.fixture
def engine(fake_distribution: Path, store_settings: Callable[..., Settings]) -> Iterator[RecordingEngine]:
    with indexed_engine(store_settings(embedder="hashed")) as eng:
        yield eng


def assert_same(docs: list[LCDocument], expected: list[Hit]) -> None:
    """The documents are the hits (some), in the same order, with their text, id, metadata and scores."""
    assert expected
    assert [d.id for d in docs] == [h.id for h in expected]
    for d, h in zip(docs, expected, strict=True):
        assert d.page_content == h.text
        assert d.metadata == {**h.metadata, "chunk_id": h.id, "doc_id": h.doc_id, "source": h.source,
                              "title": h.title, "chunk_index": h.chunk_index, "score": h.score,
                              "bm25_score": h.bm25_score, "dense_score": h.dense_score, "bm25_rank": h.bm25_rank,
                              "dense_rank": h.dense_rank, "bm25_norm": h.bm25_norm, "dense_norm": h.dense_norm}


@pytest.mark.anyio  # runs the standard suite's one async test (test_ainvoke_returns_documents)
class TestEsragRetrieverStandard(RetrieversIntegrationTests):
    """LangChain's standard retriever tests, as published, on each store."""

    @pytest.fixture(autouse=True)
    def _index(self, engine: RecordingEngine) -> None:
        self._engine = engine

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return EsragRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"engine": self._engine}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def test_an_lcel_chain_puts_esrag_hits_in_esrag_order_into_the_prompt(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, k=4)
    seen: list[list[LCDocument]] = []

    def context(docs: list[LCDocument]) -> str:
        seen.append(docs)
        return "\n".join(f"[{i}] {d.metadata['title']}: {d.page_content}" for i, d in enumerate(docs, 1))

    prompt = ChatPromptTemplate.from_messages([("human", "Sources:\n{context}\n\nQuestion: {question}")])
    chain = {"context": retriever | context, "question": RunnablePassthrough()} | prompt | ParrotFakeChatModel() \
        | StrOutputParser()
    answer = chain.invoke(QUERY)
    expected = hits(engine, k=4)
    assert len(expected) == 4
    assert_same(seen[0], expected)
    assert answer == ("Sources:\n" + "\n".join(f"[{i}] {h.title}: {h.text}" for i, h in enumerate(expected, 1))
                      + f"\n\nQuestion: {QUERY}")


def test_per_call_options_and_filters_reach_esrag(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, k=5, filters={"team": ["platform", "security"]})
    assert_same(retriever.invoke(QUERY), hits(engine, k=5, filters={"team": ("platform", "security")}))
    # a key given per call replaces that key; other keys of the constructor's filters stay
    assert_same(retriever.invoke(QUERY, filters={"team": "security"}, k=2, alpha=0.2, mode="hybrid"),
                hits(engine, k=2, alpha=0.2, filters={"team": ("security",)}))
    assert_same(retriever.invoke(QUERY, filters={"year": 2023}, mode="bm25"),
                hits(engine, k=5, mode="bm25", filters={"team": ("platform", "security"), "year": ("2023",)}))
    assert retriever.invoke(QUERY, filters={"team": "nobody"}) == []
    assert retriever.invoke(QUERY, k=0) == []
    assert_same(EsragRetriever(engine=engine, mode="dense", alpha=1.0).invoke(QUERY), hits(engine, mode="dense"))


def test_options_come_through_the_invoke_config_with_configurable_fields(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine).configurable_fields(
        k=ConfigurableField(id="k"), alpha=ConfigurableField(id="alpha"), filters=ConfigurableField(id="filters"))
    docs = retriever.invoke(QUERY, config={"configurable": {"k": 3, "alpha": 0.9, "filters": {"team": "data"}}})
    assert_same(docs, hits(engine, k=3, alpha=0.9, filters={"team": ("data",)}))
    assert_same(retriever.invoke(QUERY), hits(engine))


def test_bad_options_and_a_missing_index_are_esrag_errors(engine: RecordingEngine,
                                                           store_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="mode must be one of"):
        EsragRetriever(engine=engine, mode="semantic")
    with pytest.raises(ConfigError, match="alpha must be between 0 and 1"):
        EsragRetriever(engine=engine).invoke(QUERY, alpha=1.5)
    with pytest.raises(ConfigError, match="filters.team"):
        EsragRetriever(engine=engine).invoke(QUERY, filters={"team": None})
    with pytest.raises(ConfigError, match="query is empty"):
        EsragRetriever(engine=engine).invoke("  ")
    empty = RecordingEngine(store_settings(embedder="hashed"))
    with pytest.raises(IndexNotFoundError):
        EsragRetriever(engine=empty).invoke(QUERY)
    empty.close()


@pytest.mark.anyio
async def test_ainvoke_searches_in_a_worker_thread_not_on_the_event_loop(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, k=3)
    engine.threads.clear()
    docs = await retriever.ainvoke(QUERY, filters={"team": "platform"}, alpha=0.3)
    assert engine.threads and threading.get_ident() not in engine.threads
    assert_same(docs, hits(engine, k=3, alpha=0.3, filters={"team": ("platform",)}))


def test_one_retriever_called_from_two_threads_at_once(engine: RecordingEngine) -> None:
    retriever = EsragRetriever(engine=engine, k=4)
    queries = [QUERY, "database backups", "deploy canary", "on-call rotation"] * 4
    expected = {q: [h.id for h in hits(engine, q, k=4)] for q in set(queries)}
    barrier = threading.Barrier(2)

    def run(half: list[str]) -> list[tuple[str, list[str]]]:
        barrier.wait()
        return [(q, [d.id or "" for d in retriever.invoke(q)]) for q in half]

    with ThreadPoolExecutor(2) as pool:
        results = [r for f in [pool.submit(run, queries[0::2]), pool.submit(run, queries[1::2])] for r in f.result()]
    assert len(results) == len(queries)
    assert all(ids == expected[q] for q, ids in results)
