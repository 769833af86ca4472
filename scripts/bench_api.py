"""What the HTTP API costs over calling the engine in-process, on python-faq in the embedded store.

1. Ingests the corpus (``--docs`` sections; 0 = all 4,213) with the packaged all-MiniLM-L6-v2 into a
   temporary SQLite store, in this process.
2. Starts ``esrag serve`` on that store (a separate process, generator ``none``) and waits for /readyz.
3. For each concurrency (``--concurrency``, default 1 4 16): ``--requests`` hybrid searches (query embedding
   included, k=10) through the in-process ``Engine.search`` from that many threads, then the same through
   ``POST /v1/search`` from that many client threads (one keep-alive httpx client each). Latency is per
   request, wall-clock, measured by the caller; q/s is requests over the wall time of the level.
4. ``POST /v1/ask`` with ``"stream": true`` (generator none: the sources then done): how long after
   retrieval finished the client has the sources event: the client's time to that event minus the
   ``retrieval_ms`` the event reports (an upper bound: it includes the HTTP round trip and parsing).
5. Mixed load (``--mixed-rounds``): ``--mixed-clients`` clients search without pause while, in every other
   window of ``--mixed-window`` seconds, one more client sends ``/v1/ask`` with ``"k": 50`` and the
   extractive generator back to back (it embeds its passages' sentences with the model searches need). A
   search counts as under load when an ask ran when it was sent and when it returned, as idle when no ask
   ran at any time in between. Target: search p99 under load at most 3x its idle p99.

Both sides share the machine's cores; the API side also runs its client threads. Targets (issue #11):
API p50 at most +2 ms over in-process at concurrency 1; at 16 clients API q/s >= 0.7x in-process and API
p99 <= 4x its own p50; the sources event within 10 ms of retrieval; no errors. Issue #19: search p99
under a concurrent large ask <= 3x idle.

    HF_HUB_OFFLINE=1 python scripts/bench_api.py                 # 1,000 sections, 1/4/16 clients
    python scripts/bench_api.py --docs 0 --requests 400           # the whole corpus
    python scripts/bench_api.py --concurrency 1 --sse 0 --mixed-rounds 10   # mostly the mixed load

Prints a table and one JSON object (also written to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx  # noqa: E402
from _bench_common import DEFAULT_DATA, dataset, percentile, read_jsonl  # noqa: E402

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.types import Document  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summary(latencies_ms: list[float], wall_s: float, errors: int) -> dict[str, float]:
    return {"p50_ms": round(percentile(latencies_ms, 50), 2), "p99_ms": round(percentile(latencies_ms, 99), 2),
            "qps": round(len(latencies_ms) / wall_s, 1) if wall_s > 0 else 0.0, "errors": errors,
            "requests": len(latencies_ms)}


def run_level(concurrency: int, requests: int, queries: list[str], call: Any, setup: Any = None) -> dict[str, float]:
    """``requests`` calls of ``call(state, query)`` spread over ``concurrency`` threads."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    per_thread = [requests // concurrency + (i < requests % concurrency) for i in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        state = setup() if setup else None
        mine: list[float] = []
        barrier.wait()
        for j in range(per_thread[i]):
            q = queries[(i * 7919 + j) % len(queries)]
            t0 = time.perf_counter()
            try:
                ok = call(state, q)
            except Exception:  # noqa: BLE001 - counted
                ok = False
            mine.append((time.perf_counter() - t0) * 1e3)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)
        if state is not None and hasattr(state, "close"):
            state.close()

    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(worker, i) for i in range(concurrency)]
        barrier.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        wall = time.perf_counter() - t0
    return summary(latencies, wall, errors[0])


def sse_sources_latency(url: str, queries: list[str], n: int) -> dict[str, float]:
    """Two figures for /v1/ask (stream): the server's own ``sent_after_retrieval_ms`` (retrieval's end to the
    sources event being written), and an upper bound seen by the client: from sending the request to holding
    the sources event, minus retrieval_ms (so it also counts the request's parsing, auth and HTTP)."""
    after: list[float] = []
    server: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(n):
            t0 = time.perf_counter()
            with client.stream("POST", "/v1/ask", json={"question": queries[i % len(queries)], "stream": True}) as r:
                lines = r.iter_lines()
                assert next(lines) == "event: sources"
                data = json.loads(next(lines)[len("data: "):])
                t_sources = (time.perf_counter() - t0) * 1e3
                for _ in lines:
                    pass
            after.append(t_sources - float(data["retrieval_ms"]))
            server.append(float(data["sent_after_retrieval_ms"]))
    return {"p50_ms": round(percentile(server, 50), 2), "p99_ms": round(percentile(server, 99), 2),
            "client_upper_bound_p50_ms": round(percentile(after, 50), 2),
            "client_upper_bound_p99_ms": round(percentile(after, 99), 2), "n": n}


