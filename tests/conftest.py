from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.es", "tests.fixtures.llm", "tests.fixtures.fault_proxy", "tests.plugins.dist", "tests.fixtures.api",
    "tests.fixtures.embed_server",
]

from esrag import plugins  # noqa: E402
from esrag.config import Settings  # noqa: E402
from esrag.stores.base import Store  # noqa: E402

STORE_NAMES = ("sqlite", "elasticsearch")
_counter = itertools.count()


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test reads the developer's esrag config or ESRAG_* variables (except the test-server ones)."""
    for key in list(os.environ):
        if key.startswith("ESRAG_") and not key.startswith("ESRAG_TEST_"):
            monkeypatch.delenv(key)
    cfg = tmp_path_factory.mktemp("cfg") / "esrag.toml"
    cfg.write_text("")
    monkeypatch.setenv("ESRAG_CONFIG", str(cfg))


@pytest.fixture(scope="session")
def embedder():  # type: ignore[no-untyped-def]
    """The real packaged all-MiniLM-L6-v2 (loaded once per session)."""
    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder(device="cpu", batch_size=32)


@pytest.fixture(params=STORE_NAMES)
def store_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_settings(
    store_name: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., Settings]:
    """Factory of Settings for the parametrised store, each call a fresh unique index."""

    def make(**overrides: object) -> Settings:
        index = f"t{os.getpid()}-{next(_counter)}"
        base: dict[str, object] = {"store": store_name, "index": index, "index_options": "hnsw"}
        if store_name == "elasticsearch":
            base["es_url"] = request.getfixturevalue("es_url")
        else:
            base["sqlite_dir"] = str(tmp_path_factory.mktemp("sqlite"))
        base.update(overrides)
        return Settings(**base)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_store(store_name: str, store_settings: Callable[..., Settings]) -> Iterator[Callable[..., Store]]:
    """Factory of fresh empty stores of the parametrised kind; dropped after the test."""
    made: list[Store] = []

    def make(**overrides: object) -> Store:
        settings = store_settings(**overrides)
        store: Store = plugins.load(plugins.STORES, store_name)(settings)
        made.append(store)
        return store

    yield make
    for s in made:
        try:
            s.drop()
        finally:
            s.close()
