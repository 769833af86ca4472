"""Ingest and query throughput through a remote embedder (Infinity serving the packaged MiniLM), beside a
raw HTTP client in the same run.

    PYTHONPATH=. python scripts/bench_embed_remote.py [--chunks 1536] [--servers 1 2] [--in-flight 1 2 4]

For each number of server processes (one port each; with two, esrag's requests alternate between them
through a tiny round-robin proxy, as a load balancer would) and each in-flight setting:

- ``raw_chunks_per_s``: the same texts in the same request sizes, sent straight to the server(s) with
  ``http.client`` from ``in_flight`` threads: what the server side can do;
- ``ingest_chunks_per_s``: ``esrag ingest`` of those texts (as documents of one chunk each) into a fresh
  SQLite index through ``openai_compat``; ``ratio`` = ingest / raw (target: at least 0.9).

Then query latency: hybrid search p50 with the query embedded remotely, the raw client's p50 for one
query's request, and in-process (the local model) for comparison. Needs the Infinity venv of
scripts/setup_env.sh test. Prints JSON. On a 2-core machine the servers and esrag share the cores: what
limits the figures is said in the README.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.types import Document  # noqa: E402
from tests.fixtures.embed_server import start_infinity  # noqa: E402

WORDS = ("index shard vector query latency snapshot replica cluster token chunk model server batch search "
         "answer document field mapping analyzer score").split()


def texts(n: int) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 90))) + f" #{i}" for i in range(n)]


class RoundRobin:
    """Forwards each POST to the next upstream in turn (a load balancer's simplest policy)."""

    def __init__(self, upstreams: list[str]) -> None:
        targets = [(u.split("//")[1].split(":")[0], int(u.rsplit(":", 1)[1])) for u in upstreams]
        turn = count()
        local = threading.local()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                i = next(turn) % len(targets)
                conns = getattr(local, "conns", None) or {}
                local.conns = conns
                conn = conns.get(i) or http.client.HTTPConnection(*targets[i], timeout=300)
                conns[i] = conn
                conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def raw_throughput(url: str, data: list[str], batch: int, in_flight: int) -> float:
    host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
    local = threading.local()

    def send(lo: int) -> None:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(host, port, timeout=300)
        local.conn = conn
        body = json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": data[lo:lo + batch]})
        conn.request("POST", "/embeddings", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status

    data = sorted(data, key=len, reverse=True)  # the requests the ingest makes: longest first, less padding
    t0 = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(send, range(0, len(data), batch)))
    return len(data) / (time.perf_counter() - t0)


def ingest_throughput(url: str, data: list[str], batch: int, in_flight: int, where: Path) -> float:
    settings = Settings(store="sqlite", sqlite_dir=str(where), index=f"b{time.monotonic_ns()}",
                        embedder="openai_compat", embed_template="{text}", chunk_size=256, chunk_overlap=32,
                        plugin_options={"embedder.openai_compat": {"url": url, "batch_size": batch,
                                                                   "in_flight": in_flight}})
    docs = [Document(doc_id=f"d{i}", source=f"d{i}", text=t) for i, t in enumerate(data)]
    with Engine(settings) as engine:
        engine.embedder.dims  # noqa: B018 - connect and learn the dims outside the timing
        report = engine.ingest_documents(docs)
        assert report.ok and report.chunks_embedded == len(data), report.to_dict()
        engine.drop()
    return len(data) / report.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=1536)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    data = texts(args.chunks)
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    servers = [start_infinity(tmp, batch_size=args.batch) for _ in range(max(args.servers))]
    out: dict[str, Any] = {"chunks": len(data), "batch": args.batch, "rows": []}
    try:
        raw_throughput(servers[0].url, data[:256], args.batch, 2)  # warm-up
        for n in args.servers:
            url = servers[0].url if n == 1 else RoundRobin([s.url for s in servers[:n]]).url
            for k in args.in_flight:
                raw = raw_throughput(url, data, args.batch, k)
                ingest = ingest_throughput(url, data, args.batch, k, tmp)
                out["rows"].append({"servers": n, "in_flight": k, "raw_chunks_per_s": round(raw, 1),
                                    "ingest_chunks_per_s": round(ingest, 1), "ratio": round(ingest / raw, 3)})
                print(json.dumps(out["rows"][-1]), file=sys.stderr)
        out["query"] = query_latency(servers[0].url, data, args.queries, tmp)
    finally:
        for s in servers:
            s.stop()
    print(json.dumps(out, indent=2))
    return 0


def query_latency(url: str, data: list[str], n: int, where: Path) -> dict[str, float]:
    """p50 (ms) of: a hybrid search embedding its query remotely, the raw client's one-query request, and a
    hybrid search with the in-process model, over the same small index."""
    base = {"store": "sqlite", "sqlite_dir": str(where), "index": "q", "embed_template": "{text}"}
    remote = Settings(**base, embedder="openai_compat",  # type: ignore[arg-type]
                      plugin_options={"embedder.openai_compat": {"url": url}})
    local = Settings(**base)  # type: ignore[arg-type]
    queries = [" ".join(data[i].split()[:6]) for i in range(n)]
    host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection(host, port, timeout=60)  # reopened per setting: idle ones are closed

    def raw_request(q: str) -> float:
        t0 = time.perf_counter()
        conn.request("POST", "/embeddings", body=json.dumps({"model": "m", "input": [q]}),
                     headers={"Content-Type": "application/json"})
        conn.getresponse().read()
        return (time.perf_counter() - t0) * 1e3

    result: dict[str, float] = {}
    with Engine(remote) as engine:
        engine.ingest_documents([Document(doc_id=f"d{i}", source=f"d{i}", text=t) for i, t in enumerate(data[:300])])
        for label, settings in (("remote", remote), ("in_process", local)):
            conn.close()
            with Engine(settings) as eng:
                eng.search(queries[0])
                raw, times, embed = [], [], []
                for q in queries:  # interleaved, so both see the same load
                    raw.append(raw_request(q))
                    t0 = time.perf_counter()
                    r = eng.search(q)
                    times.append((time.perf_counter() - t0) * 1e3)
                    embed.append(r.timings_ms["embed_ms"])
                if label == "remote":
                    result["raw_embed_request_p50_ms"] = statistics.median(raw)
                result[f"hybrid_{label}_p50_ms"] = statistics.median(times)
                result[f"embed_{label}_p50_ms"] = statistics.median(embed)
        engine.drop()
    result["remote_embed_overhead_vs_raw_ms"] = result["embed_remote_p50_ms"] - result["raw_embed_request_p50_ms"]
    return {k: round(v, 2) for k, v in result.items()}


if __name__ == "__main__":
    sys.exit(main())
