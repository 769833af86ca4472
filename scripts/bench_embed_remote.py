"""Ingest and query throughput through a remote embedder (Infinity serving the packaged MiniLM), beside a
raw HTTP client in the same run.

    PYTHONPATH=. python scripts/bench_embed_remote.py [--chunks 384] [--rounds 3] [--servers 1 2] [--in-flight 1 2 4]

For each number of server processes (one port each; with two, both clients' requests alternate between
them through a tiny round-robin proxy, as a load balancer would) and each in-flight setting:

- ``raw_chunks_per_s``: the same texts sent straight to the server(s) with ``http.client`` from
  ``in_flight`` threads, nothing else done: what the server side can do. The requests are the ingest's
  own: the texts cut into the ingest's windows, each sorted longest first and cut into requests of
  ``--batch`` texts (``esrag.embedders.inflight.requests``), sent in that order, ``in_flight`` at a time
  across windows. The bench records the requests the ingest sent (their texts) and checks they are the
  raw client's (besides the one request of the fingerprint probe, part of esrag's cost);
- ``ingest_chunks_per_s``: ``esrag ingest`` of those texts (as documents of one chunk each) into a fresh
  SQLite index through ``openai_compat`` (chunking, fingerprint check, writes, refresh included);
  ``ratio`` = ingest / raw (target: at least 0.9).

Every setting is measured ``--rounds`` times, in interleaved order (the settings in turn, reversed every
other round; raw first in even rounds, ingest first in odd ones), so that drift on a noisy machine hits
both sides alike; each round's ratio is its ingest over its raw, and the median is reported with the range.
The one-time cost of a process's first ingest (loading the tokenizer: transformers' import) is measured
once, before the rounds, and reported apart (``first_ingest_tokenizer_load_s``): it is a start-up cost,
not throughput.

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
from esrag.embedders import inflight  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.ingest.pipeline import Ingestor  # noqa: E402
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
                for attempt in (0, 1):  # an upstream connection idle too long was closed: reopen it once
                    conn = conns.get(i) or http.client.HTTPConnection(*targets[i], timeout=300)
                    conns[i] = conn
                    try:
                        conn.request("POST", self.path, body=body, headers={"Content-Type": "application/json"})
                        resp = conn.getresponse()
                        data = resp.read()
                        break
                    except (OSError, http.client.HTTPException):
                        conn.close()
                        del conns[i]
                        if attempt:
                            raise
                self.send_response(resp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def ingest_requests(data: list[str], window: int, batch: int) -> list[list[str]]:
    """The requests an ingest of ``data`` (one chunk per document) makes, in order: windows of ``window``
    texts, each sorted longest first and cut into ``batch``-text requests, as ``inflight.Stream`` does."""
    out: list[list[str]] = []
    for lo in range(0, len(data), window):
        part = data[lo:lo + window]
        out += [[part[i] for i in idx] for idx in inflight.requests(part, batch)]
    return out


def raw_throughput(url: str, reqs: list[list[str]], in_flight: int) -> float:
    """Chunks/s of sending ``reqs`` in order, ``in_flight`` at a time, over one keep-alive connection per
    thread, with ``http.client``."""
    host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
    local = threading.local()

    def send(texts: list[str]) -> None:
        conn = getattr(local, "conn", None) or http.client.HTTPConnection(host, port, timeout=300)
        local.conn = conn
        body = json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "input": texts,
                           "encoding_format": "float"})
        conn.request("POST", "/embeddings", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200, resp.status

    t0 = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(send, reqs))
    return sum(map(len, reqs)) / (time.perf_counter() - t0)


def ingest_settings(url: str, batch: int, in_flight: int, where: Path) -> Settings:
    return Settings(store="sqlite", sqlite_dir=str(where), index=f"b{time.monotonic_ns()}",
                    embedder="openai_compat", embed_template="{text}", chunk_size=256, chunk_overlap=32,
                    plugin_options={"embedder.openai_compat": {"url": url, "batch_size": batch,
                                                               "in_flight": in_flight}})


def ingest_throughput(url: str, data: list[str], batch: int, in_flight: int, where: Path,
                      sent: list[tuple[str, ...]] | None = None) -> float:
    """Chunks/s of ``esrag ingest`` of ``data`` (one chunk a document) into a fresh index; the requests it
    sent (their texts) are appended to ``sent``."""
    settings = ingest_settings(url, batch, in_flight, where)
    docs = [Document(doc_id=f"d{i}", source=f"d{i}", text=t) for i, t in enumerate(data)]
    with Engine(settings) as engine:
        engine.embedder.dims  # noqa: B018 - connect and learn the dims outside the timing
        if sent is not None:  # record the requests (a measuring hook: their texts, in sending order)
            real: Any = engine.embedder.get()  # type: ignore[attr-defined]
            post = real._post

            def recorded(texts: list[str]) -> Any:
                sent.append(tuple(texts))
                return post(texts)

            real._post = recorded
        report = engine.ingest_documents(docs)
        assert report.ok and report.chunks_embedded == len(data), report.to_dict()
        engine.drop()
    return len(data) / report.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=384)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=40)
    args = parser.parse_args()
    data = texts(args.chunks)
    tmp = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    servers = [start_infinity(tmp, batch_size=args.batch) for _ in range(max(args.servers))]
    out: dict[str, Any] = {"chunks": len(data), "batch": args.batch, "rounds": args.rounds, "rows": []}
    try:
        urls = {n: servers[0].url if n == 1 else RoundRobin([s.url for s in servers[:n]]).url for n in args.servers}
        window = Ingestor(None, None, ingest_settings(servers[0].url, args.batch, 1, tmp)).window  # type: ignore[arg-type]
        out["window"] = window
        t0 = time.perf_counter()
        ingest_throughput(servers[0].url, data[:8], args.batch, 1, tmp)  # the tokenizer, once a process
        out["first_ingest_tokenizer_load_s"] = round(time.perf_counter() - t0, 2)
        for s in servers:
            raw_throughput(s.url, ingest_requests(data[:256], window, args.batch), 2)  # warm-up
        settings = [(n, k) for n in args.servers for k in args.in_flight]
        measured: dict[tuple[int, int], dict[str, list[float]]] = {s: {"raw": [], "ingest": []} for s in settings}
        for r in range(args.rounds):
            for n, k in settings if r % 2 == 0 else settings[::-1]:
                reqs = ingest_requests(data, window, args.batch)
                sent: list[tuple[str, ...]] = []
                for side in ("raw", "ingest") if r % 2 == 0 else ("ingest", "raw"):
                    if side == "raw":
                        value = raw_throughput(urls[n], reqs, k)
                    else:
                        value = ingest_throughput(urls[n], data, args.batch, k, tmp, sent)
                    measured[(n, k)][side].append(value)
                probe = sent.pop(0)  # the fingerprint probe of the fresh index
                assert sorted(sent) == sorted(map(tuple, reqs)), "the ingest sent other requests than the raw client"
                ratio = measured[(n, k)]["ingest"][-1] / measured[(n, k)]["raw"][-1]
                print(json.dumps({"round": r, "servers": n, "in_flight": k, "ratio": round(ratio, 3),
                                  "requests": len(sent), "probe_texts": len(probe)}), file=sys.stderr)
        for (n, k), m in measured.items():
            ratios = sorted(i / r for i, r in zip(m["ingest"], m["raw"], strict=True))
            out["rows"].append({"servers": n, "in_flight": k,
                                "raw_chunks_per_s": round(statistics.median(m["raw"]), 1),
                                "ingest_chunks_per_s": round(statistics.median(m["ingest"]), 1),
                                "ratio": round(statistics.median(ratios), 3),
                                "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)]})
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
