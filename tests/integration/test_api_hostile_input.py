"""The API against hostile and careless callers, on a real `esrag serve` over each store: non-finite numbers
and lone surrogates are 422s naming the field, a stored document holding what the entry points now refuse
breaks no read, every document id that can be stored is addressable over HTTP (and ids that could not be
are refused), and sizes the stores cannot take are 422s that state the limit."""

from __future__ import annotations

import http.client
import json
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from esrag import validation
from esrag.api.models import MAX_CHAT_CHARS, MAX_QUERY_CHARS
from esrag.cli import main
from tests.fixtures.api import ApiServer

pytestmark = pytest.mark.integration

TEXT = "The platform team runs the ingest pipeline and owns its alerts."


def send(api: ApiServer, method: str, path: str, body: str | None = None) -> tuple[int, dict[str, Any]]:
    """One request with ``path`` and ``body`` sent byte for byte as given (httpx would normalise both):
    the status and the JSON body (``{}`` when there is none)."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(api.url).netloc, timeout=30)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
        r = conn.getresponse()
        data = r.read()
    finally:
        conn.close()
    return r.status, json.loads(data) if data else {}


def fields(doc: dict[str, Any]) -> list[str]:
    return [e["field"] for e in doc.get("errors") or []]


def hits(api: ApiServer, filters: dict[str, Any] | None = None, query: str = "platform ingest") -> list[dict[str, Any]]:
    r = httpx.post(f"{api.url}/v1/search", json={"query": query, "filters": filters or {}}, timeout=30)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["hits"]
    return found


# ------------------------------------------------------------------------------------------ 1. non-finite


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_in_every_body_and_nothing_is_written(api: ApiServer, number: str) -> None:
    cases = [
        ("PUT", "/v1/documents/x", f'{{"text": "{TEXT}", "metadata": {{"team": "platform", "p99": {number}}}}}',
         "metadata.p99"),
        ("PUT", "/v1/documents?id=x", f'{{"text": "{TEXT}", "metadata": {{"p99": {number}}}}}', "metadata.p99"),
        ("POST", "/v1/documents", f'{{"documents": [{{"id": "y", "text": "{TEXT}", "metadata": {{"p": {number}}}}}]}}',
         "documents.0.metadata.p"),
        ("POST", "/v1/search", f'{{"query": "q", "alpha": {number}}}', "alpha"),
        ("POST", "/v1/search", f'{{"query": "q", "filters": {{"team": [{number}]}}}}', "filters.team.0"),
        ("POST", "/v1/ask", f'{{"question": "q", "doc_weight": {number}}}', "doc_weight"),
        ("POST", "/v1/chat/completions",
         f'{{"model": "m", "messages": [{{"role": "user", "content": "q"}}], "temperature": {number}}}', "temperature"),
        ("POST", "/v1/chat/completions",
         f'{{"model": "m", "messages": [{{"role": "user", "content": "q"}}], "top_p": {{"deep": [1, {number}]}}}}',
         "top_p.deep.1"),
    ]
    for method, path, body, field in cases:
        status, doc = send(api, method, path, body)
        assert status == 422, (path, body, doc)
        assert field in fields(doc) and "finite" in doc["detail"], (path, doc)
        if path.startswith("/v1/chat/"):
            assert doc["error"]["param"] == field
    assert httpx.get(f"{api.url}/v1/status", timeout=30).json()["exists"] is False  # nothing half-written


def test_a_stored_document_holding_bad_metadata_breaks_no_read(api: ApiServer, store_name: str,
                                                               fake_distribution: Path) -> None:
    for doc_id in ("good", "poisoned"):
        r = httpx.put(f"{api.url}/v1/documents/{doc_id}", json={"text": TEXT, "metadata": {"team": "platform"}},
                      timeout=30)
        assert r.status_code == 200, r.text
    index = api.store_args[api.store_args.index("--index") + 1]
    if store_name == "sqlite":
        # what an older version wrote for {"p99": NaN}: text SQLite's JSON functions call malformed
        db = Path(api.store_args[api.store_args.index("--sqlite-dir") + 1]) / f"{index}.db"
        with sqlite3.connect(db) as conn:
            conn.execute("""UPDATE chunks SET metadata = '{"p99":NaN,"team":"platform"}' WHERE doc_id = 'poisoned'""")
        expected: dict[str, Any] = {"team": "platform"}
    else:
        # Elasticsearch refuses NaN itself; another client can still store shapes esrag never writes
        es = api.store_args[api.store_args.index("--es-url") + 1]
        found = httpx.post(f"{es}/{index}/_search", json={"query": {"term": {"doc_id": "poisoned"}}}).json()
        hit = found["hits"]["hits"][0]
        hit["_source"]["metadata"] = {"team": "platform", "big": 1e300, "nul": None, "list": ["a", "b"],
                                      "nested": {"b": {"c": "d"}, "a": [1, 2]}}
        r = httpx.put(f"{es}/{hit['_index']}/_doc/{hit['_id']}?refresh=true", json=hit["_source"])
        assert r.status_code == 200, r.text
        expected = {"team": "platform", "big": 1e300, "nested.b.c": "d"}

    filtered = {h["doc_id"]: h["metadata"] for h in hits(api, {"team": "platform"})}
    assert filtered["good"] == {"team": "platform"}
    if store_name == "elasticsearch":
        assert filtered["poisoned"] == expected
    else:  # a row SQLite cannot parse matches no metadata filter, and fails nobody's search
        assert "poisoned" not in filtered
        assert {h["doc_id"]: h["metadata"] for h in hits(api, {"doc_id": "poisoned"})} == {"poisoned": expected}
    everything = {h["doc_id"]: h["metadata"] for h in hits(api)}
    assert everything == {"good": {"team": "platform"}, "poisoned": expected}
    r = httpx.post(f"{api.url}/v1/ask", json={"question": "who runs the ingest?", "filters": {"team": "platform"}},
                   timeout=30)
    assert r.status_code == 200, r.text
    cli = CliRunner().invoke(main, ["search", "platform", "--filter", "team=platform", "--json", *api.store_args,
                                    "--embedder", "hashed"])
    assert cli.exit_code == 0, cli.output
    assert "good" in {h["doc_id"] for h in json.loads(cli.output)["hits"]}


def test_json_files_with_non_finite_numbers_are_refused_per_record(api: ApiServer, tmp_path: Path,
                                                                   fake_distribution: Path) -> None:
    data = tmp_path / "records.jsonl"
    data.write_text(f'{{"id": "ok", "text": "{TEXT}", "team": "platform"}}\n'
                    f'{{"id": "bad", "text": "{TEXT}", "metadata": {{"p99": NaN}}}}\n'
                    f'{{"id": "big", "text": "{TEXT}", "n": 1e400}}\n'
                    f'{{"id": "../../x", "text": "{TEXT}"}}\n')
    cli = CliRunner().invoke(main, ["ingest", str(data), *api.store_args, "--embedder", "hashed"])
    assert "line 2: field 'metadata.p99' must be a finite number" in cli.output, cli.output
    assert "line 3: field 'n' must be a finite number" in cli.output
    assert "line 4: id '../../x' is not a valid document id" in cli.output
    assert str(data.name) in cli.output
    assert cli.exit_code == 0  # skipped records are listed, as skipped files are; the rest is written
    assert {h["doc_id"] for h in hits(api, {"team": "platform"})} == {"records.jsonl#ok"}


# ------------------------------------------------------------------------------------------ 2. surrogates


LONE = "\\ud800"  # as JSON escapes it: the body is valid JSON text, the string is not valid Unicode


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("POST", "/v1/search", f'{{"query": "a{LONE}b"}}', "query"),
    ("POST", "/v1/search", f'{{"query": "q", "filters": {{"team": "{LONE}"}}}}', "filters.team"),
    ("POST", "/v1/search", f'{{"query": "q", "filters": {{"team": ["ok", "{LONE}"]}}}}', "filters.team.1"),
    ("POST", "/v1/search", f'{{"query": "q", "filters": {{"k{LONE}": "v"}}}}', "filters.k\\ud800"),
    ("POST", "/v1/ask", f'{{"question": "{LONE} keys"}}', "question"),
    ("PUT", "/v1/documents/x", f'{{"text": "t{LONE}"}}', "text"),
    ("PUT", "/v1/documents/x", f'{{"text": "t", "title": "{LONE}"}}', "title"),
    ("PUT", "/v1/documents/x", f'{{"text": "t", "source": "{LONE}"}}', "source"),
    ("PUT", "/v1/documents/x", f'{{"text": "t", "metadata": {{"team": "{LONE}"}}}}', "metadata.team"),
    ("PUT", "/v1/documents/x", f'{{"text": "t", "metadata": {{"{LONE}": "v"}}}}', "metadata.\\ud800"),
    ("POST", "/v1/documents", f'{{"documents": [{{"id": "a{LONE}", "text": "t"}}]}}', "documents.0.id"),
    ("POST", "/v1/chat/completions", f'{{"model": "m", "messages": [{{"role": "user", "content": "{LONE} keys"}}]}}',
     "messages.0.content"),
    ("POST", "/v1/chat/completions",
     f'{{"model": "m", "messages": [{{"role": "user", "content": [{{"type": "text", "text": "{LONE}"}}]}}]}}',
     "messages.0.content.0.text"),
])
def test_lone_surrogates_are_a_422_naming_the_field(api: ApiServer, method: str, path: str, body: str,
                                                    field: str) -> None:
    status, doc = send(api, method, path, body)
    assert status == 422, doc
    assert fields(doc) == [field] and "not valid Unicode" in doc["detail"]
    if path.startswith("/v1/chat/"):  # OpenAI clients read error.message and error.param
        assert doc["error"]["param"] == field and "not valid Unicode" in doc["error"]["message"]
    assert "Traceback" not in api.log()


def test_the_cli_refuses_text_that_is_not_utf8_as_a_usage_error(api: ApiServer, fake_distribution: Path) -> None:
    not_utf8 = b"\xed\xa0\x80".decode("utf-8", "surrogateescape")  # what $'\ud800' in bash gives Python
    for args in (["search", "q", "--filter", f"k={not_utf8}"], ["search", not_utf8], ["ask", f"x{not_utf8}"]):
        cli = CliRunner().invoke(main, [*args, *api.store_args, "--embedder", "hashed"])
        assert cli.exit_code == 2 and "not valid Unicode" in cli.output, cli.output
        assert cli.exception is None or isinstance(cli.exception, SystemExit)


# ------------------------------------------------------------------------------------------ 3. document ids


def test_ids_with_slashes_are_addressable_by_path_and_by_query(api: ApiServer, tmp_path: Path,
                                                              fake_distribution: Path) -> None:
    put = {"text": TEXT, "metadata": {"team": "platform"}}
    assert httpx.put(f"{api.url}/v1/documents/docs/api.md", json=put, timeout=30).status_code == 200
    assert {h["doc_id"] for h in hits(api)} == {"docs/api.md"}
    status, doc = send(api, "DELETE", "/v1/documents/docs%2Fapi.md")
    assert (status, doc) == (200, {"doc_id": "docs/api.md", "chunks_deleted": 1})
    assert hits(api) == []  # the engine's delete refreshes: gone for the very next search

    assert send(api, "PUT", "/v1/documents?id=docs%2Fapi.md", json.dumps(put))[0] == 200
    assert {h["doc_id"] for h in hits(api)} == {"docs/api.md"}
    assert send(api, "DELETE", "/v1/documents?id=docs%2Fapi.md") == (200, {"doc_id": "docs/api.md",
                                                                          "chunks_deleted": 1})
    # ids from file ingest contain '/': ingested by the CLI, deleted over HTTP
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text(f"# Guide\n\n{TEXT}\n")
    cli = CliRunner().invoke(main, ["ingest", str(tmp_path / "docs"), *api.store_args, "--embedder", "hashed"])
    assert cli.exit_code == 0, cli.output
    assert {h["doc_id"] for h in hits(api)} == {"docs/guide.md"}
    assert send(api, "DELETE", "/v1/documents/docs/guide.md")[0] == 200
    # an id the rule would refuse today, but an older version may have stored, is still addressable
    for path in ("/v1/documents/%2F", "/v1/documents//abs/x.md", "/v1/documents?id=%2Fabs%2Fx.md"):
        status, doc = send(api, "DELETE", path)
        assert status == 404 and doc["type"].endswith("document-not-found"), (path, status, doc)


@pytest.mark.parametrize("path", ["/v1/documents/x%FF", "/v1/documents/a/x%FE", "/v1/documents/%ED%A0%80",
                                  "/v1/documents?id=x%FF"])
def test_an_id_that_is_not_utf8_is_a_400_not_a_silent_merge(api: ApiServer, path: str) -> None:
    field = "id" if "?" in path else "doc_id"
    for method, body in (("PUT", json.dumps({"text": TEXT})), ("DELETE", None)):
        status, doc = send(api, method, path, body)
        assert status == 400 and fields(doc) == [field] and "UTF-8" in doc["detail"], (method, doc)
    assert httpx.get(f"{api.url}/v1/status", timeout=30).json()["exists"] is False


def test_ids_a_url_cannot_carry_are_refused_alike_by_put_and_post(api: ApiServer) -> None:
    bad = {"a/../b": "'..' segment", "./a": "'.' segment", "/abs": "empty segment", "a//b": "empty segment",
           "a/": "empty segment", "a\nb": "control character", "x" * 513: "longer than 512"}
    for doc_id, words in bad.items():
        quoted = urllib.parse.quote(doc_id, safe="")
        for path, field in ((f"/v1/documents/{quoted}", "doc_id"), (f"/v1/documents?id={quoted}", "id")):
            status, doc = send(api, "PUT", path, json.dumps({"text": TEXT}))
            assert status == 422 and fields(doc) == [field] and words in doc["detail"], (doc_id, path, doc)
        status, doc = send(api, "POST", "/v1/documents", json.dumps({"documents": [{"id": doc_id, "text": TEXT}]}))
        assert status == 422 and fields(doc) == ["documents.0.id"] and words in doc["detail"], (doc_id, doc)
    status, doc = send(api, "PUT", "/v1/documents/", json.dumps({"text": TEXT}))
    assert status == 422 and fields(doc) == ["doc_id"]
    assert httpx.get(f"{api.url}/v1/status", timeout=30).json()["exists"] is False


# ------------------------------------------------------------------------------------------ 4. sizes


def test_filters_over_the_stores_limits_are_a_422_stating_the_limit(api: ApiServer) -> None:
    assert httpx.put(f"{api.url}/v1/documents/good", json={"text": TEXT, "metadata": {"team": "platform"}},
                     timeout=30).status_code == 200
    many_values = {"team": [f"v{i}" for i in range(999)]}
    many_keys = {f"k{i}": "v" for i in range(500)}
    too_many_in_all = {f"k{i}": [f"v{j}" for j in range(17)] for i in range(64)}
    for filters, limit in ((many_values, "256"), (many_keys, "64"), (too_many_in_all, "1024")):
        r = httpx.post(f"{api.url}/v1/search", json={"query": "q", "filters": filters}, timeout=30)
        assert r.status_code == 422 and fields(r.json()) == ["filters"] and limit in r.json()["detail"], r.text
    long_value = {"team": "x" * (validation.MAX_VALUE_CHARS + 1)}
    r = httpx.post(f"{api.url}/v1/ask", json={"question": "q", "filters": long_value}, timeout=30)
    assert r.status_code == 422 and fields(r.json()) == ["filters.team"] and "8000" in r.json()["detail"]
    # the largest filters allowed run on the store
    widest = {"team": ["platform", *(f"v{i}" for i in range(validation.MAX_FILTER_VALUES - 1))]}
    assert [h["doc_id"] for h in hits(api, widest)] == ["good"]
    most = {"team": "platform", **{f"k{i}": [f"v{j}" for j in range(15)] + ["x"] for i in range(63)}}
    assert hits(api, most) == []  # 64 keys, 1,009 values: valid, and no document has all 64 keys


def test_metadata_and_terms_the_stores_cannot_index_are_refused(api: ApiServer) -> None:
    for metadata, field, words in (({"n": 2**63}, "metadata.n", "64 bits"),
                                   ({"s": "x" * 8001}, "metadata.s", "8000"),
                                   ({"o": {"nested": 1}}, "metadata.o", "not dict")):
        r = httpx.put(f"{api.url}/v1/documents/d", json={"text": TEXT, "metadata": metadata}, timeout=30)
        assert r.status_code == 422 and fields(r.json()) == [field] and words in r.json()["detail"], r.text
    r = httpx.put(f"{api.url}/v1/documents/d", json={"text": TEXT, "source": "s" * 8001}, timeout=30)
    assert r.status_code == 422 and fields(r.json()) == ["source"]
    r = httpx.put(f"{api.url}/v1/documents/d", json={"text": TEXT, "metadata": {"n": 2**63 - 1, "s": "x" * 8000}},
                  timeout=30)
    assert r.status_code == 200, r.text


def test_chat_caps_the_question_and_the_conversation_like_ask(api: ApiServer) -> None:
    def chat(messages: list[dict[str, Any]]) -> httpx.Response:
        return httpx.post(f"{api.url}/v1/chat/completions", json={"model": "m", "messages": messages}, timeout=30)

    ask = httpx.post(f"{api.url}/v1/ask", json={"question": "q" * (MAX_QUERY_CHARS + 1)}, timeout=30)
    assert ask.status_code == 422 and "4096" in ask.json()["detail"]
    r = chat([{"role": "system", "content": "s"}, {"role": "user", "content": "q" * (MAX_QUERY_CHARS + 1)}])
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages.1.content"
    assert "4096" in r.json()["error"]["message"] and "last user message" in r.json()["detail"]
    r = chat([{"role": "user", "content": [{"type": "text", "text": "q" * (MAX_QUERY_CHARS + 1)}]}])
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages.0.content"
    history = [{"role": "assistant", "content": "a" * 4000}] * (MAX_CHAT_CHARS // 4000 + 1)
    r = chat([*history, {"role": "user", "content": "and then?"}])
    assert r.status_code == 422 and r.json()["error"]["param"] == "messages" and "65536" in r.json()["detail"]
    r = chat([{"role": "user", "content": "x" * (8 * 1024 * 1024)}])
    assert r.status_code in (413, 422)  # the body limit (10 MiB by default) or the question's
    r = chat([{"role": "user", "content": "q" * MAX_QUERY_CHARS}])
    assert r.status_code == 404  # within the limits: answered (no index yet), not refused


def test_the_id_query_routes_refuse_other_query_parameters(api: ApiServer) -> None:
    """`?ids=` (a typo) or any parameter beside `id` is a 422 naming it, not silently ignored."""
    r = httpx.put(f"{api.url}/v1/documents?id=a&ids=b", json={"text": "x"}, timeout=30)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "ids"
    r = httpx.delete(f"{api.url}/v1/documents?id=a&S=null", timeout=30)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "S"
    assert httpx.put(f"{api.url}/v1/documents?id=a", json={"text": "x"}, timeout=30).status_code == 200
