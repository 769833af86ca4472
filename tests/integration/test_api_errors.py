"""What a careless or hostile caller gets back, against a real `esrag serve`: log lines it cannot forge,
keys it sends never echoed, and errors in HTTP's terms (JSON field names, one problem type per kind, each
type's URI resolving, a field named on every 4xx)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from click.testing import CliRunner

from esrag.cli import main
from tests.fixtures.api import ApiServer

pytestmark = pytest.mark.integration

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
TOWER = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall."


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(serve: Callable[..., ApiServer], tmp_path: Path) -> ApiServer:
    return serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                 "--max-body-bytes", "100000", env={"ESRAG_API_KEYS": f"ro:{READ_KEY},rw:{WRITE_KEY}"})


def test_a_path_cannot_forge_a_log_line(keyed: ApiServer) -> None:
    forged = "ERROR esrag.api: forged"
    paths = ["/nothing%0AERROR%20esrag.api:%20forged", "/nothing%0D%0AERROR%20esrag.api:%20forged",
             "/nothing%E2%80%A8ERROR%20esrag.api:%20forged", "/v1/documents/x%0AERROR%20esrag.api:%20forged",
             "/v1/documents/%1B%5B2Jx%C2%85ERROR%20esrag.api:%20forged"]
    for path in paths:  # no key needed to reach the log: 404s and 401s are logged too
        assert httpx.get(keyed.url + path, timeout=30).status_code in (401, 404, 405)
        assert httpx.delete(keyed.url + path, headers=bearer(WRITE_KEY), timeout=30).status_code in (400, 404, 405)
    keyed.stop()
    lines = keyed.log().splitlines()
    assert not [line for line in lines if line.startswith(forged) or "\x1b" in line or "\u2028" in line
                or "\x85" in line], lines
    access = [line for line in lines if "/nothing" in line]
    assert len(access) == 6 and all(line.startswith("INFO esrag.api: ") for line in access)
    assert any("/nothing\\nERROR esrag.api: forged" in line for line in access)
    assert any("/nothing\\r\\nERROR esrag.api: forged" in line for line in access)
    assert any("/nothing\\u2028ERROR esrag.api: forged" in line for line in access)


def test_keys_sent_in_the_path_or_as_request_id_are_never_echoed(keyed: ApiServer) -> None:
    other = "someone-elses-key-0123456789"
    responses = [
        httpx.get(f"{keyed.url}/v1/{READ_KEY}", timeout=30),
        httpx.get(f"{keyed.url}/{WRITE_KEY}/x", headers={"X-Request-ID": READ_KEY}, timeout=30),
        httpx.delete(f"{keyed.url}/v1/documents/{WRITE_KEY}", headers=bearer(WRITE_KEY), timeout=30),
        httpx.delete(f"{keyed.url}/v1/documents/{READ_KEY}", headers={**bearer(WRITE_KEY), "X-Request-ID": WRITE_KEY},
                     timeout=30),
        httpx.post(f"{keyed.url}/v1/search", json={"query": "x"}, headers={"X-Request-ID": READ_KEY}, timeout=30),
        httpx.get(f"{keyed.url}/v1/{other}", headers={**bearer(other), "X-Request-ID": other}, timeout=30),
        httpx.post(f"{keyed.url}/v1/chat/completions/{READ_KEY}", json={}, headers=bearer(READ_KEY), timeout=30),
    ]
    assert [r.status_code for r in responses] == [404, 404, 404, 404, 401, 404, 404]
    for r in responses:
        body = r.json()
        assert body["request_id"] == r.headers["x-request-id"] and re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
        assert "***" in body["instance"] or body["instance"] == "/v1/search", body
        for key in (READ_KEY, WRITE_KEY, other):
            assert key not in r.text and key not in str(r.headers), (key, r.text)
    # a plain token that holds no secret is kept
    r = httpx.get(f"{keyed.url}/healthz", headers={"X-Request-ID": "trace-42.a_b"}, timeout=30)
    assert r.headers["x-request-id"] == "trace-42.a_b"
    keyed.stop()
    log = keyed.log()
    assert "trace-42.a_b" in log and "GET /v1/*** 404" in log
    for key in (READ_KEY, WRITE_KEY, other):
        assert key not in log


def _problem(r: httpx.Response, status: int, kind: str, field: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert r.headers["content-type"] == "application/problem+json" and body["status"] == status
    assert body["type"] == f"/docs/problems#{kind}", body
    assert not re.search(r"(?<![\w-])--[a-z]", body["detail"]), body  # no CLI flag
    if status < 500:
        assert body["errors"] and body["errors"][0]["field"] == field, body
    return body


def test_errors_speak_http(keyed: ApiServer, serve: Callable[..., ApiServer], tmp_path: Path,
                           fake_distribution: Path) -> None:
    url, read, write = keyed.url, bearer(READ_KEY), bearer(WRITE_KEY)
    seen: list[dict[str, Any]] = []

    def check(r: httpx.Response, status: int, kind: str, field: str | None) -> dict[str, Any]:
        seen.append(body := _problem(r, status, kind, field))
        return body

    check(httpx.post(f"{url}/v1/search", json={"query": "x"}, timeout=30), 401, "unauthorized", "Authorization")
    check(httpx.put(f"{url}/v1/documents/t", json={"text": TOWER}, headers=read, timeout=30), 403, "forbidden",
          "Authorization")
    check(httpx.post(f"{url}/v1/search", json={"query": "x"}, headers=read, timeout=30), 404, "index-not-found",
          "path")
    assert httpx.put(f"{url}/v1/documents/tower", json={"text": TOWER}, headers=write, timeout=30).status_code == 200
    body = check(httpx.post(f"{url}/v1/ask", json={"question": "x", "generator": "nosuch"}, headers=read,
                            timeout=30), 422, "invalid-request", "generator")
    assert body["detail"].startswith("generator: this server does not offer the generator 'nosuch'")
    check(httpx.post(f"{url}/v1/search", json={"query": "x", "alpha": 2}, headers=read, timeout=30), 422,
          "invalid-request", "alpha")
    check(httpx.post(f"{url}/v1/search", content=b"{nope", headers={**read, "content-type": "application/json"},
                     timeout=30), 400, "invalid-json", "body")
    check(httpx.post(f"{url}/v1/search", json={"query": "x"}, headers={**read, "X-ES-API-Key": "abc"}, timeout=30),
          400, "passthrough-disabled", "X-ES-API-Key")
    check(httpx.get(f"{url}/v1/nowhere", timeout=30), 404, "not-found", "path")
    check(httpx.get(f"{url}/v1/search", headers=read, timeout=30), 405, "method-not-allowed", "method")
    check(httpx.delete(f"{url}/v1/documents/nope", headers=write, timeout=30), 404, "document-not-found", "doc_id")
    # the body limit is one problem type, whether the length is declared or found while reading
    big = {"text": "word " * 30_000}
    declared = check(httpx.put(f"{url}/v1/documents/big", json=big, headers=write, timeout=30), 413,
                     "body-too-large", "body")

    def chunked() -> Any:
        yield b'{"text": "'
        for _ in range(30):
            yield b"word " * 1000
        yield b'"}'

    read_over = check(httpx.put(f"{url}/v1/documents/big", content=chunked(), timeout=30,
                                headers={**write, "content-type": "application/json"}), 413, "body-too-large", "body")
    assert declared["detail"] == read_over["detail"] == "the request body is larger than the server's limit of " \
                                                        "100000 bytes"
    # chat: OpenAI's error object names the field in param
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=READ_KEY, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="esrag", messages=[{"role": "user", "content": "tower?"}],
                                       extra_body={"esrag": {"generator": "nosuch"}})
    assert e.value.param == "esrag.generator"
    assert "esrag.generator: this server does not offer the generator" in e.value.message
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="esrag", messages=[{"role": "user", "content": "tower?"}],
                                       extra_body={"esrag": {"alpha": 3}})
    assert e.value.param == "esrag.alpha"
    # every problem type URI resolves to its entry on /docs/problems
    page = httpx.get(f"{url}/docs/problems", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for body in seen:
        path, _, name = body["type"].partition("#")
        assert path == "/docs/problems" and f'<tr id="{name}">' in page.text, name

    # a server setting is named as the server's setting, never as a flag; the field is the question
    tight = serve("--sqlite-dir", str(tmp_path / "tight"), "--embedder", "hashed", "--generator", "echo",
                  "--max-new-tokens", "2040")
    assert httpx.put(f"{tight.url}/v1/documents/tower", json={"text": TOWER}, timeout=30).status_code == 200
    body = _problem(httpx.post(f"{tight.url}/v1/ask", json={"question": "When was the tower built?"}, timeout=30),
                    422, "invalid-request", "question")
    assert "lower the server's max_new_tokens setting or shorten the question" in body["detail"]
    # ... and the CLI words the same error with its flag
    result = CliRunner().invoke(main, ["ask", "When was the tower built?", "--sqlite-dir", str(tmp_path / "tight"),
                                       "--embedder", "hashed", "--generator", "echo", "--max-new-tokens", "2040"])
    assert result.exit_code == 2 and "lower --max-new-tokens or shorten the question" in result.output


@pytest.mark.parametrize("entry", [f"RW:{WRITE_KEY}", f"admin:{WRITE_KEY}", f"rw:{WRITE_KEY}:x"])
def test_an_api_key_with_an_unknown_prefix_stops_the_server_at_start(serve: Callable[..., ApiServer], tmp_path: Path,
                                                                      entry: str) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), env={"ESRAG_API_KEYS": f"ro:{READ_KEY},{entry}"},
                   wait=False)
    assert server.proc.wait(60) == 2
    log = server.log()
    assert "ESRAG_API_KEYS" in log and ("prefix" in log or "':'" in log) and WRITE_KEY not in log, log

