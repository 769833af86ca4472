"""The API with a remote embedder: no model is loaded, /readyz asks the embedding server, and the server's
failures are problem details (502, naming the URL without credentials)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from esrag.api.app import create_app
from esrag.cli import main
from esrag.config import Settings
from esrag.engine import Engine
from tests.fixtures.api import ApiServer
from tests.fixtures.embed_server import EmbedServer
from tests.fixtures.es import free_port

pytestmark = pytest.mark.integration


def ready(client: TestClient) -> Any:
    deadline = time.monotonic() + 30
    while True:
        resp = client.get("/readyz")
        body = resp.json()
        if body.get("model_loaded") or time.monotonic() > deadline:
            return resp
        time.sleep(0.1)


def test_readyz_asks_the_embedding_server_and_search_maps_its_failure_to_502(
        embed_server: EmbedServer, tmp_path: Any) -> None:
    def settings(url: str) -> Settings:
        return Settings(embedder="openai_compat", sqlite_dir=str(tmp_path), index="remote",
                        plugin_options={"embedder.openai_compat": {"url": url, "api_key": "sk-hidden-key-123"}})

    with Engine(settings(embed_server.url)) as engine:
        engine.ingest_documents([])
        engine.init_index()
        with TestClient(create_app(engine)) as client:
            resp = ready(client)
            assert resp.status_code == 200 and resp.json()["ready"] is True
            assert client.post("/v1/search", json={"query": "anything"}).status_code == 200
        assert not hasattr(engine.embedder.get(), "_model")  # nothing loaded in-process
    down = f"http://127.0.0.1:{free_port()}"
    with Engine(settings(down)) as engine, TestClient(create_app(engine)) as client:
        resp = ready(client)
        assert resp.status_code == 503
        reason = resp.json()["reason"]
        assert "cannot reach the embedding server" in reason and down in reason
        problem = client.post("/v1/search", json={"query": "anything", "mode": "dense"})
        assert problem.status_code == 502 and problem.json()["type"].endswith("embedding-failed")
        assert down in problem.json()["detail"] and "sk-hidden-key-123" not in problem.text


def test_esrag_serve_as_a_process_embeds_through_the_server_and_loads_no_model(
        embed_server: EmbedServer, serve: Callable[..., ApiServer], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`esrag serve --embedder openai_compat`, a process of its own: ready once the embedding server answers,
    searches embed the query there, and torch is never loaded into the API process."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tides.md").write_text("# Tides\n\nOcean tides follow the pull of the moon.\n", encoding="utf-8")
    (docs / "bees.md").write_text("# Bees\n\nWorker bees dance to show where flowers are.\n", encoding="utf-8")
    where = ["--store", "sqlite", "--sqlite-dir", str(tmp_path / "db"), "--index", "remote",
             "--embedder", "openai_compat"]
    monkeypatch.setenv("ESRAG_EMBEDDER_OPENAI_COMPAT_URL", embed_server.url)
    out = CliRunner().invoke(main, ["ingest", str(docs), "--no-progress", *where])
    assert out.exit_code == 0, out.output
    server = serve(*where, "--generator", "echo", env={"ESRAG_EMBEDDER_OPENAI_COMPAT_URL": embed_server.url})
    deadline = time.monotonic() + 30
    while (r := httpx.get(server.url + "/readyz", timeout=10)).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    found = httpx.post(server.url + "/v1/search", json={"query": "why does the sea rise", "mode": "dense"},
                       timeout=30)
    assert found.status_code == 200, found.text
    assert found.json()["hits"][0]["doc_id"].endswith("tides.md")
    maps = Path(f"/proc/{server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps and "sentence_transformers" not in maps
