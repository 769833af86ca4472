"""Compare esrag with the usual LangChain hybrid stack on one BEIR-layout dataset, in one run.

Usage::

    HF_HUB_OFFLINE=1 python scripts/compare_langchain.py /tmp/python-faq \\
        [--alphas 0.3,0.5,0.7] [--cache-dir ~/.cache/esrag-bench] [--es-url URL] [--json OUT.json]

Needs ``pip install 'esrag[eval,compare]'``.

What is compared (same dataset, same model, same documents, same candidate depth):

* Documents are **not chunked on either side**. Each document is ``title + "\\n\\n" + text`` (see
  ``esrag.quality.evaluation.document_text``); the model (the packaged all-MiniLM-L6-v2, 256-token window) embeds it
  truncated, on both sides. esrag's chunker is bypassed: one chunk per document (chunk_index 0, the whole
  text) is written through the store API (``Store.ensure_index`` + ``Store.write``), with the title in the
  chunk's ``title`` field and the text in ``text`` (esrag's BM25 indexes both fields).
* The corpus is embedded **once**, with esrag's SentenceTransformerEmbedder, and the vectors are shared:
  esrag writes them to its store; LangChain's Chroma receives them through ``CachedEmbeddings``, a LangChain
  ``Embeddings`` that looks the text up in the precomputed vectors (and falls back to
  ``HuggingFaceEmbeddings`` on the same local model path for anything else). The script checks that
  ``HuggingFaceEmbeddings`` gives the same vectors on a sample. Vectors are cached in ``--cache-dir``
  (``.npy``, keyed by model and corpus hash), so reruns skip the embedding.
* LangChain: ``BM25Retriever`` (rank_bm25, LangChain's default whitespace tokenisation), ``Chroma`` (cosine
  space) as a dense retriever, and ``EnsembleRetriever`` (weighted RRF, c=60) with weights
  ``(1 - alpha, alpha)``; each retriever returns ``--k`` documents.
* esrag: bm25, dense, hybrid (linear minmax fusion at alpha) and rrf (weighted at alpha, k=60) from
  ``--k`` candidates per side, in the embedded SQLite store (and Elasticsearch with ``--es-url``).

Timings, all on this machine, one query at a time, after one warm-up query:

* index build time excludes the (shared) corpus embedding, which is reported separately. esrag: create
  the index and write the chunks with their vectors. LangChain: ``BM25Retriever.from_documents`` +
  ``Chroma.from_documents`` (an in-memory Chroma client).
* query latency **excluding query embedding**: esrag, the store round trip (both sides for hybrid/rrf) +
  client-side fusion with a precomputed query vector; LangChain, ``retriever.invoke(query)`` with the query
  vector looked up (``CachedEmbeddings``), so it includes BM25 scoring, the Chroma query and the fusion.
* **including query embedding**: the same with the query embedded by the model on the call (esrag:
  ``HybridSearcher.search``; LangChain: ``invoke`` with ``HuggingFaceEmbeddings.embed_query``), on the first
  ``--live-queries`` queries (default 50) to bound the run time on a CPU. Both sides embed queries with
  ``--threads`` torch threads (default 1: on a small, shared CPU, more threads mostly fight each other).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")  # chromadb

from esrag import __version__  # noqa: E402
from esrag.config import DEFAULT_MODEL, Settings  # noqa: E402
from esrag.embedders.base import Embedder  # noqa: E402
from esrag.quality.evaluation import (  # noqa: E402
    METRICS,
    BeirDataset,
    Ranking,
    RunDict,
    document_text,
    evaluate_run,
    load_beir,
    method_ranking,
)
from esrag.stats import percentile  # noqa: E402
from esrag.types import (  # noqa: E402
    Chunk,
    EmbeddedChunk,
    IndexMeta,
    SearchRequest,
    SearchResponse,
    sha256_hex,
)

RRF_C = 60  # EnsembleRetriever's constant, and esrag's default rrf_k


# -- embedding cache ------------------------------------------------------------------------------------


def cache_key(model: str, max_tokens: int, texts: Sequence[str]) -> str:
    """Hash of everything that determines the vectors: model name, window and every text, in order."""
    return sha256_hex(model, str(max_tokens), sha256_hex(*texts))[:20]


def embed_cached(
    embedder: Embedder, texts: Sequence[str], cache_dir: Path, label: str, query: bool = False
) -> tuple[np.ndarray, float, bool]:
    """Vectors of ``texts`` (float32, L2-normalised), from ``cache_dir`` when present.

    Returns (vectors, seconds the embedding took when it was computed, whether it came from the cache).
    """
    prefixed = [(embedder.query_prefix if query else embedder.passage_prefix) + t for t in texts]
    key = cache_key(embedder.model_name, embedder.max_tokens, prefixed)
    path = cache_dir / f"{label}-{key}.npy"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        vectors = np.load(path)
        if vectors.shape == (len(texts), embedder.dims):
            return vectors, float(json.loads(meta_path.read_text())["seconds"]), True
    t0 = time.perf_counter()
    vectors = np.zeros((len(texts), embedder.dims), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(prefixed[i]), reverse=True)  # pad little
    step = 256
    for lo in range(0, len(order), step):
        idx = order[lo:lo + step]
        vectors[idx] = embedder.embed_batch([prefixed[i] for i in idx])
        print(f"  embedded {min(lo + step, len(order))}/{len(order)} {label}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - t0
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    meta_path.write_text(json.dumps({"seconds": seconds, "model": embedder.model_name, "n": len(texts)}))
    return vectors, seconds, False


# -- shared helpers -------------------------------------------------------------------------------------


@dataclass
class Method:
    """One retrieval method's results: a run for the metrics and per-query latencies (ms)."""

    side: str
    name: str
    run: RunDict = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    latency_with_embedding_ms: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            return round(percentile(values, q), 3) if values else None

        return {
            "side": self.side, "method": self.name, **{m: round(v, 4) for m, v in self.metrics.items()},
            "p50_ms": pct(self.latency_ms, 50), "p95_ms": pct(self.latency_ms, 95),
            "p50_ms_with_embedding": pct(self.latency_with_embedding_ms, 50),
            "p95_ms_with_embedding": pct(self.latency_with_embedding_ms, 95),
        }