def mixed_load(url: str, queries: list[str], rounds: int, window_s: float, clients: int) -> dict[str, Any]:
    """Search latency without and with a concurrent large ask (step 5 of the module docstring)."""
    ask_body = {"question": "", "k": 50, "generator": "extractive"}
    lock = threading.Lock()
    state = {"running": 0, "started": 0}
    samples: dict[str, list[float]] = {"idle": [], "load": []}
    asks: list[float] = []
    errors = [0]
    asks_wanted, stop = threading.Event(), threading.Event()

    def searcher(n: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            i = 0
            while not stop.is_set():
                with lock:
                    before = dict(state)
                t0 = time.perf_counter()
                r = client.post("/v1/search", json={"query": queries[(n * 7919 + i) % len(queries)], "k": 10})
                ms = (time.perf_counter() - t0) * 1e3
                with lock:
                    after = dict(state)
                i += 1
                if r.status_code != 200:
                    errors[0] += 1
                elif before["started"] == after["started"] and bool(before["running"]) == bool(after["running"]):
                    samples["load" if before["running"] else "idle"].append(ms)

    def asker() -> None:
        with httpx.Client(base_url=url, timeout=300) as client:
            i = 0
            while not stop.is_set():
                if not asks_wanted.wait(0.05):
                    continue
                with lock:
                    state["running"] += 1
                    state["started"] += 1
                t0 = time.perf_counter()
                r = client.post("/v1/ask", json={**ask_body, "question": queries[i % len(queries)]})
                asks.append(time.perf_counter() - t0)
                with lock:
                    state["running"] -= 1
                i += 1
                if r.status_code != 200:
                    errors[0] += 1

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(clients)]
    threads.append(threading.Thread(target=asker))
    for t in threads:
        t.start()
    try:
        for _ in range(rounds):
            time.sleep(window_s)
            asks_wanted.set()
            time.sleep(window_s)
            asks_wanted.clear()
    finally:
        stop.set()
        for t in threads:
            t.join(600)
    idle, load = (summary(samples[k], 1.0, 0) for k in ("idle", "load"))
    return {"clients": clients, "rounds": rounds, "window_s": window_s, "idle": idle, "load": load,
            "asks": len(asks), "ask_p50_s": round(percentile(asks, 50), 2) if asks else None,
            "errors": errors[0],
            "p99_ratio": round(load["p99_ms"] / idle["p99_ms"], 2) if idle["p99_ms"] else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR dataset dir (corpus.jsonl, queries.jsonl)")
    ap.add_argument("--docs", type=int, default=1000, help="corpus sections to ingest (0: all)")
    ap.add_argument("--requests", type=int, default=200, help="searches per side and concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--sse", type=int, default=30, help="streamed asks for the sources-event latency")
    ap.add_argument("--mixed-rounds", type=int, default=5,
                    help="idle/ask window pairs of the mixed-load case (0: skip it)")
    ap.add_argument("--mixed-window", type=float, default=3.0, help="seconds of each mixed-load window")
    ap.add_argument("--mixed-clients", type=int, default=2, help="searching clients in the mixed-load case")
    ap.add_argument("--workdir", type=Path,
                    help="keep the store here (default: a new temp dir); a rerun on the same dir re-ingests "
                         "nothing (the ingest is incremental)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()
    args.data = dataset(args.data)

    rows = read_jsonl(args.data / "corpus.jsonl", limit=args.docs or None)
    queries = [q["text"] for q in read_jsonl(args.data / "queries.jsonl")]
    tmp = args.workdir or Path(tempfile.mkdtemp(prefix="esrag-bench-api-"))
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = tmp / "esrag.toml"
    cfg.write_text("")
    os.environ["ESRAG_CONFIG"] = str(cfg)
    settings = Settings(sqlite_dir=str(tmp / "db"), index="faq", generator="none", device="cpu")
    engine = Engine(settings)
    t0 = time.perf_counter()
    report = engine.ingest_documents(
        (Document(doc_id=r["_id"], source=r["_id"], title=r.get("title", ""), text=r["text"]) for r in rows),
        total=len(rows))
    ingest_s = time.perf_counter() - t0
    print(f"ingested {len(rows)} sections ({report.documents_unchanged} unchanged), {report.chunks_written} chunks "
          f"written in {ingest_s:.1f} s", file=sys.stderr)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "esrag.cli", "serve", "--port", str(port), "--sqlite-dir",
                             str(tmp / "db"), "--index", "faq", "--generator", "none", "--device", "cpu",
                             "--generators", "extractive", "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                sys.exit(f"esrag serve exited:\n{(tmp / 'server.log').read_text()}")
            time.sleep(0.2)

        def in_process(_: Any, q: str) -> bool:
            return bool(engine.search(q, k=10).hits)

        def over_http(client: httpx.Client, q: str) -> bool:
            r = client.post("/v1/search", json={"query": q, "k": 10})
            return r.status_code == 200 and bool(r.json()["hits"])

        def client() -> httpx.Client:
            return httpx.Client(base_url=url, timeout=60)

        # warm both sides (model, caches, connections)
        run_level(1, 20, queries, in_process)
        run_level(1, 20, queries, over_http, client)
        results: dict[str, Any] = {"docs": len(rows), "chunks": engine.store.count().chunks,
                                   "ingest_s": round(ingest_s, 1), "load_avg_before": os.getloadavg()[0],
                                   "levels": {}}
        for c in args.concurrency:
            results["levels"][c] = {"in_process": run_level(c, args.requests, queries, in_process),
                                    "api": run_level(c, args.requests, queries, over_http, client)}
        if args.sse:
            results["sse_sources_after_retrieval"] = sse_sources_latency(url, queries, args.sse)
        if args.mixed_rounds:
            results["mixed_load"] = mixed_load(url, queries, args.mixed_rounds, args.mixed_window,
                                               args.mixed_clients)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        log.close()
        engine.close()

    print(f"{'clients':>7} {'side':>10} {'p50 ms':>8} {'p99 ms':>8} {'q/s':>7} {'errors':>6}")
    for c, sides in results["levels"].items():
        for side, s in sides.items():
            print(f"{c:>7} {side:>10} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} {s['qps']:>7.1f} {s['errors']:>6}")
    lv = results["levels"]
    checks = {}
    if 1 in lv:
        checks["p50_added_ms_at_1"] = round(lv[1]["api"]["p50_ms"] - lv[1]["in_process"]["p50_ms"], 2)
    if 16 in lv:
        checks["qps_ratio_at_16"] = round(lv[16]["api"]["qps"] / lv[16]["in_process"]["qps"], 2)
        checks["api_p99_over_p50_at_16"] = round(lv[16]["api"]["p99_ms"] / lv[16]["api"]["p50_ms"], 2)
    results["checks"] = checks
    results["load_avg_after"] = os.getloadavg()[0]
    sse = results.get("sse_sources_after_retrieval")
    if sse:
        print(f"sources event after retrieval (server): p50 {sse['p50_ms']:.2f} ms, p99 {sse['p99_ms']:.2f} ms; "
              f"client-side upper bound p50 {sse['client_upper_bound_p50_ms']:.2f} ms, "
              f"p99 {sse['client_upper_bound_p99_ms']:.2f} ms")
    mixed = results.get("mixed_load")
    if mixed:
        checks["search_p99_under_ask_over_idle"] = mixed["p99_ratio"]
        print(f"search with {mixed['clients']} clients: idle p50 {mixed['idle']['p50_ms']:.1f} / p99 "
              f"{mixed['idle']['p99_ms']:.1f} ms ({mixed['idle']['requests']}); under k=50 asks p50 "
              f"{mixed['load']['p50_ms']:.1f} / p99 {mixed['load']['p99_ms']:.1f} ms ({mixed['load']['requests']}); "
              f"p99 ratio {mixed['p99_ratio']} (target <= 3); {mixed['asks']} asks, p50 {mixed['ask_p50_s']} s; "
              f"{mixed['errors']} errors")
    print(json.dumps(checks))
    out = json.dumps(results, indent=2)
    print(out)
    if args.json_out:
        args.json_out.write_text(out)


if __name__ == "__main__":
    main()
