"""What each framework adapter adds to a search: LangChain, LlamaIndex and Haystack over ``Engine.search``.

1. Ingests python-faq (``--docs`` sections; 0 = all 4,213) into a temporary SQLite store, with the packaged
   all-MiniLM-L6-v2 (default) or, with ``--embedder hashed``, the deterministic bag-of-words embedder of
   tests/plugins (no model: each search then costs ~1 ms, so the adapters' own cost is not lost in the
   query embedding's noise).
2. Over the same engine, in this process, the same queries (python-faq's 166, ``--rounds`` times) go to
   ``Engine.search`` and to each adapter, one after the other for each query in a rotating order: the
   LangChain retriever's ``invoke``, the LlamaIndex retriever's ``retrieve``, the Haystack component's
   ``run`` and, for reference, a Haystack ``Pipeline.run`` holding only that component (Haystack's own
   pipeline machinery, not the adapter's). k = 10 everywhere.
3. For each adapter: p50 latency against ``Engine.search``'s, and the median of the per-query differences
   (adapter minus engine on the same query in the same round), the search's own noise paired away.
4. The same again over an engine that replays the real engine's results for those queries (a dict look-up
   instead of a search): what remains is the adapters' own work (converting hits, the framework's call
   machinery), measured without a search's noise. Target (issue 25): at most 0.5 ms p50 added.

    python scripts/bench_adapters.py                              # 1,000 sections, MiniLM, 5 rounds
    python scripts/bench_adapters.py --embedder hashed --docs 0   # all sections, no model

Prints a table and one JSON object (also written to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.plugins, for --embedder hashed

from _bench_common import DEFAULT_DATA, dataset, percentile, read_jsonl  # noqa: E402

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.retrieval.search import SearchResult  # noqa: E402
from esrag.types import Document, Filters  # noqa: E402

K = 10


def build_engine(args: argparse.Namespace) -> Engine:
    if args.embedder == "hashed":
        from tests.plugins.dist import write_distribution

        sys.path.insert(0, str(write_distribution(Path(tempfile.mkdtemp(prefix="esrag-bench-plugins-")))))
    store = args.store_dir or tempfile.mkdtemp(prefix="esrag-bench-adapters-")
    engine = Engine(Settings(sqlite_dir=store, index="python-faq", embedder=args.embedder))
    rows = read_jsonl(dataset(args.data) / "corpus.jsonl", limit=args.docs or None)
    t0 = time.perf_counter()
    report = engine.ingest_documents(Document(doc_id=r["_id"], source=r["_id"], title=r.get("title", ""),
                                              text=r["text"]) for r in rows)
    print(f"ingested {len(rows)} sections ({report.chunks_written} chunks written, {report.documents_unchanged} "
          f"unchanged) in {time.perf_counter() - t0:.1f} s into {store}", file=sys.stderr)
    return engine


class ReplayingEngine(Engine):
    """An engine whose ``search`` returns the result the real engine gave for that query (kept by ``record``):
    an adapter over it costs only its own work, timed without the search's noise."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.results: dict[tuple[str, int | None], SearchResult] = {}

    def record(self, real: Engine, queries: list[str]) -> None:
        for q in queries:
            self.results[(q, K)] = real.search(q, k=K)

    def search(self, query: str, filters: Filters | None = None, **overrides: Any) -> SearchResult:
        return self.results[(query, overrides.get("k"))]


def callers(engine: Engine) -> dict[str, Callable[[str], int]]:
    """Each way of searching, as ``query -> number of results``."""
    from haystack import Pipeline

    from esrag.integrations.haystack import EsragRetriever as HaystackRetriever
    from esrag.integrations.langchain import EsragRetriever as LangChainRetriever
    from esrag.integrations.llamaindex import EsragRetriever as LlamaIndexRetriever

    lc = LangChainRetriever(engine=engine, k=K)
    li = LlamaIndexRetriever(engine, similarity_top_k=K)
    hs = HaystackRetriever(engine=engine, top_k=K)
    pipeline = Pipeline()
    pipeline.add_component("retriever", HaystackRetriever(engine=engine, top_k=K))
    return {
        "Engine.search": lambda q: len(engine.search(q, k=K).hits),
        "langchain invoke": lambda q: len(lc.invoke(q)),
        "llamaindex retrieve": lambda q: len(li.retrieve(q)),
        "haystack run": lambda q: len(hs.run(q)["documents"]),
        "haystack Pipeline.run": lambda q: len(pipeline.run({"retriever": {"query": q}})["retriever"]["documents"]),
    }


def measure(calls: dict[str, Callable[[str], int]], queries: list[str], rounds: int) -> dict[str, list[float]]:
    """Milliseconds per call, per caller; entry i of every list is the same query in the same round."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    for q in queries[:20]:  # warm-up: models, caches, lazy imports
        for n in names:
            calls[n](q)
    for r in range(rounds):
        for i, q in enumerate(queries):
            shift = (r + i) % len(names)
            for n in names[shift:] + names[:shift]:
                t0 = time.perf_counter()
                got = calls[n](q)
                times[n].append((time.perf_counter() - t0) * 1e3)
                if got > K:
                    raise SystemExit(f"{n} returned {got} results for k={K}")
    return times


def table(times: dict[str, list[float]], title: str) -> dict[str, dict[str, Any]]:
    """p50/p95 per caller and what each adds to ``Engine.search``: p50 against p50, and the median of the
    paired differences (the same query in the same round); printed, and returned."""
    base = times["Engine.search"]
    rows: dict[str, dict[str, Any]] = {}
    for name, ms in times.items():
        diffs = [a - b for a, b in zip(ms, base, strict=True)]
        rows[name] = {"p50_ms": round(percentile(ms, 50), 3), "p95_ms": round(percentile(ms, 95), 3),
                      "p50_added_ms": round(percentile(ms, 50) - percentile(base, 50), 3),
                      "median_paired_added_ms": round(median(diffs), 3), "calls": len(ms)}
    print(f"\n{title}\n{'caller':<24}{'p50 ms':>9}{'p95 ms':>9}{'p50 added':>11}{'paired added':>14}")
    for name, row in rows.items():
        print(f"{name:<24}{row['p50_ms']:>9.3f}{row['p95_ms']:>9.3f}{row['p50_added_ms']:>+11.3f}"
              f"{row['median_paired_added_ms']:>+14.3f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a BEIR-format set (default: python-faq)")
    ap.add_argument("--docs", type=int, default=1000, help="corpus sections to ingest (0: all)")
    ap.add_argument("--embedder", choices=("sentence_transformers", "hashed"), default="sentence_transformers")
    ap.add_argument("--rounds", type=int, default=5, help="passes over the queries")
    ap.add_argument("--store-dir", help="keep the store here (a rerun on the same dir re-ingests nothing)")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    engine = build_engine(args)
    queries = [q["text"] for q in read_jsonl(args.data / "queries.jsonl")]
    replay = ReplayingEngine(engine.settings)
    replay.record(engine, queries)
    out: dict[str, Any] = {"embedder": args.embedder, "docs": args.docs, "queries": len(queries),
                           "rounds": args.rounds, "k": K, "target_added_ms": 0.5}
    for label, over, title in (("search", engine, "over the real Engine.search"),
                               ("replayed", replay, "over replayed results: the adapters' own cost")):
        out[label] = table(measure(callers(over), queries, args.rounds), title)
    out["load_avg"] = os.getloadavg()[0]
    print(json.dumps(out))
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=2))
    engine.close()


if __name__ == "__main__":
    main()
