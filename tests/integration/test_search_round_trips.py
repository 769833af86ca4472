"""HTTP requests per search through the engine (the path the CLI and the API take), counted by the
fault-injecting proxy in front of the Elasticsearch test server: one ``_msearch`` per search or answer once
the engine has seen its index, and a missing index is still the same clear error."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from esrag.config import Settings
from esrag.engine import Engine
from esrag.errors import IndexNotFoundError
from esrag.types import Document
from tests.fixtures.engines import ingested
from tests.fixtures.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration

DOCS = [Document(doc_id=f"d{i}", source=f"d{i}.md", title=f"Doc {i}",
                 text=f"Document number {i} talks about topic {i % 5}. It rotates keys every {i} days.")
        for i in range(20)]


@pytest.fixture
def store_name() -> str:  # ES only: the round trips are HTTP requests
    return "elasticsearch"


@pytest.fixture
def settings(fake_distribution: Path, store_settings: Callable[..., Settings], fault_proxy: FaultProxy) -> Settings:
    return store_settings(es_url=fault_proxy.url, embedder="hashed", generator="none")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    with ingested(settings, DOCS) as eng:
        yield eng


def test_a_search_is_one_msearch_once_the_engine_has_seen_its_index(engine: Engine,
                                                                     fault_proxy: FaultProxy) -> None:
    engine.search("topic 3")  # the first: the index and its model are checked once
    for mode in ("hybrid", "bm25", "dense"):
        for query in ("topic 1", "how often are keys rotated?", "document number 7"):
            fault_proxy.forget()
            assert engine.search(query, mode=mode, k=3).hits
            assert fault_proxy.paths() == [f"/{engine.settings.index}/_msearch"], (mode, query)
    fault_proxy.forget()
    answer = engine.ask("how often are keys rotated?")
    assert answer.passages
    assert fault_proxy.paths() == [f"/{engine.settings.index}/_msearch"]


def test_a_missing_index_is_the_same_clear_error_before_and_after_searches(settings: Settings,
                                                                           fault_proxy: FaultProxy) -> None:
    with Engine(settings) as fresh, pytest.raises(IndexNotFoundError) as never_there:
        fresh.search("topic 1")
    assert fresh.embedder.loaded is False  # reported before the model loads

    eng = Engine(settings)
    assert eng.ingest_documents(DOCS).ok
    eng.search("topic 1")
    with Engine(settings) as other:
        assert other.drop()  # dropped behind the first engine's back
    fault_proxy.forget()
    with pytest.raises(IndexNotFoundError) as dropped:
        eng.search("topic 1")
    assert fault_proxy.paths() == [f"/{settings.index}/_msearch"]  # learnt from the search's own answer
    with pytest.raises(IndexNotFoundError) as asked:
        eng.ask("topic 1")
    eng.close()
    assert str(dropped.value) == str(never_there.value) == str(asked.value)
    assert f"index '{settings.index}' not found (elasticsearch: {fault_proxy.url})" in str(dropped.value)
    assert "ingest documents first" in str(dropped.value)
