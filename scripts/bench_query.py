"""Client-side cost of a hybrid query against Elasticsearch, and HTTP requests per query, through
``Engine.search`` (the path ``esrag search`` and ``POST /v1/search`` take).

Client side = the engine's own work + request building + JSON encoding + response decoding + parsing +
fusion: the wall time of ``Engine.search`` minus the time spent inside the HTTP node (network and server)
and minus the query embedding (the search's own ``embed_ms``; the packaged MiniLM, on the CPU). Requests
per query are counted at the HTTP node, after a warm-up (the engine's first search also checks the index
and its model once). Documents: the python-faq corpus, one chunk per document (text cut to 1,500
characters, a typical chunk), random unit vectors, ``hnsw``; the engine's default fusion.

    python scripts/bench_query.py                       # starts noida-db itself
    python scripts/bench_query.py --es-url http://localhost:9200
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

# as esrag serve does: torch's OpenMP workers would otherwise spin after each query's embedding, on the
# cores the client-side work measured here runs on
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
from _bench_common import DEFAULT_DATA, dataset, elasticsearch_url, percentile, read_jsonl

from esrag.config import Settings
from esrag.engine import Engine
from esrag.types import Chunk, Document, EmbeddedChunk, IndexMeta, sha256_hex


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR dataset dir (corpus.jsonl, queries.jsonl)")
    ap.add_argument("--es-url", help="Elasticsearch URL (default: start noida-db)")
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="passes over the queries")
    args = ap.parse_args()
    args.data = dataset(args.data)
    rng = np.random.default_rng(0)
    dims = 384
    corpus = read_jsonl(args.data / "corpus.jsonl")
    queries = [q["text"] for q in read_jsonl(args.data / "queries.jsonl")]
    with elasticsearch_url(args.es_url) as url:
        settings = Settings(store="elasticsearch", es_url=url, index="bench-query", index_options="hnsw",
                            device="cpu")
        engine = Engine(settings)
        store = engine.store
        store.drop()
        store.ensure_index(IndexMeta(model=settings.model, dims=dims))
        vecs = rng.standard_normal((len(corpus), dims)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        chunks = []
        for row, vec in zip(corpus, vecs, strict=True):
            doc = Document(doc_id=row["_id"], source=row["_id"], title=row.get("title", ""), text=row["text"][:1500])
            sha = doc.sha()
            c_sha = sha256_hex(doc.text)
            chunks.append(EmbeddedChunk(Chunk(Chunk.make_id(doc.doc_id, sha, 0, c_sha), doc.doc_id, doc.source,
                                              doc.title, doc.text, 0, 1, 0, len(doc.text), c_sha, sha), vec))
        t = time.perf_counter()
        result = store.write(chunks)
        store.refresh()
        print(f"indexed {result.written} chunks in {time.perf_counter() - t:.1f} s ({len(result.errors)} errors)")

        # time spent inside the HTTP node = network + server; everything else is client side
        node = next(iter(store.client.transport.node_pool.all()))
        original = node.perform_request
        spent = {"s": 0.0, "n": 0}

        def timed(*a, **kw):  # type: ignore[no-untyped-def]
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                spent["s"] += time.perf_counter() - t0
                spent["n"] += 1

        node.perform_request = timed  # type: ignore[method-assign]
        for text in queries[:20]:  # warm-up: the model loads, the engine checks the index once
            engine.search(text, k=args.k, candidates=args.candidates)
        client_ms, total_ms, embed_ms, requests = [], [], [], []
        for _ in range(args.repeat):
            for text in queries:
                spent["s"], spent["n"] = 0.0, 0
                t0 = time.perf_counter()
                result = engine.search(text, k=args.k, candidates=args.candidates)
                total = time.perf_counter() - t0
                assert result.hits, text
                embed = result.timings_ms["embed_ms"] / 1e3
                total_ms.append(total * 1e3)
                embed_ms.append(embed * 1e3)
                client_ms.append((total - spent["s"] - embed) * 1e3)
                requests.append(spent["n"])
        store.drop()
        engine.close()
    out = {
        "queries": len(client_ms),
        "candidates_per_side": args.candidates,
        "client_p50_ms": round(percentile(client_ms, 50), 3),
        "client_p95_ms": round(percentile(client_ms, 95), 3),
        "embed_p50_ms": round(percentile(embed_ms, 50), 3),
        "total_p50_ms": round(percentile(total_ms, 50), 3),
        "total_p95_ms": round(percentile(total_ms, 95), 3),
        "client_share_p50": round(percentile(client_ms, 50) / percentile(total_ms, 50), 3),
        "http_requests_per_query": sorted(set(requests)),
    }
    print(f"client side p50 {out['client_p50_ms']} ms, p95 {out['client_p95_ms']} ms "
          f"(target p50 <= 2 ms); end to end p50 {out['total_p50_ms']} ms (embedding {out['embed_p50_ms']} ms); "
          f"HTTP requests per query: {out['http_requests_per_query']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
