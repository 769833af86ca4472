"""What one request can make the server do: an answer's ``k`` is capped, the generators a request may pick
are the operator's choice, and a large answer does not stall the searches sent meanwhile (a soak test
with the real packaged MiniLM model, whose lock is what searches used to wait on)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from esrag.answering.rag import MAX_ANSWER_K
from tests.fixtures.api import ApiServer

pytestmark = pytest.mark.integration

TOPICS = ["keys", "backups", "deploys", "alerts", "tokens", "queues", "caches", "indices", "logs", "quotas"]


def corpus(n: int = 60) -> list[dict[str, Any]]:
    """``n`` documents of twelve sentences each (long chunks, many sentences for the extractive answerer)."""
    docs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        sentences = [f"Runbook {i} explains how the team handles {topic} in region {j} during an incident, "
                     f"step {j} of the procedure for {topic}." for j in range(12)]
        docs.append({"id": f"runbook-{i}", "title": f"Runbook {i}: {topic}", "text": " ".join(sentences)})
    return docs


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def _field(r: httpx.Response) -> str:
    assert r.status_code == 422, r.text
    return str(r.json()["errors"][0]["field"])


def test_answers_retrieve_at_most_max_answer_k_passages_and_only_offered_generators(
        serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo")
    url = server.url
    assert httpx.post(f"{url}/v1/documents", json={"documents": corpus(3)}, timeout=60).status_code == 200
    ask = {"question": "How are keys handled?"}
    assert _field(httpx.post(f"{url}/v1/ask", json={**ask, "k": MAX_ANSWER_K + 1})) == "k"
    chat = {"model": "esrag", "messages": [{"role": "user", "content": "How are keys handled?"}]}
    r = httpx.post(f"{url}/v1/chat/completions", json={**chat, "esrag": {"k": MAX_ANSWER_K + 1}})
    assert _field(r) == "esrag.k" and r.json()["error"]["param"] == "esrag.k"
    assert httpx.post(f"{url}/v1/ask", json={**ask, "k": MAX_ANSWER_K}, timeout=60).status_code == 200

    # a read-only caller cannot make the server load a model: only the operator's generators are offered
    r = httpx.post(f"{url}/v1/ask", json={**ask, "generator": "transformers_local"})
    assert _field(r) == "generator"
    assert "does not offer the generator 'transformers_local'; it offers echo, none" in r.json()["detail"]
    r = httpx.post(f"{url}/v1/chat/completions", json={**chat, "esrag": {"generator": "transformers_local"}})
    assert _field(r) == "esrag.generator" and r.json()["error"]["param"] == "esrag.generator"
    none = httpx.post(f"{url}/v1/ask", json={**ask, "generator": "none"}, timeout=60)
    assert none.status_code == 200 and none.json()["answer"] == "" and none.json()["passages"]
    assert "transformers_local" not in server.log()

    offering = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generator", "echo",
                     "--generators", "extractive")
    r = httpx.post(f"{offering.url}/v1/ask", json={**ask, "generator": "extractive"}, timeout=60)
    assert r.status_code == 200 and r.json()["generator"] == "extractive", r.text
    assert _field(httpx.post(f"{offering.url}/v1/ask", json={**ask, "generator": "none"})) == "generator"

    bad = serve("--sqlite-dir", str(tmp_path / "db"), "--embedder", "hashed", "--generators", "extractive,nosuch",
                wait=False)
    assert bad.proc.wait(60) != 0
    assert "--generators: no generator named 'nosuch'" in bad.log()


#: seconds of the windows without and with asks, alternated so that whatever else the machine runs weighs
#: on both alike
IDLE_S, LOAD_S, ROUNDS = 1.0, 1.5, 3


def test_search_p99_under_a_concurrent_large_ask_stays_within_3x_its_idle_p99(
        serve: Callable[..., ApiServer], tmp_path: Path) -> None:
    """Two clients search without pause; in every other window a third asks, back to back, with the
    largest k (the extractive answerer embeds the sentences of its passages with the model searches need).
    A search counts as under load when an ask was running when it was sent and when it returned, as idle
    when no ask ran at any time in between."""
    server = serve("--sqlite-dir", str(tmp_path / "db"), "--generator", "extractive", "--device", "cpu",
                   "--log-level", "warning")
    url = server.url
    deadline = time.monotonic() + 120
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    r = httpx.post(f"{url}/v1/documents", json={"documents": corpus()}, timeout=300)
    assert r.status_code == 200, r.text
    large_ask = {"question": "How does the team handle keys during an incident?", "k": MAX_ANSWER_K}
    warm = httpx.post(f"{url}/v1/ask", json=large_ask, timeout=120).json()
    assert warm["retrieved"] == MAX_ANSWER_K and 5 <= len(warm["passages"]) < MAX_ANSWER_K, warm

    asks_wanted = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()
    state = {"running": 0, "started": 0}  # asks in flight, asks started so far
    samples: dict[str, list[float]] = {"idle": [], "load": []}
    asks: list[float] = []
    errors: list[str] = []

    def searcher(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            i = 0
            while not stop.is_set():
                with lock:
                    before = dict(state)
                t0 = time.perf_counter()
                r = client.post("/v1/search", json={"query": f"{TOPICS[(n + i) % len(TOPICS)]} incident step",
                                                    "k": 5})
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    after = dict(state)
                if r.status_code != 200:
                    errors.append(r.text)
                elif before["running"] and after["running"] and before["started"] == after["started"]:
                    samples["load"].append(ms)
                elif not before["running"] and not after["running"] and before["started"] == after["started"]:
                    samples["idle"].append(ms)
                i += 1

    def asker() -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            while not stop.is_set():
                if not asks_wanted.wait(0.05):
                    continue
                with lock:
                    state["running"] += 1
                    state["started"] += 1
                t0 = time.perf_counter()
                r = client.post("/v1/ask", json=large_ask)
                asks.append(time.perf_counter() - t0)
                with lock:
                    state["running"] -= 1
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(2)] + [threading.Thread(target=asker)]
    for t in threads:
        t.start()
    try:
        for _ in range(ROUNDS):
            time.sleep(IDLE_S)
            asks_wanted.set()
            time.sleep(LOAD_S)
            asks_wanted.clear()
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not errors, errors[0]
    idle, load = samples["idle"], samples["load"]
    assert len(idle) >= 20 and len(load) >= 20 and asks, (len(idle), len(load), asks)
    idle_p99, load_p99 = percentile(idle, 99), percentile(load, 99)
    assert load_p99 <= 3 * idle_p99, (f"search p99 {load_p99:.1f} ms under asks vs {idle_p99:.1f} ms idle "
                                      f"({len(load)}/{len(idle)} searches, asks {[round(a, 2) for a in asks]})")
