"""API keys, the OpenAI-compatible chat endpoint driven by the official `openai` client, upstream errors
(502/504 naming the URL without its credentials), and secrets kept out of logs, bodies and /v1/status."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner

from esrag.cli import main
from tests.fixtures.api import ApiServer
from tests.fixtures.es import free_port

pytestmark = pytest.mark.integration

READ_KEY = "read-key-0123456789abcdef"
WRITE_KEY = "write-key-0123456789abcdef"
TOWER = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. It is 330 metres tall."


@pytest.fixture
def keyed(serve: Callable[..., ApiServer], tmp_path: Path) -> ApiServer:
    return serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                 env={"ESRAG_API_KEYS": f"ro:{READ_KEY},rw:{WRITE_KEY}"})


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_decide_who_reads_and_who_writes(keyed: ApiServer) -> None:
    url = keyed.url
    doc = {"text": TOWER, "title": "Tower"}
    r = httpx.put(f"{url}/v1/documents/tower", json=doc)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert httpx.put(f"{url}/v1/documents/tower", json=doc, headers=bearer("wrong-key-0123456789")).status_code == 401
    assert httpx.put(f"{url}/v1/documents/tower", json=doc, headers={"Authorization": WRITE_KEY}).status_code == 401
    r = httpx.put(f"{url}/v1/documents/tower", json=doc, headers=bearer(READ_KEY))
    assert r.status_code == 403 and "read-only" in r.json()["detail"]
    assert httpx.put(f"{url}/v1/documents/tower", json=doc, headers=bearer(WRITE_KEY)).status_code == 200
    assert httpx.post(f"{url}/v1/search", json={"query": "tower"}).status_code == 401
    for key in (READ_KEY, WRITE_KEY):
        r = httpx.post(f"{url}/v1/search", json={"query": "tower"}, headers=bearer(key))
        assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "tower"
    assert httpx.delete(f"{url}/v1/documents/tower", headers=bearer(READ_KEY)).status_code == 403
    status = httpx.get(f"{url}/v1/status", headers=bearer(READ_KEY))
    assert status.status_code == 200
    assert httpx.get(f"{url}/healthz").status_code == 200 and httpx.get(f"{url}/readyz").status_code == 200
    for text in (keyed.log(), status.text):
        assert READ_KEY not in text and WRITE_KEY not in text


def test_openai_client_sync_and_streaming(keyed: ApiServer) -> None:
    assert httpx.put(f"{keyed.url}/v1/documents/tower", json={"text": TOWER}, headers=bearer(WRITE_KEY)).is_success
    client = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=READ_KEY, max_retries=0)
    question = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "When was the Eiffel Tower completed?"}]
    completion = client.chat.completions.create(model="esrag", messages=question)  # type: ignore[arg-type]
    assert completion.object == "chat.completion" and completion.model == "esrag"
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content and choice.message.content.startswith("The Eiffel Tower was completed in 1889")
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    extra = completion.model_extra["esrag"]  # type: ignore[index]
    assert [c["doc_id"] for c in extra["citations"]] == ["tower"] and extra["passages"][0]["n"] == 1

    stream = client.chat.completions.create(model="esrag", messages=question, stream=True,  # type: ignore[arg-type]
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].model_extra["esrag"]["passages"][0]["doc_id"] == "tower"  # type: ignore[index]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "stop"
    assert [c["doc_id"] for c in final[0].model_extra["esrag"]["citations"]] == ["tower"]  # type: ignore[index]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None

    # the raw stream ends with data: [DONE]
    with httpx.stream("POST", f"{keyed.url}/v1/chat/completions", headers=bearer(READ_KEY), timeout=30,
                      json={"model": "x", "messages": question, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="not-a-key-at-all-xx", max_retries=0).chat.completions.create(
            model="esrag", messages=question)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError) as e:
        client.chat.completions.create(model="esrag", messages=[{"role": "system", "content": "only"}])
    assert "messages" in str(e.value)


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections and never answers (for timeouts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def test_upstream_failures_are_502_and_504_naming_the_url_without_credentials(
        serve: Callable[..., ApiServer], tmp_path: Path, blackhole: int) -> None:
    closed = free_port()
    es_down = serve("--es-url", f"http://elastic:s3cretpass@127.0.0.1:{closed}", "--embedder", "hashed",
                    "--generator", "echo")
    r = httpx.post(f"{es_down.url}/v1/search", json={"query": "x"}, timeout=30)
    assert r.status_code == 502 and f"127.0.0.1:{closed}" in r.json()["detail"]
    ready = httpx.get(f"{es_down.url}/readyz", timeout=30)
    assert ready.status_code == 503 and "store" in ready.json()["reason"]
    es_slow = serve("--es-url", f"http://127.0.0.1:{blackhole}", "--es-timeout", "1", "--embedder", "hashed",
                    "--generator", "echo")
    r = httpx.post(f"{es_slow.url}/v1/search", json={"query": "x"}, timeout=30)
    assert r.status_code == 504, r.text

    llm = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                "--generators", "openai_compat",
                "--llm-url", f"http://user:llmsecret@127.0.0.1:{closed}", "--llm-timeout", "1",
                env={"ESRAG_LLM_API_KEY": "sk-llm-secret-123456"})
    assert httpx.put(f"{llm.url}/v1/documents/tower", json={"text": TOWER}).status_code == 200
    r = httpx.post(f"{llm.url}/v1/ask", json={"question": "tower?", "generator": "openai_compat"}, timeout=30)
    assert r.status_code == 502 and f"127.0.0.1:{closed}" in r.json()["detail"], r.text
    with httpx.stream("POST", f"{llm.url}/v1/ask", timeout=30,
                      json={"question": "tower?", "generator": "openai_compat", "stream": True}) as s:
        body = s.read().decode()
    # the sources are sent before generation starts; the failure then arrives as an error event (a problem)
    assert s.status_code == 200 and body.startswith("event: sources")
    error = body.split("event: error\ndata: ", 1)[1].split("\n", 1)[0]
    assert '"status":502' in error and f"127.0.0.1:{closed}" in error
    for server in (es_down, llm):
        logs = server.log()
        for text in (logs, r.text, body, httpx.get(f"{server.url}/v1/status", timeout=30).text):
            for secret in ("s3cretpass", "llmsecret", "sk-llm-secret-123456"):
                assert secret not in text
    assert "Traceback" not in r.text


def test_serve_refuses_an_open_non_loopback_bind_and_bad_keys(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    result = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--sqlite-dir", str(tmp_path)])  # noqa: S104
    assert result.exit_code == 2 and "refusing" in result.output and "--no-auth" in result.output
    monkeypatch.setenv("ESRAG_API_KEYS", "short")
    result = CliRunner().invoke(main, ["serve", "--sqlite-dir", str(tmp_path)])
    assert result.exit_code == 2 and "ESRAG_API_KEYS" in result.output and "16 characters" in result.output
    monkeypatch.setenv("ESRAG_API_KEYS", READ_KEY)
    result = CliRunner().invoke(main, ["serve", "--no-auth", "--sqlite-dir", str(tmp_path)])
    assert result.exit_code == 2 and "contradicts" in result.output
    assert READ_KEY not in result.output
    empty = tmp_path / "keys"
    empty.write_text("# nothing\n")
    monkeypatch.delenv("ESRAG_API_KEYS")
    result = CliRunner().invoke(main, ["serve", "--api-key-file", str(empty), "--sqlite-dir", str(tmp_path)])
    assert result.exit_code == 2 and str(empty) in result.output


def test_es_key_passthrough_sends_requests_with_the_callers_key(serve: Callable[..., ApiServer], es_url: str) -> None:
    index = f"passthrough-{os.getpid()}-{time.monotonic_ns()}"
    server = serve("--es-url", es_url, "--index", index, "--embedder", "hashed", "--generator", "echo",
                   "--es-key-passthrough")
    assert httpx.put(f"{server.url}/v1/documents/tower", json={"text": TOWER}, timeout=30).status_code == 200
    caller_key = "Y2FsbGVyOmtleS1mb3ItdGhlLXRlc3Q="  # noida-db does not enforce security: see docs/api.md
    r = httpx.post(f"{server.url}/v1/search", json={"query": "tower"}, headers={"X-ES-API-Key": caller_key},
                   timeout=30)
    assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == "tower"
    bad = httpx.post(f"{server.url}/v1/search", json={"query": "tower"}, headers={"X-ES-API-Key": "a b"}, timeout=30)
    assert bad.status_code == 400 and "X-ES-API-Key" in bad.json()["detail"]
    status = httpx.get(f"{server.url}/v1/status", headers={"X-ES-API-Key": caller_key}, timeout=30)
    assert status.status_code == 200 and caller_key not in status.text
    assert caller_key not in server.log()
    result = CliRunner().invoke(main, ["serve", "--es-key-passthrough", "--store", "sqlite"])
    assert result.exit_code == 2 and "elasticsearch" in result.output
