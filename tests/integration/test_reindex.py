"""``esrag reindex`` on both stores, with the real packaged MiniLM: a rebuild behind the index's name that
searches never notice but for the new model, an atomic swap, rollback, pruning, refused writes, and a
reindex killed mid-build.

The "new model" is real but different: the packaged all-MiniLM-L6-v2 saved to a directory with every
weight matrix perturbed by seeded Gaussian noise (5% of its standard deviation), so it has other vectors
and another name (its path), like a fine-tuned model deployed with ``--model DIR``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from esrag.config import Settings
from esrag.engine import Engine
from esrag.errors import ConfigError, EsragError, ReindexInProgressError
from esrag.ingest.report import IngestAborted
from esrag.types import Document, EmbeddedChunk
from tests.fixtures.api import ROOT, ApiServer, store_args
from tests.fixtures.engines import ingested, live_version
from tests.fixtures.models import perturbed_minilm

pytestmark = pytest.mark.integration

TOPICS = ["databases", "search engines", "compilers", "gardening", "astronomy"]
DOCS = [Document(doc_id=f"d{i}", source=f"d{i}.txt", title=f"Doc {i}",
                 text=f"Document {i} is about {TOPICS[i % 5]}. Its second sentence mentions number {i}.")
        for i in range(30)]
#: the same text under two ids: one distinct text, embedded once by a model change
TWINS = [Document(doc_id=f"twin{i}", source=f"twin{i}.txt", title="Twin", text="Twins share this very text.")
         for i in range(2)]


@pytest.fixture(scope="session")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return perturbed_minilm(tmp_path_factory.mktemp("model") / "minilm-perturbed")


@pytest.fixture
def settings(store_settings: Callable[..., Settings]) -> Settings:
    return store_settings(device="cpu")


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    with ingested(settings, [*DOCS, *TWINS]) as eng:
        yield eng


def _expected_dense(model_dir: str, query: str, vectors: dict[str, np.ndarray]) -> dict[str, float]:
    """What the new model's query vector scores against the stored vectors (ES cosine: (1 + cos) / 2)."""
    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder

    q = SentenceTransformerEmbedder(model=model_dir, device="cpu").embed_query(query)
    q = q / np.linalg.norm(q)
    return {i: (1 + float(q @ (v / np.linalg.norm(v)))) / 2 for i, v in vectors.items()}


def test_index_settings_alone_embed_nothing_and_versions_roll_back_and_prune(engine: Engine, settings: Settings,
                                                                              store_name: str) -> None:
    before = [h.id for h in engine.search("databases", k=5).hits]
    fresh = Engine(settings)  # a process that only reindexes
    report = fresh.reindex({"index_options": "int8_hnsw"})
    assert (report.mode, report.chunks_embedded, report.chunks, report.swapped) == ("copy", 0, len(DOCS) + 2, True)
    assert not fresh.embedder.loaded  # no model was even loaded
    suffix = "-v2" if store_name == "elasticsearch" else ".v2.db"
    assert live_version(fresh).endswith(suffix) and live_version(engine).endswith(suffix)
    assert [h.id for h in engine.search("databases", k=5).hits] == before
    assert fresh.rollback()[1].endswith("1" if store_name == "elasticsearch" else ".v1.db")
    assert [v["live"] for v in fresh.status()["versions"]] == [True, False]
    assert [h.id for h in fresh.search("databases", k=5).hits] == before
    for _ in range(8):  # v3 .. v10: numbers, not text, decide which is newest
        fresh.reindex({"analyzer": "standard"})
    names = [v["name"] for v in fresh.status()["versions"]]
    assert [v["number"] for v in fresh.status()["versions"]] == list(range(1, 11))
    assert live_version(fresh) == names[-1] and names[-1].replace(".db", "").endswith("v10")
    assert fresh.rollback()[1] == names[-2]  # v10 -> v9
    deleted = fresh.reindexer().delete_old()
    assert len(deleted) == 9 and [v["name"] for v in fresh.status()["versions"]] == [names[-2]]
    assert [h.id for h in fresh.search("databases", k=5).hits] == before
    fresh.close()


