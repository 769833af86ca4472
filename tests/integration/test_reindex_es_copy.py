"""The copy-only reindex on Elasticsearch (``esrag.stores.es_copy``): the chunks are copied inside the server
(``POST _reindex``), on the real server of the tests (noida-db, or the cluster of ``ESRAG_TEST_ES_URL``).

What it must keep: every chunk, field for field, its vector bit for bit and its ``ingested_at``; the search
results; progress; searches from other threads answering throughout; and, when the copy fails half-way
or the reindex is killed during it, the alias where it was (with a message that names the new version).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from esrag.config import Settings
from esrag.engine import Engine
from esrag.errors import ConfigError, StoreError
from esrag.lifecycle.reindex import ReindexReport
from esrag.stores.elasticsearch import ElasticsearchStore
from esrag.types import Chunk, Document, EmbeddedChunk
from tests.fixtures.api import ROOT, store_args
from tests.fixtures.engines import ingested, live_version

pytestmark = [pytest.mark.integration, pytest.mark.parametrize("store_name", ["elasticsearch"])]

TOPICS = ["databases", "search engines", "compilers", "gardening", "astronomy"]
DOCS = [Document(doc_id=f"d{i}", source=f"d{i}.txt", title=f"Doc {i}", metadata={"team": f"t{i % 3}"},
                 text=f"Document {i} is about {TOPICS[i % 5]}. Its second sentence mentions number {i}.")
        for i in range(30)]
QUERIES = ["databases", "astronomy 7", "compilers and number 12", "gardening"]


@pytest.fixture
def settings(store_settings: Callable[..., Settings]) -> Settings:
    return store_settings(device="cpu")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    with ingested(settings, DOCS) as eng:
        yield eng


def _es(eng: Engine) -> ElasticsearchStore:
    assert isinstance(eng.store, ElasticsearchStore)
    return eng.store


def _stored(eng: Engine) -> dict[str, EmbeddedChunk]:
    return {ec.chunk.id: ec for batch in eng.store.iter_chunks() for ec in batch}


def _sources(eng: Engine, fields: list[str]) -> dict[str, dict[str, Any]]:
    store = _es(eng)
    resp = store.client.search(index=store.alias, size=1000, source=fields, query={"match_all": {}})
    return {h["_id"]: h["_source"] for h in resp["hits"]["hits"]}


def _results(eng: Engine) -> list[list[tuple[str, float | None, float | None]]]:
    return [[(h.id, h.bm25_score, h.dense_score) for h in eng.search(q, k=5).hits] for q in QUERIES]


def test_a_copy_inside_the_server_keeps_every_chunk_vector_stamp_and_search_result_and_shows_progress(
        engine: Engine, settings: Settings) -> None:
    store = _es(engine)
    bare = {"doc_id": "bare", "source": "bare.txt", "title": "Bare", "text": "A chunk stored without a vector.",
            "chunk_index": 0, "chunk_count": 1, "section": 0, "start": 0, "end": 32, "doc_sha": "d", "chunk_sha": "s",
            "metadata": {}, "ingested_at": "2020-01-02T03:04:05+00:00"}
    store.client.index(index=store.alias, id="bare", document=bare, refresh=True)  # as a foreign writer left it
    before, stamps = _stored(engine), _sources(engine, ["ingested_at", "embedding"])
    assert "embedding" not in stamps["bare"] and len(before) == len(DOCS) + 1
    results, meta = _results(engine), engine.store.read_meta()
    reader = Engine(settings)  # another process's searches, from several threads, during the copy
    reader.search("warm up", k=1)
    errors: list[BaseException] = []
    answered = [0] * 3
    done = threading.Event()

    def loop(n: int) -> None:
        while not done.is_set():
            try:
                assert reader.search(QUERIES[n], k=3).hits
                answered[n] += 1
            except BaseException as e:  # noqa: BLE001 - every failure is the finding
                errors.append(e)

    progress: list[int] = []
    reindexer = Engine(settings).reindexer(on_progress=lambda r: progress.append(r.chunks_copied))
    threads = [threading.Thread(target=loop, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        while not all(answered):
            done.wait(0.01)
        report: ReindexReport = reindexer.run({"index_options": "hnsw"})  # as it was: the same answers
        reader.search("after the swap", k=1)
    finally:
        done.set()
        for t in threads:
            t.join()
    reindexer.store.close()
    assert not errors, errors[:3]
    assert (report.mode, report.swapped, report.chunks_embedded) == ("copy", True, 0)
    assert report.chunks_copied == report.chunks == len(before)
    assert any(n.startswith("copied inside the server") for n in report.notes), report.notes
    assert progress[0] == 0 and progress[-1] == len(before) and progress == sorted(progress)
    assert live_version(engine).endswith("-v2") and reader.store.served_index() == live_version(engine)
    after = _stored(engine)
    assert {i: ec.chunk for i, ec in after.items()} == {i: ec.chunk for i, ec in before.items()}
    for i, ec in before.items():  # bit for bit; the bare chunk stays without one
        assert np.array_equal(after[i].embedding, ec.embedding), i
    # ingested_at as ingested, not the copy's (vectors: compared as float32 above; the server may print a
    # float64 of 1e-34 with another last digit)
    assert {i: s.get("ingested_at") for i, s in _sources(engine, ["ingested_at"]).items()} == {
        i: s.get("ingested_at") for i, s in stamps.items()}
    new_meta = engine.store.read_meta()
    assert new_meta is not None and meta is not None
    assert (new_meta.model, new_meta.dims, new_meta.fingerprint) == (meta.model, meta.dims, meta.fingerprint)
    assert _results(engine) == results  # the same hits, in the same order, with the same scores
    assert engine.search("stored without a vector", k=1, mode="bm25").hits[0].id == "bare"  # BM25 finds it
    elsewhere = ElasticsearchStore.bound(settings.replace(es_url="http://127.0.0.1:9"), "kb-v9")
    with pytest.raises(ConfigError, match="same server"):  # a copy inside the server stays on that server
        store.copy_to(elsewhere)
    reader.close()


def _many(eng: Engine, n: int) -> int:
    """``n`` more chunks (real text, random unit vectors), written through the store: a copy that takes
    long enough to be caught half-way. noida-db shows a copy's first chunks to a count only after some
    6,000 of them: 20,000 leave the deleting test a margin (with 6,000 the count first showed the finished
    copy in about one run of two)."""
    rng = np.random.default_rng(7)
    dims = eng.store.read_meta().dims  # type: ignore[union-attr]
    chunks = []
    for i in range(n):
        v = rng.standard_normal(dims).astype(np.float32)
        text = f"Entry {i} on {TOPICS[i % 5]}."
        chunks.append(EmbeddedChunk(Chunk(id=f"m{i}#0", doc_id=f"m{i}", source=f"m{i}.txt", title=f"M {i}", text=text,
                                          chunk_index=0, chunk_count=1, start=0, end=len(text), chunk_sha=f"c{i}",
                                          doc_sha=f"m{i}"), v / np.linalg.norm(v)))
    for lo in range(0, n, 500):
        assert not eng.store.write(chunks[lo:lo + 500]).errors
    eng.store.refresh()
    return n


def test_a_copy_whose_new_version_is_deleted_half_way_leaves_the_alias_and_says_so(
        engine: Engine, settings: Settings) -> None:
    total = _many(engine, 20000) + len(DOCS)
    before = [h.id for h in engine.search("astronomy", k=5).hits]
    live = live_version(engine)
    store = _es(engine)
    deleted: list[int] = []

    def delete_the_new_version(r: ReindexReport) -> None:  # as an operator's `DELETE <index>-v2` would
        if r.chunks_copied and not deleted and r.new:
            store.client.options(ignore_status=404).indices.delete(index=r.new)
            deleted.append(r.chunks_copied)

    reindexer = engine.reindexer(on_progress=delete_the_new_version)
    reindexer.poll_s = 0.05
    with pytest.raises(StoreError) as e:
        reindexer.run({"index_options": "int8_hnsw"})
    assert deleted and 0 < deleted[0] < total, deleted  # caught half-way
    message = str(e.value)
    assert f"new version {settings.index}-v2 was deleted" in message and f"{live} stays live" in message, message
    assert live_version(engine) == live and engine.status()["chunks"] == total
    assert [v["name"] for v in engine.status()["versions"]] == [live]  # what the server made of it is gone
    assert [h.id for h in engine.search("astronomy", k=5).hits] == before
    assert not engine.reindexer().versions.cleanup()  # nothing left behind: no freeze, no half-built version
    report = engine.reindex({"index_options": "int8_hnsw"})  # and the next reindex runs through
    # the number is free again
    assert report.swapped and report.chunks == total and live_version(engine).endswith("-v2")


def test_a_reindex_killed_during_the_copy_leaves_the_old_version_serving_and_a_rerun_finishes(
        engine: Engine, settings: Settings) -> None:
    total = _many(engine, 6000) + len(DOCS)
    before = [h.id for h in engine.search("astronomy", k=5).hits]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, "-m", "esrag.cli", "reindex", *store_args("elasticsearch", settings), "--device", "cpu",
            "--index-options", "hnsw", "--json"]  # as it was: the same answers after
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = _es(engine)
    new = f"{settings.index}-v2"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # the copy has begun
        if store.client.options(ignore_status=404).count(index=new).body.get("count"):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0].decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = engine.status()
    assert [v["name"] for v in status["versions"] if v["live"]] == [f"{settings.index}-v1"]
    assert [v["state"] for v in status["versions"]] == ["complete", "building"]
    assert [h.id for h in engine.search("astronomy", k=5).hits] == before
    rerun = subprocess.run(args, env=env, capture_output=True, timeout=600, check=False)
    out = rerun.stdout.decode()
    assert rerun.returncode == 0, out + rerun.stderr.decode()
    report = json.loads(out[out.index("{"):])
    assert report["swapped"] and any("half-built" in c for c in report["cleaned"]) and report["chunks"] == total
    assert [v["state"] for v in engine.status()["versions"]] == ["complete", "complete"]
    assert [h.id for h in engine.search("astronomy", k=5).hits] == before
    assert engine.ingest_documents([Document(doc_id="after", source="a.txt", text="written after the crash")]).ok
