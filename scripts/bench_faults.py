"""Ingest under injected Elasticsearch faults: chunks written / failed / retried and the time of each run
against the no-fault run, measured in one run through the test suite's fault proxy.

Each scenario ingests the same corpus with the real CLI (``python -m esrag.cli ingest --json -v``) into a
fresh index through the proxy (tests/fixtures/fault_proxy.py) in front of the ES test server (noida-db,
started here on a free port, or ``ESRAG_TEST_ES_URL``). "retried" counts the bulk items sent again, from
the store's retry log lines. Also counts the HTTP requests of a re-ingest in which ``--changed`` documents
changed.

    python scripts/bench_faults.py --docs 60 --changed 20
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.es import free_port, wait_http  # noqa: E402
from tests.fixtures.fault_proxy import FaultProxy  # noqa: E402

RETRY_LINE = re.compile(r"retrying (\d+) item")
TOPICS = ["kafka partitions consumer groups", "postgres vacuum dead tuples", "tomatoes sunlight watering",
          "rust borrow checker ownership", "glaciers carve valleys", "espresso pressure grounds"]


@contextmanager
def es_server() -> Iterator[str]:
    env_url = os.environ.get("ESRAG_TEST_ES_URL")
    if env_url:
        yield env_url.rstrip("/")
        return
    exe = shutil.which("noida-db", path=str(Path(sys.executable).parent)) or shutil.which("noida-db")
    if exe is None:
        raise SystemExit("noida-db is not installed and ESRAG_TEST_ES_URL is not set")
    port = free_port()
    data = tempfile.mkdtemp(prefix="bench-faults-")
    proc = subprocess.Popen(  # noqa: S603
        [exe, "start", "--only", "elasticsearch", "--elasticsearch-port", str(port), "--data-dir", data],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_http(url, 60, proc):
            raise SystemExit(f"noida-db did not start on {url}")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def write_corpus(root: Path, n: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        paras = [f"Paragraph {j} of note {i} about {topic}. " * 3 for j in range(3)]
        (root / f"note{i:03d}.md").write_text(f"# Note {i}: {topic}\n\n" + "\n\n".join(paras) + "\n")


def ingest(url: str, index: str, corpus: Path, cfg: Path, **env_extra: str) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESRAG_")}
    env.update({"ESRAG_ES_URL": url, "ESRAG_INDEX": index, "ESRAG_CONFIG": str(cfg), "ESRAG_CHUNK_SIZE": "32",
                "ESRAG_CHUNK_OVERLAP": "4", "ESRAG_ES_TIMEOUT": "3", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **env_extra})
    start = time.monotonic()
    proc = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "esrag.cli", "-v", "ingest", str(corpus), "--json"], env=env,
        capture_output=True, text=True, check=False,
    )
    wall = time.monotonic() - start
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"ingest printed no JSON (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None
    retried = sum(int(m) for m in RETRY_LINE.findall(proc.stderr))
    return {"exit": proc.returncode, "written": report["chunks_written"], "failed": len(report["errors"]),
            "retried": retried, "ingest_s": float(report["seconds"]), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=60)
    parser.add_argument("--changed", type=int, default=20)
    parser.add_argument("--reingest-only", action="store_true", help="only the no-fault run and the re-ingest")
    args = parser.parse_args()
    scenarios: list[tuple[str, Callable[[FaultProxy], object], dict[str, str]]] = [
        ("no fault", lambda p: None, {}),
        ("per-item 429, every 2nd item, 3 requests", lambda p: p.bulk_items(429, every=2, times=3), {}),
        ("per-item 503, every 4th item, always (budget 2 s)", lambda p: p.bulk_items(503, every=4, times=None),
         {"ESRAG_ES_RETRY_SECONDS": "2"}),
        ("whole-request 429 x3", lambda p: p.status(429, path="/_bulk", times=3), {}),
        ("whole-request 502 x3", lambda p: p.status(502, path="/_bulk", times=3), {}),
        ("whole-request 503 x3", lambda p: p.status(503, path="/_bulk", times=3), {}),
        ("connection reset mid-response x2", lambda p: p.reset(path="/_bulk", times=2), {}),
        ("response delayed past the 3 s timeout x1", lambda p: p.delay(4, path="/_bulk", times=1), {}),
        ("429 storm: every item of 8 requests", lambda p: p.bulk_items(429, every=1, times=8), {}),
        ("cluster down for bulk (503 always, budget 2 s)", lambda p: p.status(503, path="/_bulk", times=None),
         {"ESRAG_ES_RETRY_SECONDS": "2"}),
    ]
    if args.reingest_only:
        scenarios = scenarios[:1]
    with tempfile.TemporaryDirectory() as tmp_s, es_server() as url:
        tmp = Path(tmp_s)
        corpus = tmp / "corpus"
        write_corpus(corpus, args.docs)
        cfg = tmp / "esrag.toml"
        cfg.write_text("")
        proxy = FaultProxy(url)
        rows = []
        try:
            for i, (name, arm, extra) in enumerate(scenarios):
                proxy.clear()
                arm(proxy)
                rows.append((name, ingest(proxy.url, f"bench-faults-{i}", corpus, cfg, **extra)))
            # requests of a re-ingest where --changed documents changed
            proxy.clear()
            for j in range(args.changed):
                with (corpus / f"note{j:03d}.md").open("a") as fh:
                    fh.write("\nAn appended paragraph that changes this note.\n")
            proxy.forget()
            re_run = ingest(proxy.url, "bench-faults-0", corpus, cfg)
            requests = Counter(f"{r.method} {r.path.split('?')[0]}" for r in proxy.requests)
        finally:
            proxy.close()
    base = rows[0][1]["ingest_s"]
    print(f"{args.docs} documents, {rows[0][1]['written']:.0f} chunks\n")
    print("| scenario | exit | written | failed | retried | ingest s | vs no fault |\n|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['exit']:.0f} | {r['written']:.0f} | {r['failed']:.0f} | {r['retried']:.0f} | "
              f"{r['ingest_s']:.1f} | {r['ingest_s'] / base:.2f}x |")
    print(f"\nre-ingest with {args.changed} changed documents: {sum(requests.values())} HTTP requests, "
          f"{re_run['written']:.0f} chunks written")
    for key, n in requests.most_common():
        print(f"  {n:4d}  {key}")


if __name__ == "__main__":
    main()