def test_a_model_change_re_embeds_each_text_once_and_running_searches_switch_without_an_error(
        engine: Engine, settings: Settings, other_model: str) -> None:
    reader = Engine(settings)  # a running searcher, with the old model loaded
    reader.search("databases", k=3)
    errors: list[BaseException] = []
    done = threading.Event()
    counts = [0] * 4

    def loop(n: int) -> None:
        while not done.is_set():
            try:
                assert reader.search(f"{TOPICS[n]} {counts[n]}", k=3).hits
                counts[n] += 1
            except BaseException as e:  # noqa: BLE001 - every failure is the finding
                errors.append(e)

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        report = engine.reindex({"model": other_model})
        time.sleep(1.0)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert all(counts), counts
    assert (report.mode, report.chunks, report.chunks_embedded) == ("embed", len(DOCS) + 2, len(DOCS) + 1)
    result = reader.search("compilers", k=5, mode="dense")
    assert reader.settings.model == other_model == reader.status()["model"]
    expected = _expected_dense(other_model, "compilers", reader.store.get_embeddings([h.id for h in result.hits]))
    assert [h.dense_score for h in result.hits] == pytest.approx([expected[h.id] for h in result.hits], abs=1e-5)
    reader.close()


def test_writes_during_a_reindex_are_refused_and_land_in_the_new_version_after(engine: Engine,
                                                                               settings: Settings) -> None:
    refused: list[str] = []
    doc = Document(doc_id="late", source="late.txt", text="A late document about volcanoes.")

    def try_ingest(_: Any) -> None:
        if refused:
            return
        with Engine(settings) as other:
            with pytest.raises(IngestAborted) as e:
                other.ingest_documents([doc])
            assert isinstance(e.value.__cause__, ReindexInProgressError)
            refused.append(str(e.value))
            with pytest.raises(ReindexInProgressError):
                other.store.delete_documents(["d1"])

    engine.reindexer(on_progress=try_ingest).run({"analyzer": "standard"})
    assert refused and "esrag reindex" in refused[0] and "being rebuilt" in refused[0]
    with Engine(settings) as other:
        assert other.ingest_documents([doc]).ok
        assert other.search("volcanoes", k=1).hits[0].doc_id == "late"
        assert other.status()["documents"] == len(DOCS) + 3
    with pytest.raises(ReindexInProgressError):  # two reindexes at once: the second is refused
        with engine.reindexer().versions.freeze("a"):
            engine.reindexer().run({"analyzer": "english"})


def _cli(settings: Settings, store_name: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "esrag.cli", "reindex", *store_args(store_name, settings),
                             "--device", "cpu", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_reindex_killed_mid_build_leaves_the_old_version_serving_and_a_rerun_finishes(
        settings: Settings, store_name: str, other_model: str) -> None:
    many = [Document(doc_id=f"m{i}", source=f"m{i}.txt", text=f"Entry {i} on {TOPICS[i % 5]} and item {i * 7}.")
            for i in range(1500)]
    eng = Engine(settings)
    assert eng.ingest_documents(many).ok
    before = [h.id for h in eng.search("astronomy 21", k=5).hits]
    proc = _cli(settings, store_name, "--model", other_model)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(v["state"] == "building" for v in eng.status()["versions"]):
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0].decode()
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = eng.status()
    assert [v["number"] for v in status["versions"] if v["live"]] == [1]
    assert any(v["state"] == "building" for v in status["versions"])
    assert [h.id for h in eng.search("astronomy 21", k=5).hits] == before
    rerun = _cli(settings, store_name, "--model", other_model, "--json")
    out = rerun.communicate(timeout=600)[0].decode()
    assert rerun.returncode == 0, out
    report = json.loads(out[out.index("{"):])
    assert report["swapped"] and any("half-built" in c for c in report["cleaned"])
    assert report["chunks"] == len(many)
    assert [v["state"] for v in eng.status()["versions"]] == ["complete", "complete"]
    eng.search("astronomy 21", k=5)
    assert eng.settings.model == other_model
    assert eng.ingest_documents([Document(doc_id="after", source="a.txt", text="written after the crash")]).ok
    eng.drop()
    eng.close()


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(),  # noqa: S310 - loopback
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - loopback
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_esrag_serve_answers_through_a_model_change_and_then_with_the_new_model(
        engine: Engine, settings: Settings, store_name: str, other_model: str,
        serve: Callable[..., ApiServer]) -> None:
    server = serve(*store_args(store_name, settings), "--device", "cpu", "--generator", "none")
    failures: list[Any] = []
    done = threading.Event()
    answered = [0]

    def loop(n: int) -> None:
        while not done.is_set():
            status, body = _post(server.url + "/v1/search", {"query": f"{TOPICS[n]} {answered[0]}", "k": 3})
            if status != 200 or not body.get("hits"):
                failures.append((status, body))
            answered[0] += 1

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        assert _post(server.url + "/v1/search", {"query": "warm up", "k": 1})[0] == 200  # the model is loaded
        engine.reindex({"model": other_model})
        swapped_at = answered[0]
        deadline = time.monotonic() + 120
        while answered[0] < swapped_at + 6 and time.monotonic() < deadline:
            time.sleep(0.1)  # answers after the swap: the new model is loaded while they wait
    finally:
        done.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert answered[0] >= swapped_at + 6
    status, body = _post(server.url + "/v1/search", {"query": "gardening", "k": 5, "mode": "dense"})
    assert status == 200
    with urllib.request.urlopen(server.url + "/v1/status", timeout=30) as r:  # noqa: S310 - loopback
        info = json.loads(r.read())
    assert info["model"] == other_model and [v["live"] for v in info["versions"]] == [False, True]
    hits = body["hits"]
    expected = _expected_dense(other_model, "gardening", engine.store.get_embeddings([h["id"] for h in hits]))
    assert [h["dense_score"] for h in hits] == pytest.approx([expected[h["id"]] for h in hits], abs=1e-5)
    with pytest.raises(EsragError):
        engine.reindex({"chunk_size": 64})  # a new chunking without --from: refused, nothing changes
    assert live_version(engine) == next(v["name"] for v in info["versions"] if v["live"])


