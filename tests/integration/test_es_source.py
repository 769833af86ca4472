"""An existing Elasticsearch index as an ingest source, against real servers: a source index filled through
the bulk API (nested metadata, missing fields, non-string values, a huge text field, non-ASCII text),
ingested into each store (with an Elasticsearch store, the source lives on a second server process, so the
separate connection is real), searched, edited and pruned; slices; an expiring point in time; every error
case; and a record of every request the source received, none of them a write. The embedder is the
deterministic ``hashed`` plugin: what is checked is the source and the sync, not the vectors."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from elasticsearch import Elasticsearch, helpers

from esrag.cli import main
from esrag.config import Settings
from esrag.engine import Engine
from esrag.errors import ConfigError, SourceError
from esrag.ingest.pipeline import IngestAborted, IngestReport
from tests.fixtures.api import ApiServer
from tests.fixtures.es import noida_server
from tests.fixtures.fault_proxy import FaultProxy

pytestmark = pytest.mark.integration

N = 300
BRANDS = ("acme", "globex", "initech")


@pytest.fixture(scope="session")
def second_es_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second Elasticsearch-compatible server process (``ESRAG_TEST_SOURCE_ES_URL``, else noida-db)."""
    env_url = os.environ.get("ESRAG_TEST_SOURCE_ES_URL")
    if env_url:
        yield env_url.rstrip("/")
        return
    with noida_server(tmp_path_factory.mktemp("noida-source")) as url:
        yield url


def record(i: int) -> dict[str, Any]:
    """Record i of the source index: a few lack the text field, one is huge, one holds a list with a
    number, some are non-ASCII; specs are nested objects, price is a number and tags a list."""
    body: Any = f"Product {i} is a sturdy {BRANDS[i % 3]} lantern, model L{i}, for harbour and trail."
    if i % 50 == 7:
        body = None  # missing
    elif i == 12:
        body = "Sturdy lantern paragraph. " * 4000  # ~100 KB of text
    elif i % 25 == 3:
        body = f"Lanterne n°{i} — éclairage « robuste » pour le port, 港口 {i}."
    elif i == 13:
        body = ["first line of 13", "second line of 13", 42]
    doc: dict[str, Any] = {"name": f"Lantern {i}", "price": 10 + i, "status": "published",
                           "specs": {"color": ("red", "green")[i % 2], "weight": {"grams": 100 + i}},
                           "tags": ["outdoor", BRANDS[i % 3]], "brand": BRANDS[i % 3]}
    if body is not None:
        doc["description"] = body
    return doc


def fill(url: str, index: str, n: int = N) -> Elasticsearch:
    es = Elasticsearch(url)
    es.options(ignore_status=404).indices.delete(index=index)
    helpers.bulk(es, ({"_index": index, "_id": f"p{i}", "_source": record(i)} for i in range(n)), refresh=True)
    return es


SOURCE = {"text_fields": ["description"], "title_field": "name", "metadata_fields": ["brand", "specs.color", "price"]}
MISSING = {i for i in range(N) if i % 50 == 7}


def settings_for(store_settings: Callable[..., Settings], **more: Any) -> Settings:
    return store_settings(embedder="hashed", chunk_size=64, chunk_overlap=0, **more)


def ingest(settings: Settings, prune: bool = False, **options: Any) -> IngestReport:
    with Engine(settings) as engine:
        return engine.ingest(engine.source("elasticsearch", **options), prune=prune)


