"""Elasticsearch-specific behaviour of ElasticsearchStore: lazy connection, fast and clear connection errors,
the alias scheme, ``_meta``, bulk item errors and one round trip per search (counted on the wire)."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from esrag.config import Settings
from esrag.errors import ConfigError, CorruptStoreError, StoreConnectionError, StoreError
from esrag.stores import es_queries as q
from esrag.stores.elasticsearch import ElasticsearchStore, redact_url
from esrag.types import EmbeddedChunk, IndexMeta, SearchRequest
from tests.fixtures.es import free_port
from tests.integration.test_store_contract import DIMS, META, make_chunk, unit_vectors

pytestmark = pytest.mark.integration
MakeES = Callable[..., ElasticsearchStore]


@pytest.fixture
def es_store(make_store: Callable[..., Any]) -> MakeES:
    """Factory of ElasticsearchStores on fresh index names of the test server, dropped afterwards: conftest's
    ``make_store`` with ``store_name`` fixed to elasticsearch below."""
    return make_store


@pytest.fixture
def store_name() -> str:  # overrides the parametrised fixture of conftest: these tests are ES only
    return "elasticsearch"


class _Stub(BaseHTTPRequestHandler):
    """An HTTP server that is not Elasticsearch: answers every request with ``self.server.reply``."""

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body, headers = self.server.reply  # type: ignore[attr-defined]
        data = body.encode()
        self.send_response(status)
        for k, v in {"Content-Type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET  # noqa: N815

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the default stderr log
        pass


@pytest.fixture
def stub_server() -> Iterator[Callable[[int, str, dict[str, str]], str]]:
    """Start a non-Elasticsearch HTTP server answering (status, body, headers); returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, body: str, headers: dict[str, str] | None = None) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
        server.reply = (status, body, headers or {})  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start  # type: ignore[misc]
    for s in servers:
        s.shutdown()
        s.server_close()


# -- construction and connection errors --------------------------------------------------------------------


def test_construction_does_no_io_and_first_use_fails_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    store = ElasticsearchStore(Settings(es_url=url, index="lazy", es_connect_timeout=2))
    assert store.describe() == {
        "store": "elasticsearch", "location": url, "index": "lazy", "concrete_index": None,
    }
    explained = store.explain_request(SearchRequest(text="x", vector=None, candidates=3))
    assert explained["path"] == "/lazy/_msearch"
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError, match=url.replace(".", r"\.")):
        store.exists()
    assert time.monotonic() - t0 < 10


def test_missing_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="es_url"):
        ElasticsearchStore(Settings(store="elasticsearch"))


def test_unroutable_url_fails_fast_naming_the_url() -> None:
    url = "http://10.255.255.1:9200"  # non-routable: the connection attempt hangs, or fails at once
    store = ElasticsearchStore(Settings(es_url=url, es_connect_timeout=1.5))
    t0 = time.monotonic()
    with pytest.raises(StoreConnectionError) as exc:
        store.read_meta()
    assert time.monotonic() - t0 < 10
    assert url in str(exc.value)


def test_a_server_that_never_answers_fails_after_the_connect_timeout() -> None:
    with socket.socket() as listener:  # accepts TCP connections (kernel backlog) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        store = ElasticsearchStore(Settings(es_url=url, es_connect_timeout=1.0, es_timeout=60))
        t0 = time.monotonic()
        with pytest.raises(StoreConnectionError, match="did not answer within 1 s") as exc:
            store.exists()
        assert 0.9 < time.monotonic() - t0 < 5
        assert url in str(exc.value)


def test_a_server_that_is_not_elasticsearch_is_reported(stub_server: Callable[..., str]) -> None:
    url = stub_server(200, json.dumps({"hello": "world"}))
    with pytest.raises(StoreConnectionError, match="not Elasticsearch") as exc:
        ElasticsearchStore(Settings(es_url=url)).exists()
    assert url in str(exc.value)
    url = stub_server(404, "<html>nothing here</html>", {"Content-Type": "text/html"})
    with pytest.raises(StoreConnectionError, match="does not look like Elasticsearch"):
        ElasticsearchStore(Settings(es_url=url)).exists()


def test_authentication_failure_is_a_connection_error(stub_server: Callable[..., str]) -> None:
    body = {"error": {"type": "security_exception", "reason": "missing authentication credentials"},
            "status": 401}
    url = stub_server(401, json.dumps(body), {"WWW-Authenticate": 'Basic realm="security"'})
    with pytest.raises(StoreConnectionError, match="authentication failed") as exc:
        ElasticsearchStore(Settings(es_url=url, es_api_key="bad")).count()
    assert url in str(exc.value)


