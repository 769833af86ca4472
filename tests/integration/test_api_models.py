"""The API with the real packaged models: all-MiniLM-L6-v2 embeds, SmolLM2-135M answers in-process.
An in-process model decodes one answer at a time, so concurrent questions must queue, and all be answered.
A client that drops a stream must free the model for the next one."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.fixtures.api import ApiServer
from tests.integration.test_api import sse_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DOCS = {
    "tower": "The Eiffel Tower in Paris was completed in 1889 for the World's Fair. It is 330 metres tall.",
    "rust": "Rust guarantees memory safety with ownership and borrowing, checked at compile time.",
}


def test_real_models_answer_concurrent_questions_in_turn(serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--generator", "transformers_local", "--device", "cpu",
                   "--max-new-tokens", "12")
    for doc_id, text in DOCS.items():
        assert httpx.put(f"{server.url}/v1/documents/{doc_id}", json={"text": text}, timeout=120).status_code == 200
    hits = httpx.post(f"{server.url}/v1/search", json={"query": "when was the eiffel tower built", "mode": "dense"},
                      timeout=60).json()["hits"]
    assert hits[0]["doc_id"] == "tower"  # MiniLM puts the paraphrase first
    assert httpx.get(f"{server.url}/readyz", timeout=30).json()["model_loaded"] is True

    def ask(i: int) -> dict[str, object]:
        r = httpx.post(f"{server.url}/v1/ask", json={"question": "When was the Eiffel Tower completed?"},
                       timeout=600)
        assert r.status_code == 200, r.text
        return dict(r.json())

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(ask, range(3)))
    assert all(a["answer"] and a["generator"] == "transformers_local" for a in answers)
    assert all(a["passages"][0]["doc_id"] == "tower" for a in answers)  # type: ignore[index]

    # drop a stream after its first delta: the model is freed and the next question answered
    with httpx.stream("POST", f"{server.url}/v1/ask", timeout=600,
                      json={"question": "How does Rust keep memory safe?", "stream": True}) as r:
        for name, data in sse_events(r.iter_lines()):
            if name == "sources":
                assert json.loads(data)["passages"]
            if name == "delta":
                break
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused-without-keys", max_retries=0, timeout=600)
    chunks = list(client.chat.completions.create(
        model="smollm2", stream=True, messages=[{"role": "user", "content": "How does Rust keep memory safe?"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].model_extra["esrag"]["passages"][0]["doc_id"] == "rust"  # type: ignore[index]
    assert "Traceback" not in server.log()
