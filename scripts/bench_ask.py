"""Benchmark ``esrag ask`` on CPU with SmolLM2-135M-Instruct, for both generators.

For each generator it reports load time (transformers_local: cold = GGUF conversion, cached = the
dequantised copy), retrieval ms, time to first token, tokens/s, and the overhead esrag adds around the raw
generator call:

- ``overhead_ms`` (instrumented): ask total - retrieval - the generator call as timed inside the pipeline.
  That is prompt fitting, message building, citation parsing and the streaming plumbing. Noise-free.
- ``overhead_pct``: ``overhead_ms`` over the median raw generation time of the same prompt (target <= 5%).
- ``constraint_cost_pct``: for a generator that constrains citations (transformers_local), the decoding
  time per token (after the first) with the constraint over that of the same prompt without it, minus 1. The
  raw call above then uses the constraint too, so that ask and raw generate the same tokens.
- ``diff_pct`` (measured): median ask total minus retrieval minus the median of a raw ``generator.stream``
  of the identical prompt, over that raw time. It includes run-to-run noise of the model, which on a busy
  machine is larger than the overhead itself; greedy decoding keeps the token count identical, and a
  one-token unrelated request before each measured call stops llama.cpp's prompt cache favouring one side.

Usage::

    HF_HUB_OFFLINE=1 python scripts/bench_ask.py                    # both generators, 3 questions x 3
    python scripts/bench_ask.py --generators transformers_local --cold --threads 1
    python scripts/bench_ask.py --llm-url http://localhost:8080     # an already running server

A llama.cpp server (``python -m llama_cpp.server``) is started for openai_compat unless --llm-url is given.
Prints a table and then one JSON object (also written to --json-out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DOCS = {
    "eiffel": ("Eiffel Tower", "The Eiffel Tower, on the Champ de Mars in Paris, was completed in 1889 for the "
                               "World's Fair. It is 330 metres tall and was the tallest structure until 1930."),
    "rust": ("Rust", "Rust is a systems programming language that guarantees memory safety without a garbage "
                     "collector, using ownership and borrowing checked at compile time."),
    "bm25": ("BM25", "BM25 is a ranking function used by search engines such as Elasticsearch. It scores a "
                     "document by term frequency, inverse document frequency and document length."),
    "hnsw": ("HNSW", "HNSW (hierarchical navigable small world) graphs answer approximate nearest neighbour "
                     "queries in logarithmic time by descending through layers of proximity graphs."),
    "tea": ("Tea", "Green tea is made from unoxidised leaves of Camellia sinensis; black tea from fully "
                   "oxidised ones. Both contain caffeine and the amino acid L-theanine."),
    "kafka": ("Kafka", "Apache Kafka stores streams of records in partitioned, replicated logs. Consumers in a "
                       "group split the partitions of a topic between them."),
}
QUESTIONS = ["When was the Eiffel Tower completed?", "How does Rust achieve memory safety?",
             "What does BM25 use to score documents?"]


def build_index(workdir: Path) -> tuple[Any, Any, Any]:
    from esrag import plugins
    from esrag.config import Settings
    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder
    from esrag.ingest.pipeline import Ingestor
    from esrag.sources.documents import DocumentsSource
    from esrag.types import Document

    settings = Settings(store="sqlite", sqlite_dir=str(workdir / "store"), index="bench", device="cpu")
    store = plugins.load(plugins.STORES, "sqlite")(settings)
    embedder = SentenceTransformerEmbedder(device="cpu")
    docs = [Document(doc_id=k, source=f"docs/{k}.md", title=t, text=x) for k, (t, x) in DOCS.items()]
    Ingestor(store, embedder, settings).ingest(DocumentsSource(docs))
    return settings, store, embedder


def start_server(workdir: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    from esrag.generators.transformers_local import resolve_source
    from tests.fixtures.es import free_port, wait_http

    gguf = resolve_source(None).gguf_path
    port = free_port()
    log = (workdir / "llama.log").open("wb")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--verbose", "False"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if not wait_http(f"{url}/v1/models", 120, proc):
        proc.kill()
        raise SystemExit(f"llama.cpp server did not start; see {log.name}")
    return proc, url, time.perf_counter() - started


def flush(pipeline: Any) -> None:
    """Generate one token for an unrelated prompt, so that a server's prompt cache (llama.cpp keeps the last
    prompt's KV state) holds only the shared system-prompt prefix before every measured call: otherwise
    whichever of ask/raw runs second skips its prompt processing."""
    from esrag.answering.prompt import build_messages

    g = pipeline.generator
    keep, g.max_new_tokens = g.max_new_tokens, 1
    try:
        for _ in g.stream(build_messages("Say OK.", [])):
            pass
    finally:
        g.max_new_tokens = keep


def bench_generator(pipeline: Any, repeat: int) -> dict[str, Any]:
    """Interleave ``ask`` and a raw ``generator.stream`` of the same prompt, ``repeat`` times per question."""
    g = pipeline.generator
    pipeline.ask(QUESTIONS[0])  # warm-up: first-call costs (kernels, server prompt cache) are not the point
    rows: list[dict[str, float]] = []
    for question in QUESTIONS:
        for _ in range(repeat):
            flush(pipeline)
            answer = pipeline.ask(question)
            prepared = pipeline.prepare(question, answer.retrieved)
            constrained = answer.constrained_citations
            sources = {"sources": len(prepared.passages)} if constrained else {}
            flush(pipeline)
            t0 = time.perf_counter()
            first = None
            for piece in g.stream(prepared.messages, **sources):  # the identical call the pipeline made
                if first is None and piece:
                    first = time.perf_counter()
            t_end = time.perf_counter()
            raw_ms = (t_end - t0) * 1e3
            raw_tokens = g.last_completion_tokens or 0
            decode_ms_per_token = (t_end - (first or t0)) * 1e3 / max(raw_tokens - 1, 1)
            free_ms_per_token = decode_ms_per_token
            if constrained:  # the same prompt without the citation constraint: decode time per token
                flush(pipeline)
                first_free = None
                for piece in g.stream(prepared.messages):
                    if first_free is None and piece:
                        first_free = time.perf_counter()
                free_ms_per_token = ((time.perf_counter() - (first_free or time.perf_counter())) * 1e3
                                     / max((g.last_completion_tokens or 0) - 1, 1))
            t = answer.timings
            rows.append({
                "retrieval_ms": t.retrieval_ms, "ttft_ms": t.ttft_ms or 0.0, "tokens": t.tokens,
                "tokens_per_s": t.tokens_per_s or 0.0, "generation_ms": t.generation_ms, "total_ms": t.total_ms,
                "raw_ms": raw_ms, "raw_ttft_ms": ((first or t0) - t0) * 1e3,
                "overhead_ms": t.total_ms - t.retrieval_ms - t.generation_ms,
                "constraint_cost_pct": 100 * (decode_ms_per_token / free_ms_per_token - 1),
            })
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    med["overhead_pct"] = 100 * med["overhead_ms"] / med["raw_ms"]
    med["diff_pct"] = 100 * (med["total_ms"] - med["retrieval_ms"] - med["raw_ms"]) / med["raw_ms"]
    med["runs"] = len(rows)
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", default="openai_compat,transformers_local")
    parser.add_argument("--repeat", type=int, default=3, help="runs per question (3 questions)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--llm-url", help="use this server instead of starting llama.cpp")
    parser.add_argument("--cold", action="store_true",
                        help="transformers_local: use an empty cache dir, so the first load converts the GGUF")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import torch

    from esrag.answering.rag import RagPipeline
    from esrag.retrieval.search import HybridSearcher

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, Any] = {"device": "cpu", "torch_threads": torch.get_num_threads(),
                               "max_new_tokens": args.max_new_tokens, "generators": {}}
    with tempfile.TemporaryDirectory(prefix="esrag-bench-") as tmp:
        workdir = Path(tmp)
        settings, store, embedder = build_index(workdir)
        settings = settings.replace(max_new_tokens=args.max_new_tokens, temperature=0.0, rag_k=3)
        searcher = HybridSearcher(store, embedder, settings)
        server = None
        try:
            for name in args.generators.split(","):
                load: dict[str, float | None] = {}
                if name == "openai_compat":
                    from esrag.generators.openai_compat import OpenAICompatGenerator

                    url = args.llm_url
                    if url is None:
                        server, url, load["server_start_s"] = start_server(workdir)
                    generator: Any = OpenAICompatGenerator(settings.replace(llm_url=url))
                else:
                    from esrag.generators.transformers_local import TransformersLocalGenerator

                    cache = workdir / "cache" if args.cold else None
                    first = TransformersLocalGenerator(settings, cache_dir=cache)
                    load["first_load_s"] = first.load_seconds
                    load["first_load_converted"] = float(first.loaded_from_cache is False)
                    first.close()
                    generator = TransformersLocalGenerator(settings, cache_dir=cache)
                    load["cached_load_s"] = generator.load_seconds
                stats = bench_generator(RagPipeline(searcher, generator, settings), args.repeat)
                results["generators"][name] = {"model": generator.model, **load, **stats}
                generator.close()
        finally:
            if server is not None:
                server.terminate()
                server.wait(10)
            store.close()
    print_table(results)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")


def print_table(results: dict[str, Any]) -> None:
    cols = [("retrieval_ms", "retr ms"), ("ttft_ms", "ttft ms"), ("tokens", "tokens"),
            ("tokens_per_s", "tok/s"), ("raw_ms", "raw gen ms"), ("total_ms", "ask ms"),
            ("overhead_ms", "ovh ms"), ("overhead_pct", "ovh %"), ("diff_pct", "diff %"),
            ("constraint_cost_pct", "cite %")]
    print(f"{'generator':<20}" + "".join(f"{label:>12}" for _, label in cols))
    for name, r in results["generators"].items():
        print(f"{name:<20}" + "".join(f"{r[key]:>12.1f}" for key, _ in cols))
    for name, r in results["generators"].items():
        loads = ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k.endswith("_s") and v is not None)
        print(f"{name}: {loads}")


if __name__ == "__main__":
    main()
