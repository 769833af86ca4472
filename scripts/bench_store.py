"""Benchmark the embedded SQLite store alone: write throughput, hybrid query latency, query-process memory.

    python scripts/bench_store.py [--n 126000] [--dims 384] [--corpus CORPUS_JSONL] [--dir DIR [--reuse]]
                                  [--vectors random|VECTORS.npy --query-vectors QUERIES.npy]
                                  [--langchain [--langchain-queries 50]]

Texts come from a BEIR ``corpus.jsonl`` (``_id``, ``title``, ``text``; cycled when shorter than ``--n``) or,
without ``--corpus``, from Zipf-distributed random words. Vectors are random unit float32 vectors (the worst
case for an approximate index) or real embeddings from a ``.npy`` file (n, dims), cycled with a small
Gaussian perturbation (sigma ``--perturb``) to reach ``--n``, with query vectors from another ``.npy`` (also
perturbed per query); the numbers exclude embedding. ``--reuse`` keeps a store already built in ``--dir``
(the same ``--n``) instead of writing it again. Measured:

- write: chunks/s of ``store.write`` with vectors, up to the end of the vector merges they started in the
  background (ensure_index and data generation not timed);
- query: p50/p95 of one hybrid query at k=10 with ``--candidates`` per side: BM25 + exact kNN + linear
  fusion (``esrag.retrieval.fusion.linear_fusion``), excluding the query embedding; in this process, after a warm-up
  query that loads the vector matrix, and again in a fresh process (there also the BM25 side alone, a
  second pass over the same queries: the terms' postings are cached);
- memory: peak RSS (VmHWM, else ``ru_maxrss``) of a fresh process that opens the store and runs the queries, over the
  raw vector bytes (n * dims * 4);
- approximate against exact, in the same run: a second fresh process with ``exact_knn`` answers the same
  queries; recall@10 of the dense side (approximate hits among the exact top 10) and both latencies;
- update: a 1% update (n/100 new chunks written, n/100 deleted), timed with the index maintained.

With ``--langchain`` (needs ``pip install -e '.[compare]'``), the baseline in the same run: LangChain's
``BM25Retriever`` (rank_bm25) over the same ``title + text``, a dense retriever over the same vectors (Chroma,
persisted under ``DIR/chroma``, query vector looked up by text) and ``EnsembleRetriever([bm25, dense],
weights=[0.5, 0.5])`` cut to k, each retriever returning ``--candidates`` (see ``bench_store_langchain.py``).
Build time (BM25Retriever + Chroma fill) is compared with esrag's write time. On the first
``--langchain-queries`` queries (rank_bm25 scores every document, so it is slow on large corpora) the esrag
hybrid query, ``BM25Retriever.invoke`` and ``EnsembleRetriever.invoke`` are timed interleaved, query by query,
so machine noise hits both sides alike; the ratios esrag/LangChain come from that pass.

Prints a table and one JSON line. Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_store_langchain import Baseline, check_installed

from esrag.config import Settings
from esrag.retrieval.fusion import linear_fusion
from esrag.stats import percentile
from esrag.stores.sqlite import SQLiteStore
from esrag.types import Chunk, EmbeddedChunk, IndexMeta, SearchRequest, sha256_hex

INDEX = "bench"


def texts(n: int, corpus: Path | None, rng: np.random.Generator) -> list[tuple[str, str]]:
    """``n`` (title, text) pairs from the corpus (cycled) or from random words."""
    if corpus is not None:
        rows = []
        with corpus.open(encoding="utf-8") as fh:
            for line in fh:
                d = json.loads(line)
                rows.append((str(d.get("title", "")), str(d.get("text", ""))))
                if len(rows) >= n:
                    break
        return list(itertools.islice(itertools.cycle(rows), n))
    vocab = [f"w{i}" + "".join(chr(97 + int(c)) for c in str(i)) for i in range(30_000)]
    cdf = np.cumsum(1.0 / np.arange(1, len(vocab) + 1))
    lengths = rng.integers(30, 150, size=n)
    words = np.searchsorted(cdf, rng.random(int(lengths.sum())) * cdf[-1])  # Zipf-distributed word ids
    out, at = [], 0
    for length in lengths:
        doc = [vocab[i] for i in words[at:at + length]]
        at += length
        out.append((" ".join(doc[:3]), " ".join(doc)))
    return out


def unit_vectors(n: int, dims: int, rng: np.random.Generator, source: np.ndarray | None = None,
                 perturb: float = 0.02) -> np.ndarray:
    """``n`` unit vectors: random, or the rows of ``source`` cycled, each with Gaussian noise of ``perturb``."""
    if source is None:
        v = rng.standard_normal((n, dims), dtype=np.float32)
    else:
        v = np.empty((n, source.shape[1]), dtype=np.float32)
        for at in range(0, n, len(source)):
            part = source[:min(len(source), n - at)]
            v[at:at + len(part)] = part + rng.standard_normal(part.shape, dtype=np.float32) * perturb
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def make_queries(pairs: list[tuple[str, str]], count: int, dims: int, seed: int,
                 source: np.ndarray | None = None) -> list[tuple[str, np.ndarray]]:
    """Query texts: 2-6 words taken from random documents; vectors: random unit vectors, or the rows of
    ``source`` (cycled, perturbed)."""
    rng = np.random.default_rng(seed)
    vectors = unit_vectors(count, dims, rng, source)
    out = []
    for i in range(count):
        words = pairs[int(rng.integers(len(pairs)))][1].split()
        start = int(rng.integers(max(1, len(words) - 6)))
        out.append((" ".join(words[start:start + int(rng.integers(2, 7))]) or "query", vectors[i]))
    return out


def run_queries(store: SQLiteStore, queries: list[tuple[str, np.ndarray]], k: int, candidates: int
                ) -> list[float]:
    """Milliseconds per hybrid query (store search + fusion)."""
    times = []
    for text, vector in queries:
        t0 = time.perf_counter()
        resp = store.search(SearchRequest(text=text, vector=vector, candidates=candidates))
        linear_fusion([(c.id, c.score) for c in resp.bm25], [(c.id, c.score) for c in resp.dense], 0.5)[:k]
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def peak_rss_bytes() -> int:
    """Peak RSS of this process: VmHWM (reset by exec, unlike ``ru_maxrss``, which a child started with
    fork+exec inherits from its parent), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # macOS reports bytes, Linux KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def child(args: argparse.Namespace) -> None:
    """The fresh query process: open, load (first query), run the queries, report timings, peak RSS and the
    dense side's top k of each query."""
    store = SQLiteStore(Settings(sqlite_dir=args.dir, index=INDEX, exact_knn=args.exact))
    queries = [(t, np.asarray(v, dtype=np.float32)) for t, v in json.loads(sys.stdin.read())]
    t0 = time.perf_counter()
    first = run_queries(store, queries[:1], args.k, args.candidates)
    load_s = time.perf_counter() - t0
    if args.first_only:
        print(json.dumps({"first_query_ms": first[0]}))
        store.close()
        return
    times = run_queries(store, queries, args.k, args.candidates)
    rss = peak_rss_bytes()
    bm25 = []
    for text, _ in queries:
        t1 = time.perf_counter()
        store.search(SearchRequest(text=text, vector=None, candidates=args.candidates))
        bm25.append((time.perf_counter() - t1) * 1e3)
    dense = [[h.id for h in store.search(SearchRequest(text=None, vector=v, candidates=args.k)).dense]
             for _, v in queries]
    print(json.dumps({"first_query_ms": first[0], "load_s": load_s, "p50_ms": percentile(times, 50),
                      "p95_ms": percentile(times, 95), "bm25_p50_ms": percentile(bm25, 50),
                      "bm25_p95_ms": percentile(bm25, 95), "peak_rss_bytes": rss, "dense": dense,
                      "vector_index": store.vector_index()}))
    store.close()