def timed_queries(
    queries: dict[str, str], call: Callable[[str, str], Ranking | None], limit: int | None = None
) -> tuple[RunDict, list[float]]:
    """Call ``call(qid, text)`` for every query (the first ``limit`` only, if given) after one untimed
    warm-up; returns the run (the calls that returned a ranking) and the per-query wall times in ms."""
    qids = list(queries)[:limit] if limit else list(queries)
    if qids:
        call(qids[0], queries[qids[0]])
    run: RunDict = {}
    times: list[float] = []
    for qid in qids:
        t0 = time.perf_counter()
        ranking = call(qid, queries[qid])
        times.append((time.perf_counter() - t0) * 1e3)
        if ranking is not None:
            run[qid] = ranking
    return run, times


def ranked(ids: Sequence[str]) -> Ranking:
    """A ranking from an ordered id list (scores are rank-derived: LangChain retrievers return none)."""
    return [(d, float(len(ids) - i)) for i, d in enumerate(ids)]


# -- LangChain side -------------------------------------------------------------------------------------


def langchain_side(
    dataset: BeirDataset,
    texts: list[str],
    doc_vectors: np.ndarray,
    query_vectors: np.ndarray,
    model_path: str,
    alphas: Sequence[float],
    k: int,
    live_limit: int,
    timed_limit: int | None = None,
) -> tuple[list[Method], dict[str, Any]]:
    """Build BM25Retriever + Chroma + EnsembleRetrievers, run every query; returns methods and build info."""
    import chromadb
    from langchain_chroma import Chroma
    from langchain_classic.retrievers import EnsembleRetriever
    from langchain_community.retrievers import BM25Retriever
    from langchain_core.documents import Document as LCDocument
    from langchain_core.embeddings import Embeddings
    from langchain_huggingface import HuggingFaceEmbeddings

    hf = HuggingFaceEmbeddings(model_name=model_path, model_kwargs={"device": "cpu"},
                               encode_kwargs={"normalize_embeddings": True})
    # The shared vectors must be what LangChain's own embedder would compute.
    sample = [texts[i] for i in range(0, len(texts), max(1, len(texts) // 4))][:4]
    check = np.asarray(hf.embed_documents(sample), dtype=np.float32)
    ref = doc_vectors[[texts.index(t) for t in sample]]
    max_diff = float(np.abs(check - ref).max())

    doc_lookup = {t: doc_vectors[i] for i, t in enumerate(texts)}
    qids = list(dataset.queries)
    query_lookup = {dataset.queries[q]: query_vectors[i] for i, q in enumerate(qids)}

    class CachedEmbeddings(Embeddings):
        """Precomputed vectors by text; anything unknown (or every query, when live) goes to the model."""

        def __init__(self, live_queries: bool) -> None:
            self.live_queries = live_queries

        def embed_documents(self, docs: list[str]) -> list[list[float]]:
            missing = [t for t in docs if t not in doc_lookup]
            extra = dict(zip(missing, hf.embed_documents(missing), strict=True)) if missing else {}
            return [list(map(float, doc_lookup[t])) if t in doc_lookup else extra[t] for t in docs]

        def embed_query(self, text: str) -> list[float]:
            if not self.live_queries and text in query_lookup:
                return list(map(float, query_lookup[text]))
            return hf.embed_query(text)

    cached = CachedEmbeddings(live_queries=False)
    docs = [LCDocument(page_content=t, metadata={"doc_id": d.doc_id})
            for t, d in zip(texts, dataset.documents, strict=True)]
    t0 = time.perf_counter()
    bm25 = BM25Retriever.from_documents(docs, k=k)
    t1 = time.perf_counter()
    client = chromadb.EphemeralClient()
    chroma = Chroma.from_documents(docs, embedding=cached, ids=[d.doc_id for d in dataset.documents],
                                   collection_name="compare", client=client,
                                   collection_metadata={"hnsw:space": "cosine"})
    t2 = time.perf_counter()
    build = {"bm25_s": t1 - t0, "chroma_s": t2 - t1, "total_s": t2 - t0,
             "hf_vs_shared_max_abs_diff": max_diff}

    def ids_of(out: list[Any]) -> Ranking:
        return ranked([d.metadata["doc_id"] for d in out])

    dense = chroma.as_retriever(search_kwargs={"k": k})
    retrievers: list[tuple[str, Any]] = [("BM25Retriever", bm25), ("Chroma", dense)]
    for a in alphas:
        retrievers.append((f"Ensemble a={a:g}", EnsembleRetriever(
            retrievers=[bm25, dense], weights=[1.0 - a, a], c=RRF_C, id_key="doc_id")))
    methods = []
    for name, retriever in retrievers:
        m = Method("langchain", name)

        def call(_qid: str, text: str, r: Any = retriever) -> Ranking:
            return ids_of(r.invoke(text))

        m.run, times = timed_queries(dataset.queries, call)  # quality: every query
        m.latency_ms = times[:timed_limit] if timed_limit else times
        if name != "BM25Retriever":  # the same calls with the query embedded on the call
            cached.live_queries = True
            _, m.latency_with_embedding_ms = timed_queries(dataset.queries, call, live_limit)
            cached.live_queries = False
        else:
            m.latency_with_embedding_ms = list(m.latency_ms)
        methods.append(m)
        print(f"  langchain {name}: done", file=sys.stderr, flush=True)
    return methods, build


# -- esrag side -----------------------------------------------------------------------------------------


def esrag_side(
    dataset: BeirDataset,
    settings: Settings,
    embedder: Embedder,
    doc_vectors: np.ndarray,
    query_vectors: np.ndarray,
    alphas: Sequence[float],
    k: int,
    live_limit: int,
    timed_limit: int | None = None,
) -> tuple[list[Method], dict[str, Any]]:
    """Write one chunk per document into a fresh index, run every query; returns methods and build info."""
    from esrag import plugins
    from esrag.retrieval.search import HybridSearcher, fuse

    store = plugins.load(plugins.STORES, settings.store_name)(settings)
    try:
        store.drop()
        meta = IndexMeta(model=embedder.model_name, dims=embedder.dims, chunk_size=embedder.max_tokens,
                         chunk_overlap=0, esrag_version=__version__)
        items = []
        for d, vec in zip(dataset.documents, doc_vectors, strict=True):
            doc_sha = d.sha("compare:no-chunking")
            chunk_sha = sha256_hex(d.title, d.text)
            items.append(EmbeddedChunk(Chunk(
                id=Chunk.make_id(d.doc_id, doc_sha, 0, chunk_sha), doc_id=d.doc_id, source=d.source,
                title=d.title, text=d.text, chunk_index=0, chunk_count=1, start=0, end=len(d.text),
                chunk_sha=chunk_sha, doc_sha=doc_sha), vec))
        t0 = time.perf_counter()
        store.ensure_index(meta)
        result = store.write(items)
        build_s = time.perf_counter() - t0
        if result.errors:
            raise SystemExit(f"{len(result.errors)} chunks failed to write: {result.errors[0].reason}")
        qids = list(dataset.queries)
        qvec = {q: query_vectors[i] for i, q in enumerate(qids)}
        num = max(2 * k, k + 10)

        def request(qid: str, text: str, bm25: bool, dense: bool) -> SearchRequest:
            return SearchRequest(text=text if bm25 else None, vector=qvec[qid] if dense else None,
                                 candidates=k, num_candidates=num)

        # Quality: one round trip per query gives every method (what `esrag eval` does).
        responses: dict[str, SearchResponse] = {q: store.search(request(q, t, True, True))
                                                for q, t in dataset.queries.items()}
        specs: list[tuple[str, str, float, bool, bool]] = [("bm25", "bm25", 0.0, True, False),
                                                           ("dense", "dense", 1.0, False, True)]
        for a in alphas:
            specs.append((f"hybrid a={a:g}", "linear", a, True, True))
        for a in alphas:
            specs.append((f"rrf a={a:g}", "rrf", a, True, True))
        searcher = HybridSearcher(store, embedder, settings)
        methods = []
        for name, fusion, alpha, bm25, dense in specs:
            m = Method(f"esrag-{settings.store_name}", name)
            mode = "hybrid" if bm25 and dense else ("bm25" if bm25 else "dense")
            for q, resp in responses.items():
                if fusion == "rrf":
                    hits = fuse(resp.bm25, resp.dense, "hybrid", "rrf", alpha, "minmax", RRF_C)
                    m.run[q] = [(h.doc_id, h.score) for h in hits][:k]
                else:
                    m.run[q] = method_ranking(resp, {"bm25": "bm25", "dense": "dense"}.get(mode, "hybrid"),
                                              alpha, "minmax", RRF_C, k)

            def excl(qid: str, text: str, fusion: str = fusion, alpha: float = alpha, bm25: bool = bm25,
                     dense: bool = dense, mode: str = mode) -> None:
                resp = store.search(request(qid, text, bm25, dense))
                fuse(resp.bm25, resp.dense, mode, fusion, alpha, "minmax", RRF_C)[:10]

            def incl(_qid: str, text: str, fusion: str = fusion, alpha: float = alpha,
                     mode: str = mode) -> None:
                searcher.search(text, k=10, mode=mode, alpha=alpha, fusion=fusion, normalization="minmax",
                                candidates=k, rrf_k=RRF_C)

            _, m.latency_ms = timed_queries(dataset.queries, excl, timed_limit)
            if mode == "bm25":  # nothing to embed
                m.latency_with_embedding_ms = list(m.latency_ms)
            else:
                _, m.latency_with_embedding_ms = timed_queries(dataset.queries, incl, live_limit)
            methods.append(m)
        print(f"  esrag {settings.store_name}: done", file=sys.stderr, flush=True)
        return methods, {"total_s": build_s, "chunks": len(items)}
    finally:
        store.close()


# -- report ---------------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def comparisons(by_name: dict[tuple[str, str], dict[str, Any]], side: str, alphas: Sequence[float]
                ) -> list[dict[str, Any]]:
    """esrag/LangChain ratios of quality and latency for matching methods."""
    pairs = [("bm25", "BM25Retriever"), ("dense", "Chroma")]
    for a in alphas:
        pairs += [(f"hybrid a={a:g}", f"Ensemble a={a:g}"), (f"rrf a={a:g}", f"Ensemble a={a:g}")]
    out = []
    for mine, theirs in pairs:
        e, lc = by_name[(side, mine)], by_name[("langchain", theirs)]
        out.append({"esrag": mine, "langchain": theirs, **{
            f"{key}_ratio": ratio(e[key], lc[key])
            for key in (*METRICS, "p50_ms", "p95_ms", "p50_ms_with_embedding", "p95_ms_with_embedding")}})
    return out


def print_report(report: dict[str, Any]) -> None:
    cols = ("ndcg@10", "mrr@10", "recall@100", "p50_ms", "p95_ms", "p50_ms_with_embedding",
            "p95_ms_with_embedding")
    heads = ("nDCG@10", "MRR@10", "R@100", "p50", "p95", "p50+emb", "p95+emb")
    print(f"\n{report['dataset']}: {report['queries']} queries, {report['documents']} documents, "
          f"k={report['k']}")
    print(f"corpus embedding (once, shared): {report['embedding']['corpus_s']:.1f}s"
          f"{' (from cache; time of the original run)' if report['embedding']['cached'] else ''}")
    for side, b in report["build"].items():
        print(f"index build {side}: {b['total_s']:.2f}s (excluding embedding)")
    print(f"\n{'side':<21}{'method':<16}" + "".join(f"{h:>9}" for h in heads) + "   (latency in ms)")
    for r in report["methods"]:
        cells = "".join(f"{r[c]:>9.3f}" if r[c] is not None else f"{'-':>9}" for c in cols)
        print(f"{r['side']:<21}{r['method']:<16}{cells}")
    for side, rows in report["ratios"].items():
        print(f"\nratios {side} / langchain")
        print(f"{'esrag':<16}{'langchain':<16}" + "".join(f"{h:>9}" for h in heads))
        for r in rows:
            cells = "".join(f"{r[c + '_ratio']:>9.3f}" if r[c + "_ratio"] is not None else f"{'-':>9}"
                            for c in cols)
            print(f"{r['esrag']:<16}{r['langchain']:<16}{cells}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="BEIR-layout dataset directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--alphas", default="0.3,0.5,0.7", help="dense weights to compare (comma-separated)")
    parser.add_argument("--k", type=int, default=100, help="documents per retriever / candidates per side")
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/esrag-bench").expanduser())
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the esrag SQLite index is written [default: a temporary directory]")
    parser.add_argument("--es-url", default=None, help="also run esrag on this Elasticsearch")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="write the report here")
    parser.add_argument("--live-queries", type=int, default=50,
                        help="queries timed with the query embedded on the call (the first N) [default: 50]")
    parser.add_argument("--latency-queries", type=int, default=None,
                        help="queries timed without query embedding (the first N) [default: all]")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for embedding queries (both sides) [default: 1]")
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache and stop")
    args = parser.parse_args(argv)
    alphas = [float(a) for a in args.alphas.split(",") if a.strip()]

    from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder, resolve_model_path
    from esrag.quality.evaluation import eval_index_name

    dataset = load_beir(args.dataset, args.split)
    texts = [document_text(d) for d in dataset.documents]
    if len(set(texts)) != len(texts):
        print("note: some documents have identical text", file=sys.stderr)
    embedder = SentenceTransformerEmbedder(DEFAULT_MODEL, device="cpu", batch_size=32)
    model_path = resolve_model_path(DEFAULT_MODEL)
    doc_vectors, corpus_s, cached = embed_cached(embedder, texts, args.cache_dir, f"{dataset.name}-docs")
    query_vectors, _, _ = embed_cached(embedder, list(dataset.queries.values()), args.cache_dir,
                                       f"{dataset.name}-queries", query=True)
    if args.embed_only:
        print(f"embeddings cached in {args.cache_dir} ({corpus_s:.1f}s)")
        return 0
    import torch

    torch.set_num_threads(args.threads)

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="esrag-compare-"))
    index = eval_index_name(dataset.name, DEFAULT_MODEL).replace("eval-", "compare-", 1)
    sides = [Settings(store="sqlite", sqlite_dir=str(work), index=index, k=10)]
    if args.es_url:
        sides.append(Settings(store="elasticsearch", es_url=args.es_url, index=index, k=10,
                              index_options="hnsw"))
    methods: list[Method] = []
    build: dict[str, Any] = {}
    try:
        for settings in sides:
            side_methods, build[f"esrag-{settings.store_name}"] = esrag_side(
                dataset, settings, embedder, doc_vectors, query_vectors, alphas, args.k, args.live_queries,
                args.latency_queries)
            methods += side_methods
        lc_methods, build["langchain"] = langchain_side(dataset, texts, doc_vectors, query_vectors,
                                                        model_path, alphas, args.k, args.live_queries,
                                                        args.latency_queries)
        methods += lc_methods
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    for m in methods:
        m.metrics = evaluate_run(dataset.qrels, m.run, METRICS)
    rows = [m.summary() for m in methods]
    by_name = {(r["side"], r["method"]): r for r in rows}
    report = {
        "dataset": dataset.name, "queries": len(dataset.queries), "documents": len(dataset.documents),
        "k": args.k, "alphas": alphas, "model": DEFAULT_MODEL, "live_queries": args.live_queries,
        "torch_threads": args.threads, "latency_queries": args.latency_queries,
        "embedding": {"corpus_s": corpus_s, "cached": cached, "docs_per_s": len(texts) / corpus_s},
        "build": build, "methods": rows,
        "ratios": {side: comparisons(by_name, side, alphas)
                   for side in (f"esrag-{s.store_name}" for s in sides)},
    }
    print_report(report)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
