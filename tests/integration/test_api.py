"""The HTTP API as a client sees it: a real `esrag serve` process on each store, driven over HTTP with httpx.
The fake plugins (hashed embedder, echo generator) keep it fast; what is checked is the API's behaviour."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from esrag.cli import main
from tests.fixtures.api import ApiServer

pytestmark = pytest.mark.integration

TOWER = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall."
RUST = "Rust guarantees memory safety with ownership and borrowing checked at compile time."


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs, parsed as an EventSource parses them: fields until a blank line dispatches."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)


def post(api: ApiServer, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(api.url + path, json=body, timeout=30, **kw)


def test_documents_search_ask_status_round_trip(api: ApiServer, fake_distribution: Path) -> None:
    r = httpx.put(f"{api.url}/v1/documents/tower", json={"text": TOWER, "title": "Tower",
                                                         "metadata": {"team": "paris"}})
    assert r.status_code == 200, r.text
    assert (r.json()["documents_new"], r.json()["chunks_embedded"]) == (1, 1)
    r = post(api, "/v1/documents", {"documents": [{"id": "rust", "text": RUST, "metadata": {"team": "lang"}}]})
    assert r.status_code == 200 and r.json()["chunks_written"] == 1
    again = httpx.put(f"{api.url}/v1/documents/tower", json={"text": TOWER, "title": "Tower",
                                                             "metadata": {"team": "paris"}}).json()
    assert (again["documents_unchanged"], again["chunks_embedded"], again["chunks_written"]) == (1, 0, 0)

    r = post(api, "/v1/search", {"query": "when was the eiffel tower completed", "k": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    doc = r.json()
    assert doc["hits"][0]["doc_id"] == "tower" and doc["parameters"]["k"] == 2 and doc["explain"] is None
    assert doc["parameters"]["doc_weight"] == 0.75  # the server's setting
    hit = doc["hits"][0]
    assert {"bm25_score", "dense_score", "bm25_rank", "dense_rank", "bm25_norm", "dense_norm"} <= set(hit)
    assert set(doc["timings_ms"]) == {"embed_ms", "store_ms", "fuse_ms"}

    # esrag search --json prints the same document, with and without explain
    for explain in (False, True):
        body = {"query": "eiffel tower", "mode": "bm25", "filters": {"team": "paris"}, "explain": explain,
                "doc_weight": 0.25}
        served = post(api, "/v1/search", body).json()
        assert served["parameters"]["doc_weight"] == 0.25
        cli = CliRunner().invoke(main, ["search", "eiffel tower", "--mode", "bm25", "--filter", "team=paris",
                                        "--doc-weight", "0.25",
                                        "--json", *(["--explain"] if explain else []), *api.store_args,
                                        "--embedder", "hashed"])
        assert cli.exit_code == 0, cli.output
        printed = json.loads(cli.output)
        for d in (served, printed):
            d.pop("timings_ms")
        assert printed == served
        assert (served["explain"] is not None) is explain
    if "elasticsearch" in api.store_args:
        explained = post(api, "/v1/search", {"query": "tower", "explain": True}).json()["explain"]["request"]
        assert "_msearch" in json.dumps(explained) and "knn" in json.dumps(explained)

    whole = post(api, "/v1/ask", {"question": "When was the Eiffel Tower completed?"}).json()
    assert whole["answer"].startswith("The Eiffel Tower was completed in 1889")
    assert [c["doc_id"] for c in whole["citations"]] == ["tower"]

    r = httpx.get(f"{api.url}/v1/status")
    status = r.json()
    assert (status["documents"], status["chunks"], status["exists"]) == (2, 2, True)
    assert status["model"] == "hashed-bow-64"

    r = httpx.delete(f"{api.url}/v1/documents/rust")
    assert r.status_code == 200 and r.json() == {"doc_id": "rust", "chunks_deleted": 1}
    r = httpx.delete(f"{api.url}/v1/documents/rust")
    assert r.status_code == 404 and "rust" in r.json()["detail"]
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_ask_streams_sources_then_deltas_then_citations(api: ApiServer) -> None:
    assert httpx.put(f"{api.url}/v1/documents/tower", json={"text": TOWER}).status_code == 200
    body = {"question": "When was the Eiffel Tower completed?", "stream": True}
    with httpx.stream("POST", f"{api.url}/v1/ask", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(r.iter_lines()))
    names = [n for n, _ in events]
    assert names[0] == "sources" and names[-1] == "done" and set(names[1:-1]) == {"delta"}
    sources = json.loads(events[0][1])
    assert [p["doc_id"] for p in sources["passages"]] == ["tower"] and sources["passages"][0]["n"] == 1
    assert 0 <= sources["sent_after_retrieval_ms"] < 60_000 and sources["retrieval_ms"] > 0
    text = "".join(json.loads(d)["text"] for n, d in events if n == "delta")
    done = json.loads(events[-1][1])
    assert done["answer"] == text and text.startswith("The Eiffel Tower was completed in 1889")
    assert done["citations"] == [{"n": 1, "doc_id": "tower", "source": "tower", "chunk_id":
                                  sources["passages"][0]["chunk_id"], "title": ""}]
    assert done["timings"]["retrieval_ms"] > 0
    # the same content as without streaming (esrag ask --json's document)
    whole = post(api, "/v1/ask", {"question": "When was the Eiffel Tower completed?"}).json()
    assert {k: v for k, v in whole.items() if k != "timings"} == {k: v for k, v in done.items() if k != "timings"}


def _problem(r: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    for w in words:
        assert w in body["detail"], (w, body)
    return body


def test_every_bad_input_is_a_problem_naming_the_field(api: ApiServer) -> None:
    # before any document: the index does not exist
    _problem(post(api, "/v1/search", {"query": "tower"}), 404, "not found")
    _problem(post(api, "/v1/ask", {"question": "tower"}), 404, "not found")
    httpx.put(f"{api.url}/v1/documents/tower", json={"text": TOWER})
    cases: list[tuple[Any, str]] = [
        ({"query": "x", "alpha": 1.5}, "alpha"), ({"query": "x", "alpha": -0.1}, "alpha"),
        ({"query": "x", "doc_weight": 2}, "doc_weight"),
        ({"query": "x", "k": 0}, "k"), ({"query": "x", "k": 100_000}, "k"), ({"query": ""}, "query"),
        ({"query": "   "}, "query"), ({"query": "x" * 5000}, "query"), ({"query": "x", "mode": "magic"}, "mode"),
        ({"query": "x", "fusion": "max"}, "fusion"), ({"query": "x", "colour": 1}, "colour"), ({}, "query"),
    ]
    for body, field in cases:
        p = _problem(post(api, "/v1/search", body), 422, field)
        assert p["errors"][0]["field"] == field
    nan = httpx.post(f"{api.url}/v1/search", content=b'{"query": "x", "alpha": NaN}',
                     headers={"content-type": "application/json"})
    assert _problem(nan, 422, "alpha")["errors"][0]["field"] == "alpha"
    _problem(httpx.post(f"{api.url}/v1/search", content=b"{not json", headers={"content-type": "application/json"}),
             400, "JSON")
    assert _problem(post(api, "/v1/ask", {"question": "x", "generator": "nosuch"}), 422,
                    "nosuch")["errors"][0]["field"] == "generator"
    _problem(httpx.get(f"{api.url}/v1/nowhere"), 404)
    _problem(httpx.get(f"{api.url}/v1/search"), 405)
    _problem(httpx.put(f"{api.url}/v1/documents/big", json={"text": "word " * 3_000_000}), 413, "limit")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"text": "'
        for _ in range(1200):
            yield b"word " * 2000
        yield b'"}'

    _problem(httpx.put(f"{api.url}/v1/documents/big", content=chunked(), headers={"content-type": "application/json"},
                       timeout=60), 413, "limit")
    _problem(post(api, "/v1/documents", {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}), 422,
             "more than once")
    _problem(post(api, "/v1/search", {"query": "x"}, headers={"X-ES-API-Key": "abc"}), 400, "pass")
    assert "Traceback" not in api.log()


def test_32_concurrent_searches_while_an_ingest_runs(api: ApiServer) -> None:
    base = [{"id": f"d{i}", "text": f"Document {i} is about topic {i % 7} and city {i % 11}."} for i in range(50)]
    assert post(api, "/v1/documents", {"documents": base}).status_code == 200
    more = [{"id": f"m{i}", "text": f"Another text {i}, topic {i % 5}, with words {' '.join(['w'] * (i % 40))}."}
            for i in range(600)]
    errors: list[str] = []
    ingest_done = []

    def ingest() -> None:
        r = post(api, "/v1/documents", {"documents": more})
        ingest_done.append(time.monotonic())
        if r.status_code != 200:
            errors.append(f"ingest {r.status_code}: {r.text}")

    def searches(i: int) -> int:
        n = 0
        with httpx.Client(base_url=api.url, timeout=60) as client:
            for j in range(6):
                r = client.post("/v1/search", json={"query": f"topic {(i + j) % 7} city", "k": 5})
                if r.status_code != 200 or not r.json()["hits"]:
                    errors.append(f"search {r.status_code}: {r.text[:300]}")
                n += 1
        return n

    with ThreadPoolExecutor(33) as pool:
        writer = pool.submit(ingest)
        started = time.monotonic()
        counts = list(pool.map(searches, range(32)))
        searches_done = time.monotonic()
        writer.result()
    assert errors == []
    assert sum(counts) == 32 * 6
    assert started < ingest_done[0]  # the searches ran while the ingest was in flight
    assert searches_done > started
    status = httpx.get(f"{api.url}/v1/status").json()
    assert status["documents"] == 650
    assert "database is locked" not in api.log()


def test_a_client_that_disconnects_stops_the_generation(serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    log = tmp_path / "slow.log"
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "slow",
                   env={"ESRAG_GENERATOR_SLOW_LOG": str(log)})
    assert httpx.put(f"{server.url}/v1/documents/tower", json={"text": TOWER}).status_code == 200
    with httpx.stream("POST", f"{server.url}/v1/ask", json={"question": "tower?", "stream": True}, timeout=30) as r:
        seen = 0
        for name, _ in sse_events(r.iter_lines()):
            seen += name == "delta"
            if seen == 5:
                break
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not log.read_text().endswith("closed"):
        time.sleep(0.05)
    produced = log.read_text()
    assert produced.endswith("closed"), produced
    assert int(produced.split()[0]) < 100  # of 5000 pieces: it stopped, it did not run on
    # the model's turn was released: the next question (same serial generator) is answered at once
    with httpx.stream("POST", f"{server.url}/v1/ask", json={"question": "tower?", "stream": True}, timeout=10) as r:
        first = next(sse_events(r.iter_lines()))
    assert first[0] == "sources"