def fresh_process(args: argparse.Namespace, payload: str, exact: bool, first_only: bool = False) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", "--dir", args.dir, "--k", str(args.k),
                           "--candidates", str(args.candidates), *(["--exact"] if exact else []),
                           *(["--first-only"] if first_only else [])],
                          input=payload, capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def one_chunk(pairs: list[tuple[str, str]], i: int, vector: np.ndarray, prefix: str = "") -> EmbeddedChunk:
    """Chunk ``i`` of the benchmark (ids, documents of 4 chunks, metadata part = i % 10)."""
    title, text = pairs[i % len(pairs)]
    return EmbeddedChunk(Chunk(id=sha256_hex(prefix + str(i))[:40], doc_id=f"{prefix}doc{i // 4}",
                               source=f"{prefix}doc{i // 4}.txt", title=title, text=text, chunk_index=i % 4,
                               chunk_count=4, start=0, end=len(text), chunk_sha=sha256_hex(text),
                               doc_sha=sha256_hex(prefix + str(i // 4)), metadata={"part": str(i % 10)}), vector)


def make_chunks(pairs: list[tuple[str, str]], vectors: np.ndarray, start: int, stop: int) -> list[EmbeddedChunk]:
    return [one_chunk(pairs, i, vectors[i]) for i in range(start, stop)]


def one_percent_update(args: argparse.Namespace, pairs: list[tuple[str, str]], rng: np.random.Generator,
                       source: np.ndarray | None) -> float:
    """Seconds to write n/100 new chunks and delete n/100 old ones, index maintained (then undone, untimed,
    so that a reused store keeps its content)."""
    n = max(1, args.n // 100)
    store = SQLiteStore(Settings(sqlite_dir=args.dir, index=INDEX))
    vectors = unit_vectors(n, args.dims, rng, source, args.perturb)
    new = [one_chunk(pairs, i, vectors[i], prefix="upd") for i in range(n)]
    old_rows = list(range(0, args.n, 100))[:n]
    saved = store.get_embeddings([sha256_hex(str(i))[:40] for i in old_rows])
    t0 = time.perf_counter()
    store.write(new)
    store.delete_chunks(list(saved))
    store.refresh()  # and any merge they started
    took = time.perf_counter() - t0
    store.delete_chunks([c.chunk.id for c in new])
    store.write([one_chunk(pairs, i, saved[cid]) for i in old_rows if (cid := sha256_hex(str(i))[:40]) in saved])
    store.close()
    return took


def langchain_baseline(store: SQLiteStore, pairs: list[tuple[str, str]], vectors: np.ndarray,
                       queries: list[tuple[str, np.ndarray]], write_s: float, args: argparse.Namespace
                       ) -> dict[str, Any]:
    """Build the LangChain retrievers, then time esrag / BM25Retriever / EnsembleRetriever query by query."""
    subset = queries[:args.langchain_queries]
    print(f"building the LangChain baseline over {len(pairs)} texts ...", file=sys.stderr, flush=True)
    lc = Baseline(pairs, vectors, subset, Path(args.dir) / "chroma", args.k, args.candidates)
    print(f"timing {len(subset)} queries on both sides ...", file=sys.stderr, flush=True)
    esrag_ms, bm25_ms, ensemble_ms = [], [], []
    for query in subset:
        esrag_ms.extend(run_queries(store, [query], args.k, args.candidates))
        bm25_ms.append(lc.bm25_ms(query[0]))
        ensemble_ms.append(lc.ensemble_ms(query[0]))
    p = {name: (percentile(v, 50), percentile(v, 95))
         for name, v in (("esrag", esrag_ms), ("bm25", bm25_ms), ("ensemble", ensemble_ms))}
    return {
        "queries": len(subset), "duplicate_query_texts": lc.duplicate_query_texts,
        "bm25_build_s": lc.bm25_build_s, "chroma_build_s": lc.chroma_build_s, "build_s": lc.build_s,
        "chroma_bytes": lc.chroma_bytes,
        **{f"{name}_{q}_ms": v[i] for name, v in p.items() for i, q in enumerate(("p50", "p95"))},
        "ratios_esrag_over_langchain": {
            "hybrid_p50": p["esrag"][0] / p["ensemble"][0], "hybrid_p95": p["esrag"][1] / p["ensemble"][1],
            "build": write_s / lc.build_s,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=126_000)
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--corpus", type=Path, default=None, help="BEIR corpus.jsonl for the texts")
    ap.add_argument("--dir", default=None, help="store directory (default: a temporary one, removed after)")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--langchain", action="store_true",
                    help="also time LangChain's BM25Retriever + EnsembleRetriever as the baseline")
    ap.add_argument("--langchain-queries", type=int, default=50,
                    help="queries timed on both sides for the LangChain ratios (default 50)")
    ap.add_argument("--vectors", default="random", help="random, or an .npy of real embeddings (n, dims)")
    ap.add_argument("--query-vectors", type=Path, default=None, help=".npy of real query embeddings")
    ap.add_argument("--perturb", type=float, default=0.02, help="noise added to each cycled real vector")
    ap.add_argument("--reuse", action="store_true", help="keep a store of --n chunks already in --dir")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    if args.langchain and (missing := check_installed()):
        sys.exit(missing)
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="esrag-bench-")
        args.dir = tmp.name
    rng = np.random.default_rng(args.seed)
    source = None if args.vectors == "random" else np.load(args.vectors).astype(np.float32)
    if source is not None:
        args.dims = source.shape[1]
    qsource = np.load(args.query_vectors).astype(np.float32) if args.query_vectors else source
    t0 = time.perf_counter()
    pairs = texts(args.n, args.corpus, rng)
    store = SQLiteStore(Settings(sqlite_dir=args.dir, index=INDEX))
    reused = args.reuse and store.exists() and store.count().chunks == args.n
    lc_vectors = None
    write_s = gen_s = float("nan")
    if not reused:
        vectors = unit_vectors(args.n, args.dims, rng, source, args.perturb)
        lc_vectors = vectors if args.langchain else None
        store.drop()
        store.ensure_index(IndexMeta(model=f"bench-{'random' if source is None else 'real'}", dims=args.dims))
        gen_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for at in range(0, args.n, 100_000):  # bounded memory: chunk objects are built per 100k
            result = store.write(make_chunks(pairs, vectors, at, min(args.n, at + 100_000)))
            assert not result.errors, result.errors[:3]
        store.refresh()  # waits for the vector merge the last writes started in the background: timed too
        write_s = time.perf_counter() - t0
        del vectors

    queries = make_queries(pairs, args.queries, args.dims, args.seed + 1, qsource)
    payload = json.dumps([[t, v.tolist()] for t, v in queries])
    store.close()
    with sqlite3.connect(Path(args.dir) / f"{INDEX}.db") as conn:
        saved_before = int(conn.execute("SELECT count(*) FROM bm25_postings").fetchone()[0])
    # the first query of a fresh process before any other query: every common term read from FTS5 (unless
    # a reused store has them saved already: saved_terms_before)
    cold = fresh_process(args, payload, exact=False, first_only=True)
    t0 = time.perf_counter()
    run_queries(store, queries[:1], args.k, args.candidates)
    load_s = time.perf_counter() - t0
    times = run_queries(store, queries, args.k, args.candidates)
    filtered = []
    for text, vector in queries[:50]:
        t1 = time.perf_counter()
        store.search(SearchRequest(text=text, vector=vector, candidates=args.candidates,
                                   filters={"part": ("3",)}))
        filtered.append((time.perf_counter() - t1) * 1e3)
    lc = None
    if lc_vectors is not None:
        lc = langchain_baseline(store, pairs, lc_vectors, queries, write_s, args)
        del lc_vectors
    store.close()

    fresh = fresh_process(args, payload, exact=False)
    exact = fresh_process(args, payload, exact=True)
    recall = float(np.mean([len(set(a) & set(e)) / max(1, len(e))
                            for a, e in zip(fresh.pop("dense"), exact.pop("dense"), strict=True)]))
    update_s = one_percent_update(args, pairs, rng, source)
    raw = args.n * args.dims * 4
    db_bytes = sum(p.stat().st_size for p in Path(args.dir).glob(f"{INDEX}.db*"))
    out = {
        "n": args.n, "dims": args.dims, "corpus": str(args.corpus) if args.corpus else "random-words",
        "write_chunks_per_s": args.n / write_s, "write_s": write_s, "generate_s": gen_s,
        "db_bytes": db_bytes, "raw_vector_bytes": raw, "matrix_load_s": load_s,
        "query_p50_ms": percentile(times, 50), "query_p95_ms": percentile(times, 95),
        "filtered_query_p50_ms": percentile(filtered, 50),
        "cold_first_query_ms": cold["first_query_ms"], "saved_terms_before": saved_before,
        "fresh_process": fresh, "peak_rss_over_raw": fresh["peak_rss_bytes"] / raw,
        "exact_fresh_process": exact, "dense_recall_at_k": recall, "update_1pct_s": update_s,
        "vectors": args.vectors, "reused_store": reused,
        "cpus": os.cpu_count(), "queries": len(queries), "candidates": args.candidates, "k": args.k,
    }
    if lc is not None:
        out["langchain"] = lc
    mb = 1024 * 1024
    print(f"{'corpus':<32}{out['corpus']}")
    print(f"{'chunks x dims':<32}{args.n} x {args.dims}  "
          f"(raw vectors {raw / mb:.0f} MiB, db {db_bytes / mb:.0f} MiB)")
    print(f"{'write':<32}{out['write_chunks_per_s']:.0f} chunks/s ({write_s:.1f} s)")
    print(f"{'first query (loads matrix)':<32}{load_s * 1e3:.0f} ms")
    print(f"{'cold first query':<32}{cold['first_query_ms']:.0f} ms (terms saved before: {saved_before})")
    print(f"{'hybrid query p50 / p95':<32}{out['query_p50_ms']:.1f} / {out['query_p95_ms']:.1f} ms")
    print(f"{'filtered hybrid query p50':<32}{out['filtered_query_p50_ms']:.1f} ms")
    print(f"{'fresh process p50 / p95':<32}{fresh['p50_ms']:.1f} / {fresh['p95_ms']:.1f} ms "
          f"(first query {fresh['first_query_ms']:.0f} ms)")
    print(f"{'fresh process BM25 alone p50/95':<32}{fresh['bm25_p50_ms']:.1f} / {fresh['bm25_p95_ms']:.1f} ms "
          "(postings cached)")
    print(f"{'fresh process peak RSS':<32}{fresh['peak_rss_bytes'] / mb:.0f} MiB = "
          f"{out['peak_rss_over_raw']:.2f} x raw vectors")
    print(f"{'vector index':<32}{fresh['vector_index']}")
    print(f"{'exact: fresh p50 / p95':<32}{exact['p50_ms']:.1f} / {exact['p95_ms']:.1f} ms "
          f"(first query {exact['first_query_ms']:.0f} ms, peak RSS {exact['peak_rss_bytes'] / mb:.0f} MiB)")
    print(f"{'dense recall@k vs exact':<32}{recall:.4f}")
    print(f"{'1% update (add + delete)':<32}{update_s:.1f} s")
    if lc is not None:
        print(f"-- LangChain baseline, {lc['queries']} queries timed interleaved with esrag --")
        print(f"{'LangChain build':<32}{lc['build_s']:.1f} s (BM25Retriever {lc['bm25_build_s']:.1f} s, "
              f"Chroma {lc['chroma_build_s']:.1f} s)")
        print(f"{'BM25Retriever p50 / p95':<32}{lc['bm25_p50_ms']:.1f} / {lc['bm25_p95_ms']:.1f} ms")
        print(f"{'EnsembleRetriever p50 / p95':<32}{lc['ensemble_p50_ms']:.1f} / {lc['ensemble_p95_ms']:.1f} ms")
        print(f"{'esrag hybrid p50 / p95':<32}{lc['esrag_p50_ms']:.1f} / {lc['esrag_p95_ms']:.1f} ms "
              f"(same queries)")
        r = lc["ratios_esrag_over_langchain"]
        print(f"{'esrag / Ensemble p50 / p95':<32}{r['hybrid_p50']:.3f} / {r['hybrid_p95']:.3f}")
        print(f"{'esrag write / LangChain build':<32}{r['build']:.3f} ({write_s:.1f} s / {lc['build_s']:.1f} s)")
    print(json.dumps(out))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