@pytest.fixture
def hashed(fake_distribution: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESRAG_EMBEDDER_HASHED_DIMS", "32")


@pytest.fixture
def source_url(store_name: str, es_url: str, second_es_url: str) -> str:
    """The source on the test server for the embedded store; on a second server for Elasticsearch."""
    return es_url if store_name == "sqlite" else second_es_url


def test_an_index_is_ingested_searched_edited_and_pruned_in_sync(
        hashed: None, store_settings: Callable[..., Settings], source_url: str) -> None:
    index = f"products-{os.getpid()}"
    es = fill(source_url, index)
    settings = settings_for(store_settings)
    opts = {"index": index, "es_url": source_url, "query": {"term": {"status": "published"}}, **SOURCE}
    first = ingest(settings, **opts)
    assert first.ok and first.documents == N and first.documents_new == N - len(MISSING), first.to_dict()
    skipped = {s.path: s.reason for s in first.skipped}
    assert set(skipped) == {f"{index}/_doc/p{i}" for i in MISSING}
    assert skipped[f"{index}/_doc/p7"] == "no text: the text field 'description' is missing or empty"

    with Engine(settings) as engine:
        hit = engine.search("Lanterne éclairage robuste 港口", k=3, mode="bm25").hits[0]
        assert hit.doc_id == f"es:{index}/p3" and hit.source == f"{index}/_doc/p3" and hit.title == "Lantern 3"
        assert dict(hit.metadata) == {"brand": "acme", "specs.color": "green", "price": 13, "source_index": index,
                                      "source_id": "p3"}
        filtered = engine.search("lantern", filters={"specs.color": "red", "brand": "globex"}, k=50).hits
        assert filtered and all(h.metadata["specs.color"] == "red" and h.metadata["brand"] == "globex"
                                for h in filtered)
        joined = engine.search("second line of 13", k=1, mode="bm25").hits[0]
        assert joined.doc_id == f"es:{index}/p13" and "first line of 13\nsecond line of 13\n42" in joined.text
        assert engine.store.list_chunks([f"es:{index}/p12"])[f"es:{index}/p12"][0].chunk_count > 50  # the huge one

    again = ingest(settings, **opts)
    assert again.documents_unchanged == N - len(MISSING) and again.chunks_embedded == again.chunks_written == 0

    es.index(index=index, id="p20", document={**record(20), "description": record(20)["description"] + " Now solar."})
    es.index(index=index, id="p21", document={**record(21), "name": "Lantern 21 renamed"})
    es.delete(index=index, id="p22")
    es.index(index=index, id="p23", document={**record(23), "status": "draft"})  # no longer matches --query
    es.index(index=index, id="p7", document={**record(8), "name": "p7 now has text"})  # was skipped
    es.indices.refresh(index=index)
    unpruned = ingest(settings, **opts)
    assert (unpruned.documents_changed, unpruned.documents_new, unpruned.documents_gone) == (2, 1, 2)
    assert unpruned.documents_removed == 0
    pruned = ingest(settings, prune=True, **opts)
    assert pruned.documents_unchanged == N - len(MISSING) - 1 and pruned.documents_removed == 2, pruned.to_dict()
    assert pruned.chunks_embedded == 0
    with Engine(settings) as engine:
        stored = set(engine.store.list_documents(f"es:{index}/"))
        assert f"es:{index}/p22" not in stored and f"es:{index}/p23" not in stored and f"es:{index}/p7" in stored
        assert len(stored) == N - len(MISSING) - 1
        assert engine.search("Now solar", k=1, mode="bm25").hits[0].doc_id == f"es:{index}/p20"
    es.indices.delete(index=index)
    es.close()


def test_an_edited_record_re_embeds_only_its_changed_chunks(
        hashed: None, store_settings: Callable[..., Settings], es_url: str) -> None:
    index = f"long-{os.getpid()}"
    es = fill(es_url, index, n=2)
    paragraphs = [f"Paragraph {j} about harbour lanterns, wicks, glass and brass number {j}." * 3 for j in range(8)]
    es.index(index=index, id="p0", document={"description": "\n\n".join(paragraphs)}, refresh=True)
    settings = settings_for(store_settings)
    first = ingest(settings, index=index, es_url=es_url, text_fields=["description"])
    paragraphs[5] = "An entirely new paragraph about solar panels."
    es.index(index=index, id="p0", document={"description": "\n\n".join(paragraphs)}, refresh=True)
    second = ingest(settings, index=index, es_url=es_url, text_fields=["description"])
    assert second.documents_changed == 1 and second.documents_unchanged == 1
    assert 0 < second.chunks_embedded < first.chunks_embedded - 1 and second.chunks_reused > 0
    es.indices.delete(index=index)
    es.close()


def test_files_and_an_index_share_one_esrag_index_and_each_prune_keeps_to_its_own(
        hashed: None, store_settings: Callable[..., Settings], es_url: str, tmp_path: Path) -> None:
    index = f"kb-{os.getpid()}"
    es = fill(es_url, index, n=20)
    root = tmp_path / "notes"
    root.mkdir()
    for name in ("a.md", "b.md"):
        (root / name).write_text(f"# {name}\n\nA note about lanterns kept in {name}.")
    settings = settings_for(store_settings)
    opts = {"index": index, "es_url": es_url, **SOURCE}
    with Engine(settings) as engine:
        assert engine.ingest_paths([root]).documents_new == 2
    assert ingest(settings, **opts).documents_new == 19  # p7 has no description
    es.delete(index=index, id="p3", refresh=True)
    assert ingest(settings, prune=True, **opts).documents_removed == 1
    (root / "b.md").unlink()
    with Engine(settings) as engine:
        report = engine.ingest_paths([root], prune=True)
        assert report.documents_removed == 1
        assert set(engine.store.list_documents()) == {"notes/a.md", *(f"es:{index}/p{i}" for i in range(20)
                                                                       if i not in (3, 7))}
    es.indices.delete(index=index)
    es.close()


def test_two_sliced_ingests_at_once_end_as_one_unsliced_run(
        hashed: None, store_settings: Callable[..., Settings], es_url: str) -> None:
    index = f"sliced-{os.getpid()}"
    es = fill(es_url, index, n=120)
    whole, sliced = settings_for(store_settings), settings_for(store_settings)
    opts = {"index": index, "es_url": es_url, "page_size": 17, **SOURCE}

    def both(prune: bool) -> list[IngestReport]:
        reports: list[Any] = [None, None]

        def run(i: int) -> None:
            reports[i] = ingest(sliced, prune=prune, slice=f"{i}/2", **opts)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return reports

    def state(settings: Settings) -> dict[str, str]:
        with Engine(settings) as engine:
            return {d: ref.doc_sha for d, ref in engine.store.list_documents().items()}

    ingest(whole, **opts)
    reports = both(prune=False)
    assert all(r.ok for r in reports) and sum(r.documents for r in reports) == 120
    assert 0 < reports[0].documents < 120
    assert state(sliced) == state(whole)
    for i in (5, 6, 60, 99):
        es.delete(index=index, id=f"p{i}")
    es.index(index=index, id="p40", document={**record(40), "description": "rewritten for the slices"})
    es.indices.refresh(index=index)
    ingest(whole, prune=True, **opts)
    reports = both(prune=True)
    assert sum(r.documents_removed for r in reports) >= 4 and all(r.ok for r in reports)
    assert state(sliced) == state(whole) and len(state(whole)) == 120 - 4 - 3  # p7, p57, p107 have no text
    es.indices.delete(index=index)
    es.close()


WRITES = ("_bulk", "_doc", "_create", "_update", "_delete_by_query", "_update_by_query", "_refresh", "_reindex")


def is_read(method: str, path: str) -> bool:
    """A request that cannot change the source: GET/HEAD, a search, count, mget or point-in-time open and
    close (a point in time is a read context, not data)."""
    bare = path.split("?")[0]
    if any(part in WRITES for part in bare.split("/")):
        return False
    if method in ("GET", "HEAD"):
        return True
    last = bare.rstrip("/").rsplit("/", 1)[-1]
    if method == "POST":
        return last in ("_search", "_count", "_mget", "_pit")
    return method == "DELETE" and bare == "/_pit"


def test_the_source_is_only_read(hashed: None, store_settings: Callable[..., Settings], es_url: str,
                                 fault_proxy: FaultProxy) -> None:
    index = f"readonly-{os.getpid()}"
    es = fill(es_url, index, n=60)
    settings = settings_for(store_settings)
    opts = {"index": index, "es_url": fault_proxy.url, **SOURCE}
    ingest(settings, **opts)
    es.index(index=index, id="p1", document={**record(1), "description": "edited"})
    es.delete(index=index, id="p2")
    es.indices.refresh(index=index)
    ingest(settings, prune=True, **opts)
    for i in range(2):
        ingest(settings, prune=True, slice=f"{i}/2", **opts)
    seen = [(r.method, r.path) for r in fault_proxy.requests]
    assert {p.split("?")[0].rsplit("/", 1)[-1] for _, p in seen} >= {"_pit", "_search", "_mget", "_count"}
    assert [(m, p) for m, p in seen if not is_read(m, p)] == []
    es.indices.delete(index=index)
    es.close()


def test_an_expiring_point_in_time_is_reopened_or_stops_with_a_message_the_next_run_finishes(
        hashed: None, store_settings: Callable[..., Settings], es_url: str, fault_proxy: FaultProxy) -> None:
    index = f"expiring-{os.getpid()}"
    es = fill(es_url, index, n=40)
    settings = settings_for(store_settings)
    opts = {"index": index, "es_url": fault_proxy.url, "keep_alive": "1s", "page_size": 10, **SOURCE}
    fault_proxy.delay(2.5, path="/_search", method="POST", times=1)  # the second page arrives too late
    fault_proxy.delay(0.01, path="/_search", method="POST", times=1)
    fault_proxy._faults.reverse()  # the short delay first: page one passes, page two waits
    report = ingest(settings, **opts)
    assert report.ok and report.documents == 40 and report.documents_new == 39, report.to_dict()
    assert any("expired after 10 records" in w and "re-opened" in w for w in report.warnings), report.warnings

    es.index(index=index, id="p1", document={**record(1), "description": "edited"}, refresh=True)
    fault_proxy.delay(2.5, path="/_search", method="POST", times=None)  # every page too late
    with pytest.raises(IngestAborted, match="expired 4 times .*run the same ingest again to finish it"):
        ingest(settings, prune=True, **opts)
    fault_proxy.clear()
    finished = ingest(settings, prune=True, **opts)
    assert finished.ok and finished.documents_changed == 1 and finished.documents_unchanged == 38
    es.indices.delete(index=index)
    es.close()


def test_errors_name_the_index_or_field_and_write_nothing(
        hashed: None, store_settings: Callable[..., Settings], es_url: str, fault_proxy: FaultProxy) -> None:
    index = f"errors-{os.getpid()}"
    es = fill(es_url, index, n=10)
    settings = settings_for(store_settings)
    with pytest.raises(SourceError, match=f"source index 'nosuch-{os.getpid()}' not found at {es_url}"):
        ingest(settings, index=f"nosuch-{os.getpid()}", es_url=es_url, text_fields=["description"])
    with pytest.raises(ConfigError, match=f"no record of source index '{index}' has the text field 'body'; check "
                                          r"--text-field \(the index's fields: brand, description, name"):
        ingest(settings, index=index, es_url=es_url, text_fields=["description", "body"])
    objects = ingest(settings, index=index, es_url=es_url, text_fields=["description", "specs"])
    assert objects.documents_new == 0 and len(objects.skipped) == 10
    assert objects.skipped[0].reason == ("field 'specs' holds an object, not text; name a field inside it "
                                         "(specs.<field>)")
    with Engine(settings) as engine:
        engine.drop()
    fault_proxy.status(403, path="/_pit", times=None)
    with pytest.raises(SourceError, match=f"no read privilege on source index '{index}'"):
        ingest(settings, index=index, es_url=fault_proxy.url, text_fields=["description"])
    with pytest.raises(ConfigError, match="--slice '2/2'"):
        ingest(settings, index=index, es_url=es_url, text_fields=["description"], slice="2/2")
    with pytest.raises(ConfigError, match="--query is not JSON"):
        ingest(settings, index=index, es_url=es_url, text_fields=["description"], query="{status")
    with pytest.raises(ConfigError, match="--metadata-field source_id: that key is reserved"):
        ingest(settings, index=index, es_url=es_url, text_fields=["description"], metadata_fields=["source_id"])
    with Engine(settings) as engine:
        assert not engine.store.exists()  # nothing was written by any of them
    es.indices.delete(index=index)
    es.close()


def test_the_cli_ingests_from_an_index_and_hits_name_their_record(
        hashed: None, es_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = f"cli-{os.getpid()}"
    es = fill(es_url, index, n=30)
    key = tmp_path / "key"
    key.write_text("not-checked-by-the-test-server\n")
    cfg = tmp_path / "esrag.toml"
    cfg.write_text(f"[source.elasticsearch]\nindex = '{index}'\ntext_fields = ['description']\n"
                   f"metadata_fields = ['brand']\nes_url = '{es_url}'\n")
    monkeypatch.setenv("ESRAG_CONFIG", str(cfg))
    where = ["--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed"]
    runner = CliRunner()
    out = runner.invoke(main, ["ingest", "--title-field", "name", "--source-es-api-key-file", str(key), "--json",
                               "--no-progress", *where])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["source"] == {"source": "elasticsearch", "location": es_url, "index": index,
                                "text_fields": ["description"]}
    assert report["documents_new"] == 29 and "not-checked" not in out.output
    out = runner.invoke(main, ["search", "Product 17 lantern", "--json", "--mode", "bm25", *where])
    hit = json.loads(out.output)["hits"][0]
    assert (hit["doc_id"], hit["metadata"]["source_index"], hit["metadata"]["source_id"]) == (
        f"es:{index}/p17", index, "p17")
    out = runner.invoke(main, ["search", "Product 17 lantern", "--explain", "--mode", "bm25", *where])
    assert f"record: {index}/_doc/p17 (source_index {index}, source_id p17)" in out.output
    out = runner.invoke(main, ["ingest", str(tmp_path), "--from-index", index, *where])
    assert out.exit_code == 2 and "not both" in out.output
    es.indices.delete(index=index)
    es.close()


def test_api_hits_name_their_source_record(hashed: None, es_url: str, tmp_path: Path,
                                           serve: Callable[..., ApiServer]) -> None:
    """An application reading hits through `esrag serve` gets the source index and record id of each hit, so
    it can fetch the full record."""
    index = f"api-{os.getpid()}"
    es = fill(es_url, index, n=30)
    where = ["--sqlite-dir", str(tmp_path / "db"), "--index", "products"]
    out = CliRunner().invoke(main, ["ingest", "--from-index", index, "--source-es-url", es_url,
                                    "--text-field", "description", "--title-field", "name", "--no-progress",
                                    "--embedder", "hashed", *where])
    assert out.exit_code == 0, out.output
    server = serve("--store", "sqlite", *where, "--embedder", "hashed", "--generator", "echo",
                   env={"ESRAG_EMBEDDER_HASHED_DIMS": "32"})
    import httpx

    r = httpx.post(server.url + "/v1/search", json={"query": "Product 17 lantern", "mode": "bm25", "k": 3},
                   timeout=30)
    assert r.status_code == 200, r.text
    hit = r.json()["hits"][0]
    assert (hit["doc_id"], hit["metadata"]["source_index"], hit["metadata"]["source_id"]) == (
        f"es:{index}/p17", index, "p17")
    es.indices.delete(index=index)
    es.close()