def test_missing_privileges_are_a_connection_error_naming_the_index(stub_server: Callable[..., str]) -> None:
    body = {"error": {"type": "security_exception", "reason": "action [indices:data/read] is unauthorized"},
            "status": 403}
    url = stub_server(403, json.dumps(body))
    with pytest.raises(StoreConnectionError, match="not authorized") as exc:
        ElasticsearchStore(Settings(es_url=url, index="secret")).count()
    assert url in str(exc.value) and "'secret'" in str(exc.value) and "unauthorized" in str(exc.value)


def test_credentials_in_the_url_never_appear_in_messages() -> None:
    assert redact_url("https://elastic:s3cret@es.example:9243/x") == "https://es.example:9243/x"
    store = ElasticsearchStore(Settings(es_url="http://elastic:s3cret@127.0.0.1:1"))
    assert "s3cret" not in json.dumps(store.describe())


# -- alias and _meta ---------------------------------------------------------------------------------------


def test_ensure_index_creates_a_concrete_index_behind_the_alias(es_store: MakeES) -> None:
    store = es_store()
    assert store.ensure_index(META) is True
    alias = store.alias
    assert store.client.indices.get_alias(name=alias).body == {f"{alias}-v1": {"aliases": {alias: {}}}}
    assert store.describe()["concrete_index"] == f"{alias}-v1"
    mapping = store.client.indices.get_mapping(index=alias).body[f"{alias}-v1"]["mappings"]
    assert mapping["_meta"] == META.to_dict()
    vector = mapping["properties"]["embedding"]
    assert (vector["dims"], vector["similarity"], vector["index_options"]["type"]) == (DIMS, "cosine", "hnsw")
    assert mapping["properties"]["metadata"]["type"] == "flattened"
    assert store.drop() is True
    assert not store.client.indices.exists(index=f"{alias}-v1")


def test_a_plain_esrag_index_under_the_name_is_used_as_is(es_store: MakeES) -> None:
    store = es_store()
    body = q.build_index_body(store.settings, META)
    store.client.indices.create(index=store.alias, **body)
    assert store.ensure_index(META) is False
    result = store.write([make_chunk("d", 0, "plain index text", unit_vectors(1)[0])])
    assert result.written == 1 and result.errors == ()
    store.refresh()
    assert store.count().chunks == 1
    assert store.search(SearchRequest(text="plain", vector=None, candidates=3)).bm25[0].doc_id == "d"
    assert store.drop() is True and store.exists() is False


def test_an_index_made_before_sections_and_contexts_gets_the_fields_and_its_old_chunks_read_as_unknown(
        es_store: MakeES) -> None:
    store = es_store()
    body = q.build_index_body(store.settings, META)
    del body["mappings"]["properties"]["section"]  # the mapping as esrag made it before sections
    del body["mappings"]["properties"]["context"]  # ... and before chunks kept their context
    store.client.indices.create(index=store.alias, **body)
    old = make_chunk("old", 0, "sections of old", unit_vectors(1)[0])
    source = q.chunk_source(old, "2026-01-01T00:00:00+00:00")
    del source["section"]
    store.client.index(index=store.alias, id=old.chunk.id, document=source)
    assert store.ensure_index(META) is False
    props = store.client.indices.get_mapping(index=store.alias).body[store.alias]["mappings"]["properties"]
    assert props["section"] == {"type": "integer"}
    assert props["context"] == {"type": "text", "index": False}
    new = make_chunk("new", 3, "sections of new", unit_vectors(2)[1], chunk_count=4, section=2)
    new = EmbeddedChunk(dataclasses.replace(new.chunk, context="Guide > Sections\n\n"), new.embedding)
    result = store.write([new])
    assert result.errors == ()
    store.refresh()
    hits = store.search(SearchRequest(text="sections", vector=None, candidates=5)).bm25
    assert {h.doc_id: h.section for h in hits} == {"old": -1, "new": 2}
    assert {c.chunk.doc_id: c.chunk.context for b in store.iter_chunks() for c in b} == {
        "old": "", "new": "Guide > Sections\n\n"}
    assert store.search(SearchRequest(text="Guide", vector=None, candidates=5)).bm25 == []  # not indexed