GUIDE = """# Operations guide

## Connecting

Set the address of the cluster and the key that opens it. The client checks the server before the first
request and names the address when it cannot reach it.

### Timeouts

A server that does not answer within the connect timeout is reported in seconds, not minutes.

## Backups

Snapshots go to a repository registered once. Each snapshot is incremental: only new segments are copied.
"""


def _markdown(root: Any) -> Any:
    root.mkdir()
    (root / "ops.md").write_text(GUIDE, encoding="utf-8")
    (root / "garden.md").write_text("# Garden\n\n## Soil\n\nLoam holds water and air.\n\n## Light\n\n"
                                    "Tomatoes want six hours of sun.\n", encoding="utf-8")
    return root


def _stored(eng: Engine) -> dict[str, Any]:
    return {ec.chunk.id: ec for batch in eng.store.iter_chunks() for ec in batch}


def test_a_model_change_re_embeds_chunks_with_headings_from_their_stored_context_without_the_sources(
        settings: Settings, other_model: str, tmp_path: Any) -> None:
    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder
    from esrag.ingest.context import DEFAULT_TEMPLATE

    assert settings.embed_template == DEFAULT_TEMPLATE  # the default: the heading path is embedded
    eng = Engine(settings)
    assert eng.ingest_paths([_markdown(tmp_path / "md")]).ok
    before = _stored(eng)
    assert any(" > " in ec.chunk.context for ec in before.values())  # e.g. "Connecting > Timeouts"
    report = eng.reindex({"model": other_model})  # no sources given
    assert (report.mode, report.swapped, report.chunks) == ("embed", True, len(before))
    after = _stored(eng)
    assert {i: ec.chunk.context for i, ec in after.items()} == {i: ec.chunk.context for i, ec in before.items()}
    new_model = SentenceTransformerEmbedder(model=other_model, device="cpu")
    texts = {i: ec.chunk.context + ec.chunk.text for i, ec in after.items()}
    fresh = dict(zip(texts, new_model.embed_documents(list(texts.values())), strict=True))
    for i, ec in after.items():  # the stored vector is the new model's vector of the embedded text
        cos = float(ec.embedding @ fresh[i]) / float(np.linalg.norm(ec.embedding) * np.linalg.norm(fresh[i]))
        assert cos == pytest.approx(1.0, abs=1e-5)
    result = eng.search("connect timeout", k=5, mode="dense")
    assert result.hits and eng.settings.model == other_model
    expected = _expected_dense(other_model, "connect timeout", fresh)
    assert [h.dense_score for h in result.hits] == pytest.approx([expected[h.id] for h in result.hits], abs=1e-5)
    eng.drop()
    eng.close()


