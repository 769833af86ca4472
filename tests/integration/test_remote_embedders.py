"""The remote embedders against a real embedding server (Infinity serving the packaged all-MiniLM-L6-v2:
tests/fixtures/embed_server.py), on both stores: vectors, ingest and search, the model fingerprint, and the
failures (unreachable, killed mid-ingest, slower than the timeout, 429 bursts and 413 through the fault
proxy)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from esrag import plugins
from esrag.config import Settings
from esrag.embedders import fingerprint
from esrag.embedders.lazy import LazyEmbedder
from esrag.embedders.remote import sendable
from esrag.engine import Engine
from esrag.errors import EmbeddingError, EmbeddingTimeoutError, ModelMismatchError
from esrag.ingest.pipeline import IngestAborted, Ingestor
from esrag.sources.documents import DocumentsSource
from esrag.types import Document, IndexMeta
from tests.fixtures.embed_server import EmbedServer, TeiShim, minilm_path
from tests.fixtures.es import free_port
from tests.fixtures.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration

TEXTS = ["How do I reset my password?", "Elasticsearch stores dense vectors in HNSW graphs.",
         "Der schnelle braune Fuchs springt über den faulen Hund.", "x" * 3000, "🙂 emoji and\ttabs\n",
         "lone surrogate \ud800 here"]


def corpus(n: int = 12) -> list[Document]:
    topics = ["password reset", "vector search", "bulk indexing", "snapshot restore", "query latency",
              "shard allocation"]
    return [Document(doc_id=f"doc-{i}", source=f"docs/doc-{i}.md", title=f"Doc {i}",
                     text=" ".join(f"Paragraph {j} of document {i} is about {topics[(i + j) % len(topics)]}, "
                                   f"with detail number {i * 100 + j}." for j in range(12)))
            for i in range(n)]


def remote(name: str, url: str, **options: Any) -> dict[str, dict[str, Any]]:
    return {f"embedder.{name}": {"url": url, **options}}


def settings_for(store_settings: Callable[..., Settings], name: str, url: str, **options: Any) -> Settings:
    return store_settings(embedder=name, batch_size=8, plugin_options=remote(name, url, **options))


@pytest.mark.parametrize("name", ["openai_compat", "tei"])
def test_vectors_are_within_1e_3_cosine_of_the_local_embedder(name: str, embed_server: EmbedServer,
                                                              tei_shim: TeiShim, embedder: Any) -> None:
    url = tei_shim.url if name == "tei" else embed_server.url
    settings = Settings(embedder=name, plugin_options=remote(name, url, batch_size=4))
    remote_embedder = plugins.load(plugins.EMBEDDERS, name)(settings)
    got = remote_embedder.embed_documents(TEXTS)
    want = embedder.embed_documents([sendable(t) for t in TEXTS])  # the remote one sends U+FFFD for a surrogate
    cosines = np.sum(got * want, axis=1)
    assert got.shape == want.shape == (len(TEXTS), 384)
    assert np.all(cosines >= 1 - 1e-3), cosines
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert remote_embedder.max_tokens == embedder.max_tokens  # chunks are sized as with the local model
    assert remote_embedder.count_tokens(TEXTS[:4]) == embedder.count_tokens(TEXTS[:4])
    assert fingerprint.same_model(fingerprint.compute(remote_embedder), fingerprint.compute(embedder))


@pytest.mark.parametrize("store_name", ["sqlite", "elasticsearch"], indirect=True)
def test_ingest_and_search_through_the_remote_embedder(store_settings: Callable[..., Settings],
                                                       embed_server: EmbedServer) -> None:
    settings = settings_for(store_settings, "openai_compat", embed_server.url, batch_size=4, in_flight=3)
    with Engine(settings) as engine:
        report = engine.ingest_documents(corpus())
        assert report.ok and report.chunks_embedded == report.chunks_written > 0
        hits = engine.search("snapshot restore detail 305", k=3).hits
        assert hits and hits[0].doc_id == "doc-3"
        meta = engine.store.read_meta()
        assert meta is not None and meta.fingerprint.startswith("v1:3x384:")
        # the same model loaded in-process is accepted as the same, both at query time and at ingest
        local = settings.replace(embedder="sentence_transformers")
        with Engine(local) as other:
            assert other.search("snapshot restore detail 305", k=3).hits[0].doc_id == "doc-3"
            again = other.ingest_documents([*corpus(), Document(doc_id="new", source="new.md", text="A new one.")])
            assert again.ok and again.documents_unchanged == 12 and again.documents_new == 1
        engine.drop()


def test_an_index_without_a_fingerprint_keeps_working_and_gets_one(
        make_store: Callable[..., Any], store_settings: Callable[..., Settings], embed_server: EmbedServer) -> None:
    settings = settings_for(store_settings, "openai_compat", embed_server.url)
    with Engine(settings) as engine:
        engine.store.ensure_index(IndexMeta(model=settings.model, dims=384, chunk_size=settings.chunk_size,
                                            chunk_overlap=settings.chunk_overlap, analyzer=settings.analyzer,
                                            embed_template=settings.embed_template))
        assert engine.store.read_meta().fingerprint == ""  # type: ignore[union-attr]
        assert engine.search("anything at all").hits == []  # no fingerprint: nothing to check yet
        assert engine.ingest_documents(corpus(2)).ok
        assert engine.store.read_meta().fingerprint.startswith("v1:")  # type: ignore[union-attr]
        engine.drop()


def noisy_minilm(target: Path, scale: float = 0.1) -> str:
    """A copy of the packaged MiniLM with Gaussian noise (``scale`` x each tensor's std) on its weights:
    another model of the same architecture, size and name."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(minilm_path(), target)
    tensors = load_file(str(target / "model.safetensors"))
    gen = np.random.default_rng(7)
    import torch

    noisy = {k: (v + torch.from_numpy(gen.normal(0, float(v.float().std()) * scale if v.numel() > 1 else 0,
                                                 size=tuple(v.shape)).astype(np.float32)).to(v.dtype)).contiguous()
             for k, v in tensors.items()}
    save_file(noisy, str(target / "model.safetensors"), metadata={"format": "pt"})
    return str(target)


@pytest.mark.parametrize("store_name", ["sqlite"], indirect=True)
def test_another_model_under_the_same_name_is_refused(
        store_settings: Callable[..., Settings], embed_server: EmbedServer,
        embed_server_factory: Callable[..., EmbedServer], tmp_path: Path) -> None:
    other = embed_server_factory(model_path=noisy_minilm(tmp_path / "noisy"))
    settings = settings_for(store_settings, "openai_compat", embed_server.url)
    with Engine(settings) as engine:
        assert engine.ingest_documents(corpus(3)).ok
    impostor = settings_for(store_settings, "openai_compat", other.url).replace(index=settings.index,
                                                                                sqlite_dir=settings.sqlite_dir)
    with Engine(impostor) as engine:
        with pytest.raises(ModelMismatchError, match=f"another model than the embedding server at {other.url}"):
            engine.search("password reset")
        with pytest.raises(Exception, match="named 'sentence-transformers/all-MiniLM-L6-v2'"):
            engine.ingest_documents([Document(doc_id="n", source="n.md", text="something new to embed")])


@pytest.mark.parametrize("store_name", ["sqlite"], indirect=True)
def test_an_unreachable_server_is_a_clear_error_naming_the_url(store_settings: Callable[..., Settings]) -> None:
    url = f"http://user:s3cret-pw@127.0.0.1:{free_port()}"
    settings = settings_for(store_settings, "openai_compat", url, api_key="sk-very-secret-key")
    with Engine(settings) as engine:
        with pytest.raises(IngestAborted) as aborted:
            engine.ingest_documents(corpus(1))  # the fingerprint, before any chunk: nothing can be embedded
        assert isinstance(aborted.value.__cause__, EmbeddingError)
        engine.store.ensure_index(IndexMeta(model=settings.model, dims=384))
        with pytest.raises(EmbeddingError) as searched:
            engine.search("password")
        for message in (str(aborted.value), str(searched.value)):
            assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in message and "cannot reach the embedding server" in message
            assert "s3cret-pw" not in message and "sk-very-secret-key" not in message
        assert EmbeddingError.http_status == 502 and EmbeddingTimeoutError.http_status == 504


@pytest.mark.parametrize("store_name", ["sqlite", "elasticsearch"], indirect=True)
def test_a_server_killed_mid_ingest_fails_only_its_chunks_and_the_rerun_embeds_exactly_those(
        store_settings: Callable[..., Settings], embed_server_factory: Callable[..., EmbedServer]) -> None:
    server = embed_server_factory()
    settings = settings_for(store_settings, "openai_compat", server.url, batch_size=4, in_flight=2)
    # windows of 8 chunks and one window's requests queued ahead: the kill, after the first window is
    # handed over, must leave windows not yet sent, whatever the timing (with 12 documents the one
    # window ahead was sometimes all that was left, and done before the kill)
    docs = corpus(40)
    with Engine(settings) as engine:
        killed = threading.Event()

        def kill_after_first_window(done: int, total: int, report: Any) -> None:
            if not killed.is_set():
                server.kill()
                killed.set()

        ingestor = Ingestor(engine.store, engine.embedder, settings, window=8, on_progress=kill_after_first_window)
        report = ingestor.ingest(DocumentsSource(docs))
        assert killed.is_set() and not report.ok and report.exit_code == 1
        failed = {e.chunk_id for e in report.errors}
        assert failed and all(e.reason.startswith("embedding failed: cannot reach the embedding server")
                              for e in report.errors)
        assert {e.source for e in report.errors} <= {d.source for d in docs}
        assert report.chunks_written > 0 and report.chunks_written + len(failed) == report.chunks_embedded + len(failed)
    revived = embed_server_factory()
    with Engine(settings.replace(plugin_options=remote("openai_compat", revived.url, batch_size=4))) as engine:
        rerun = engine.ingest_documents(docs)
        assert rerun.ok and rerun.chunks_embedded == len(failed)
        assert engine.store.count().chunks == report.chunks_written + len(failed)
        assert engine.ingest_documents(docs).chunks_embedded == 0
        engine.drop()


@pytest.mark.parametrize("store_name", ["sqlite"], indirect=True)
def test_a_server_slower_than_the_timeout_is_a_timeout_error(store_settings: Callable[..., Settings],
                                                             embed_server: EmbedServer) -> None:
    proxy = FaultProxy(embed_server.url)
    try:
        settings = settings_for(store_settings, "openai_compat", proxy.url, timeout=0.5)
        with Engine(settings) as engine:
            proxy.delay(3.0, path="/embeddings", times=None)
            t0 = time.monotonic()
            with pytest.raises(EmbeddingTimeoutError, match=f"{proxy.url} did not answer within 0.5s"):
                engine.embedder.embed_query("slow")
            assert time.monotonic() - t0 < 2.5
    finally:
        proxy.close()


@pytest.mark.parametrize("store_name", ["sqlite", "elasticsearch"], indirect=True)
def test_429_bursts_and_413_are_absorbed(store_settings: Callable[..., Settings], embed_server: EmbedServer) -> None:
    proxy = FaultProxy(embed_server.url)
    try:
        settings = settings_for(store_settings, "openai_compat", proxy.url, batch_size=4, in_flight=4,
                                retry_seconds=20)
        with Engine(settings) as engine:
            assert engine.embedder.dims == 384  # learnt from a request of one text, before the faults
            proxy.status(429, path="/embeddings", times=6)
            proxy.status(503, path="/embeddings", times=2, retry_after=0.1)
            proxy.status(413, path="/embeddings", times=1)
            report = engine.ingest_documents(corpus(6))
            assert report.ok and report.chunks_written == report.chunks_embedded > 0
            faults = [r.fault for r in proxy.requests if r.fault]
            assert faults.count("status") == 9
            assert engine.search("password reset", k=1).hits
            proxy.status(429, path="/embeddings", times=None)
            lasting = settings.replace(plugin_options=remote("openai_compat", proxy.url, retry_seconds=0.5))
            with Engine(lasting) as other, pytest.raises(EmbeddingTimeoutError, match="still answered HTTP 429"):
                other.embedder.embed_query("queue full")
            engine.drop()
    finally:
        proxy.close()


def test_the_remote_embedder_is_thread_safe(embed_server: EmbedServer, embedder: Any) -> None:
    settings = Settings(embedder="openai_compat", plugin_options=remote("openai_compat", embed_server.url))
    lazy = LazyEmbedder(plugins.load(plugins.EMBEDDERS, "openai_compat"), settings)
    want = embedder.embed_documents(TEXTS[:3])
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(lazy.embed_documents(TEXTS[:3]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    assert all(np.all(np.sum(r * want, axis=1) >= 1 - 1e-3) for r in results)


# -- windows overlapping: the next window's requests go out while the previous one is written -------------


class RecordingStore:
    """The real store, with a record of every chunk written (doc_id, chunk_index), in write order; each write
    takes ``pause`` seconds more (a slow store), so that the next windows are embedded meanwhile."""

    def __init__(self, inner: Any, pause: float = 0.0) -> None:
        self._inner = inner
        self.pause = pause
        self.written: list[tuple[str, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, chunks: Any, delete_ids: Any = ()) -> Any:
        items = list(chunks)
        time.sleep(self.pause)
        self.written += [(ec.chunk.doc_id, ec.chunk.chunk_index) for ec in items]
        return self._inner.write(items, delete_ids)


def long_docs(n: int) -> list[Document]:
    """Documents of about 1,100 characters: with chunk_size 48 and a window of 4 chunks, each is a window of
    its own (4 to 16 chunks)."""
    words = ("harbor signal copper meadow falcon ledger prism canyon engine violet orbit lantern quarry "
             "thistle beacon").split()
    return [Document(doc_id=f"long-{i}", source=f"docs/long-{i}.md",
                     text=" ".join(f"{words[(i + j) % len(words)]}{j}" for j in range(120)) + f" doc {i}.")
            for i in range(n)]


@pytest.mark.parametrize("store_name", ["sqlite"], indirect=True)
def test_writes_keep_the_source_order_while_windows_overlap(store_settings: Callable[..., Settings],
                                                            embed_server: EmbedServer) -> None:
    settings = store_settings(embedder="openai_compat", chunk_size=48, chunk_overlap=8,
                              plugin_options=remote("openai_compat", embed_server.url, batch_size=2, in_flight=4))
    docs = long_docs(8)
    with Engine(settings) as engine:
        store = RecordingStore(engine.store, pause=0.05)
        report = Ingestor(store, engine.embedder, settings, window=4).ingest(DocumentsSource(docs))  # type: ignore[arg-type]
        assert report.ok and report.chunks_written == report.chunks_embedded == len(store.written)
        order = {d.doc_id: i for i, d in enumerate(docs)}
        # documents in source order, each one's chunks in order: requests finish out of order, writes do not
        assert store.written == sorted(store.written, key=lambda w: (order[w[0]], w[1]))
        assert {w[0] for w in store.written} == set(order) and len(set(store.written)) == len(store.written)
        assert engine.search("harbor3 signal4", k=3).hits
        engine.drop()


@pytest.mark.parametrize("store_name", ["sqlite"], indirect=True)
def test_a_failure_in_the_next_window_while_the_previous_is_written_fails_only_its_chunks(
        store_settings: Callable[..., Settings], embed_server: EmbedServer) -> None:
    proxy = FaultProxy(embed_server.url)
    try:
        settings = store_settings(embedder="openai_compat", chunk_size=48, chunk_overlap=8,
                                  plugin_options=remote("openai_compat", proxy.url, batch_size=16, in_flight=1))
        docs = long_docs(5)
        with Engine(settings) as engine:
            fingerprint.compute(engine.embedder)  # the probe and the dims, before the faults
            proxy.forget()
            proxy.delay(0.0, path="/embeddings", times=1)  # window 1 (document 0): one request, through
            proxy.status(400, path="/embeddings", times=1)  # window 2 (document 1): refused
            seen: list[int] = []

            def on_progress(done: int, total: int, report: Any) -> None:
                if not seen and report.documents_new:
                    # window 1 is now the writer's; window 2's request goes out without waiting for it
                    deadline = time.monotonic() + 10
                    while len(proxy.paths()) < 2 and time.monotonic() < deadline:
                        time.sleep(0.01)
                    seen.append(len(proxy.paths()))

            store = RecordingStore(engine.store, pause=0.2)
            report = Ingestor(store, engine.embedder, settings, window=4,  # type: ignore[arg-type]
                              on_progress=on_progress).ingest(DocumentsSource(docs))
            assert len(proxy.paths()) == len(docs)  # one request a window, as designed
            assert seen and seen[0] >= 2
            assert not report.ok and report.exit_code == 1
            failed = {e.chunk_id for e in report.errors}
            assert failed and {e.source for e in report.errors} == {docs[1].source}
            assert all("embedding failed" in e.reason and "HTTP 400" in e.reason for e in report.errors)
            written = [d for d, _ in store.written]
            assert sorted(set(written), key=written.index) == [d.doc_id for d in docs if d is not docs[1]]
            stored = engine.store.list_chunks([d.doc_id for d in docs])
            assert docs[1].doc_id not in stored and all(stored[d.doc_id] for d in docs if d is not docs[1])
        proxy.clear()
        with Engine(settings) as engine:
            rerun = engine.ingest_documents(docs)
            assert rerun.ok and rerun.chunks_embedded == len(failed)
            assert {r.id for r in engine.store.list_chunks([docs[1].doc_id])[docs[1].doc_id]} == failed
            assert engine.ingest_documents(docs).chunks_embedded == 0
            engine.drop()
    finally:
        proxy.close()
