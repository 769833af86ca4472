"""The README's HTTP API section as a new user runs it, against ``esrag serve``: its Python snippet (the
official ``openai`` client, a follow-up streamed) runs as written, and ``curl -d`` without a content type
is told which header to send."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.fixtures.api import ROOT, ApiServer

pytestmark = pytest.mark.integration


def test_the_readme_python_snippet_runs_as_written(serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## HTTP API"):readme.index("## Commands")]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)
    put = re.search(r"documents/keys -X PUT .*?-d '(\{.*?\})'", section, re.S)
    assert snippet and put
    key = "readme-key-0123456789"
    api = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "extractive",
                env={"ESRAG_API_KEYS": f"rw:{key}"})
    r = httpx.put(f"{api.url}/v1/documents/keys", json=json.loads(put.group(1)),
                  headers={"Authorization": f"Bearer {key}"}, timeout=60)
    assert r.status_code == 200, r.text
    code = snippet.group(1).replace("http://localhost:8000/v1", f"{api.url}/v1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "KEY": key})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "Rotate the API keys every 90 days with `vault rotate`.[1]"
    assert "'doc_id': 'keys'" in lines[1]
    assert lines[2] == lines[0]  # the follow-up, streamed: the same passage answers it


def test_a_body_sent_without_a_json_content_type_is_told_to_send_one(serve: Callable[..., ApiServer],
                                                                     tmp_path: Path) -> None:
    api = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "extractive")
    # what `curl -d '{"query": ...}'` sends: a form content type
    r = httpx.post(f"{api.url}/v1/search", content=b'{"query": "keys"}',
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422
    body = r.json()
    assert "send the header `Content-Type: application/json`" in body["detail"]
    assert body["errors"] == [{"field": "body", "message": body["detail"].removeprefix("body: ")}]
    r = httpx.post(f"{api.url}/v1/chat/completions", content=b'{"model": "esrag"}')  # no content type at all
    assert r.status_code == 422 and "Content-Type: application/json" in r.json()["error"]["message"]