def test_chunks_stored_before_contexts_were_kept_still_need_the_sources_and_say_so(
        settings: Settings, other_model: str, tmp_path: Any) -> None:
    eng = Engine(settings)
    corpus = _markdown(tmp_path / "md")
    assert eng.ingest_paths([corpus]).ok
    # as an older esrag stored them: no context (the chunk_sha still hashes the embedded text)
    old = [EmbeddedChunk(dataclasses.replace(ec.chunk, context=""), ec.embedding) for ec in _stored(eng).values()]
    assert not eng.store.write(old).errors
    live = live_version(eng)
    with pytest.raises(ConfigError) as e:
        eng.reindex({"model": other_model})
    assert "--from PATH or --from-index NAME" in str(e.value) and "before esrag kept contexts" in str(e.value)
    assert live_version(eng) == live
    report = eng.reindex({"model": other_model}, [str(corpus)])  # the sources, as today
    assert (report.mode, report.swapped, report.chunks) == ("rechunk", True, len(old))
    assert any(" > " in ec.chunk.context for ec in _stored(eng).values())  # read again: the contexts are kept
    eng.drop()
    eng.close()


@pytest.mark.parametrize("store_name", ["sqlite"])
def test_a_new_chunking_reads_an_elasticsearch_source_again_from_the_cli(
        settings: Settings, es_url: str, store_name: str) -> None:
    from click.testing import CliRunner
    from elasticsearch import Elasticsearch, helpers

    from esrag.cli import main

    index = f"kb-{os.getpid()}"
    es = Elasticsearch(es_url)
    es.options(ignore_status=404).indices.delete(index=index)
    records = [{"name": f"Note {i}", "body": f"Note {i} is about {TOPICS[i % 5]}. " * 12, "team": f"t{i % 2}"}
               for i in range(12)]
    helpers.bulk(es, ({"_index": index, "_id": f"n{i}", "_source": r} for i, r in enumerate(records)), refresh=True)
    options = ["--from-index", index, "--source-es-url", es_url, "--text-field", "body", "--title-field", "name",
               "--metadata-field", "team"]
    where = store_args(store_name, settings)
    runner = CliRunner()
    out = runner.invoke(main, ["ingest", *options, *where, "--device", "cpu", "--chunk-size", "128", "--json"])
    assert out.exit_code == 0, out.output
    with Engine(settings) as eng:
        before = eng.status()
    refused = runner.invoke(main, ["reindex", *where, "--device", "cpu", "--chunk-size", "48"])
    assert refused.exit_code != 0 and "--from-index NAME" in refused.output
    out = runner.invoke(main, ["reindex", *where, "--device", "cpu", "--chunk-size", "48", *options, "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output[out.output.index("{"):])
    assert before["documents"] == 12
    assert (report["mode"], report["swapped"], report["documents"]) == ("rechunk", True, 12)
    assert report["chunks"] > before["chunks"] and report["chunks_embedded"] > 0
    with Engine(settings) as eng:
        hit = eng.search("astronomy", k=1, filters={"team": "t1"}).hits[0]
        assert hit.doc_id.startswith(f"es:{index}/n") and hit.metadata["source_index"] == index
        assert eng.status()["chunks"] == report["chunks"] and live_version(eng).endswith(".v2.db")
    bad = runner.invoke(main, ["reindex", *where, "--glob", "*.md", "--chunk-size", "40"])
    assert bad.exit_code == 2 and "give --from" in bad.output
    es.indices.delete(index=index)
    es.close()


def test_the_cli_shows_the_reindex_progress_on_stderr(engine: Engine, settings: Settings, store_name: str) -> None:
    from click.testing import CliRunner

    from esrag.cli import main

    where = store_args(store_name, settings)
    out = CliRunner().invoke(main, ["reindex", *where, "--index-options", "int8_hnsw", "--progress", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert (report["mode"], report["swapped"]) == ("copy", True)
    # the bar counts the live version's chunks: 32 of them, all copied
    assert "reindex" in out.stderr and f"/{len(DOCS) + 2} " in out.stderr and "copied=" in out.stderr
    quiet = CliRunner().invoke(main, ["reindex", *where, "--analyzer", "standard", "--no-progress"])
    assert quiet.exit_code == 0 and "reindex:" not in quiet.stderr and "copied=" not in quiet.stderr