def test_a_foreign_index_under_the_name_is_a_clear_error(es_store: MakeES) -> None:
    store = es_store()
    store.client.indices.create(index=store.alias, mappings={"properties": {"x": {"type": "keyword"}}})
    with pytest.raises(CorruptStoreError, match="not an esrag index"):
        store.ensure_index(META)
    with pytest.raises(CorruptStoreError, match="not an esrag index"):
        store.read_meta()


def test_another_store_instance_sees_the_index(es_store: MakeES) -> None:
    first = es_store()
    first.ensure_index(META)
    second = ElasticsearchStore(first.settings)
    try:
        assert second.read_meta() == META
        assert second.ensure_index(META) is False
    finally:
        second.close()


# -- writes ------------------------------------------------------------------------------------------------


def test_bulk_item_failures_are_reported_with_their_source(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    good = [make_chunk(f"ok{i}", 0, f"fine {i}", v) for i, v in enumerate(unit_vectors(3))]
    bad = make_chunk("broken", 0, "wrong dims", unit_vectors(1, dims=DIMS + 2)[0])
    result = store.write([good[0], bad, *good[1:]])
    assert result.written == 3
    assert len(result.errors) == 1
    err = result.errors[0]
    assert (err.chunk_id, err.source, err.status) == (bad.chunk.id, "src/broken.md", 400)
    assert "dimensions" in err.reason
    store.refresh()
    assert store.count().chunks == 3


def test_write_streams_a_generator_across_bulk_requests(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(1100, seed=9)

    def gen() -> Iterator[EmbeddedChunk]:
        for i in range(1100):
            yield make_chunk("stream", i, f"s {i}", vecs[i], chunk_count=1100)

    result = store.write(gen())
    assert (result.written, result.errors) == (1100, ())
    store.refresh()
    assert store.count().chunks == 1100


def test_reads_and_deletes_page_and_batch_through_everything(
    es_store: MakeES, monkeypatch: pytest.MonkeyPatch
) -> None:
    import esrag.stores.elasticsearch as mod
    import esrag.stores.es_reads as reads

    monkeypatch.setattr(reads, "REFS_PAGE", 100)  # 1000 chunks of "big": 10 full pages and an empty one
    monkeypatch.setattr(reads, "DOC_ID_BATCH", 2)
    monkeypatch.setattr(mod, "DOC_ID_BATCH", 2)
    monkeypatch.setattr(reads, "ID_BATCH", 7)
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(1005, seed=11)
    big = [make_chunk("big", i, f"b {i}", vecs[i], chunk_count=1000) for i in range(1000)]
    small = [make_chunk(f"s{j}", 0, f"s {j}", vecs[1000 + j]) for j in range(5)]
    store.write(big + small)

    refs = store.list_chunks(["s0", "big", "s1", "s2", "s3", "s4", "none"])
    assert len(refs["big"]) == 1000 and {r.id for r in refs["big"]} == {c.chunk.id for c in big}
    assert [r.id for r in refs["big"][:3]] == [c.chunk.id for c in big[:3]]  # sorted by chunk_index
    assert sorted(refs) == ["big", "s0", "s1", "s2", "s3", "s4"]
    wanted = [c.chunk.id for c in big[:20]]
    assert set(store.get_embeddings(wanted)) == set(wanted)
    assert store.delete_chunks(wanted + wanted) == 20
    assert store.delete_documents(["s0", "s1", "s2", "none"]) == 3
    assert store.count().chunks == 1005 - 23


# -- search ------------------------------------------------------------------------------------------------


def _count_http_requests(store: ElasticsearchStore) -> list[str]:
    """Record every HTTP request the store's client sends from now on (method and path)."""
    sent: list[str] = []
    for node in store.client.transport.node_pool.all():
        original = node.perform_request

        def counted(method: str, target: str, *args: Any, _orig: Any = original, **kwargs: Any) -> Any:
            sent.append(f"{method} {target}")
            return _orig(method, target, *args, **kwargs)

        node.perform_request = counted  # type: ignore[method-assign]
    return sent


def test_hybrid_search_is_exactly_one_http_request(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(10)
    store.write([make_chunk(f"d{i}", 0, f"words {i}", vecs[i], metadata={"lang": "en"}) for i in range(10)])
    store.refresh()
    sent = _count_http_requests(store)
    resp = store.search(SearchRequest(text="words", vector=vecs[2], candidates=5, filters={"lang": ("en",)}))
    assert len(resp.bm25) == 5 and len(resp.dense) == 5
    assert [r.split("?")[0] for r in sent] == [f"POST /{store.alias}/_msearch"]


def test_search_errors_carry_the_elasticsearch_reason(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    store.write([make_chunk("d", 0, "text", unit_vectors(1)[0])])
    wrong = np.ones(DIMS + 1, dtype=np.float32)
    with pytest.raises(StoreError, match="dimensions") as exc:
        store.search(SearchRequest(text=None, vector=wrong, candidates=3))
    assert store.location in str(exc.value)


def test_explain_request_is_the_msearch_and_pastes_into_kibana(es_store: MakeES) -> None:
    store = es_store()
    vec = unit_vectors(1)[0]
    request = SearchRequest(
        text="fox", vector=vec, candidates=3, filters={"lang": ("en",)}, num_candidates=30
    )
    explained = store.explain_request(request)
    assert explained["method"] == "GET" and explained["path"] == f"/{store.alias}/_msearch"
    assert explained["body"] == q.build_msearch(store.alias, request)
    lines = explained["kibana"].splitlines()
    assert lines[0] == f"GET {store.alias}/_msearch"
    assert [json.loads(line) for line in lines[1:]] == explained["body"]
    assert json.loads(lines[4])["knn"]["query_vector"] == q.vector_to_list(vec)


def test_count_uses_distinct_doc_ids(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(IndexMeta(model="m", dims=DIMS))
    vecs = unit_vectors(30)
    store.write([make_chunk(f"d{i % 7}", i, f"t {i}", vecs[i]) for i in range(30)])
    store.refresh()
    counts = store.count()
    assert (counts.documents, counts.chunks) == (7, 30)


# -- write path, documents, aliases ---------------------------------------------------------------------------


def test_list_documents_by_prefix_sees_writes_at_once(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(7)
    chunks = [make_chunk("a/x", i, f"x {i}", vecs[i], chunk_count=3) for i in range(3)]
    chunks += [make_chunk("a/y", 0, "y", vecs[3]), make_chunk("b/z", 0, "z", vecs[4])]
    store.write(chunks)  # no refresh in between: list_documents refreshes for its own writes
    docs = store.list_documents("a/")
    assert sorted(docs) == ["a/x", "a/y"]
    assert (docs["a/x"].chunks, docs["a/x"].doc_sha) == (3, chunks[0].chunk.doc_sha)
    assert sorted(store.list_documents()) == ["a/x", "a/y", "b/z"]
    assert store.list_documents("c/") == {}


def test_list_documents_reports_mixed_versions_with_no_sha(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(2)
    store.write([make_chunk("d", 0, "old", vecs[0], doc_sha="v1"), make_chunk("d", 1, "new", vecs[1], doc_sha="v2")])
    assert store.list_documents()["d"].doc_sha == "" and store.list_documents()["d"].chunks == 2


def test_list_documents_pages_through_more_than_one_page(es_store: MakeES, monkeypatch: pytest.MonkeyPatch) -> None:
    import esrag.stores.es_reads as reads

    monkeypatch.setattr(reads, "REFS_PAGE", 7)
    store = es_store()
    store.ensure_index(META)
    vecs = unit_vectors(50)
    store.write([make_chunk(f"doc{i % 20:02d}", i, f"t {i}", vecs[i]) for i in range(50)])
    docs = store.list_documents()
    assert len(docs) == 20 and sum(d.chunks for d in docs.values()) == 50


def test_an_alias_over_two_indices_is_one_clear_error_for_writes_and_vector_reads(es_store: MakeES) -> None:
    store = es_store()
    store.ensure_index(META)
    chunk = make_chunk("d", 0, "text", unit_vectors(1)[0])
    store.write([chunk])
    other = f"{store.alias}-v2"
    store.client.indices.create(index=other, **q.build_index_body(store.settings, META))
    store.client.indices.put_alias(index=other, name=store.alias)
    fresh = es_store(index=store.alias)  # a new process: nothing resolved yet
    for call in (lambda: fresh.write([chunk]), lambda: fresh.get_embeddings([chunk.chunk.id])):
        with pytest.raises(StoreError) as exc:
            call()
        msg = str(exc.value)
        assert f"alias '{store.alias}'" in msg and f"{store.alias}-v1" in msg and other in msg
    store.client.indices.delete(index=other)
