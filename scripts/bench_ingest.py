"""End-to-end ingest throughput against raw embedder throughput, on the same chunks, in the same run.

    python scripts/bench_ingest.py                      # python-faq, first 300 documents, SQLite store
    python scripts/bench_ingest.py --limit 0 --store elasticsearch --es-url http://localhost:9200

1. Load the documents and chunk them exactly as ``esrag ingest`` does.
2. Baseline: ``SentenceTransformer.encode`` on those chunk texts (same batch size, normalised), chunks/s.
3. esrag: ``Ingestor.ingest_documents`` into a fresh index (load+chunk, embed, write, all overlapped), chunks/s.
4. Baseline again; the ratio uses the mean of both baseline runs, so drift on a noisy machine shows.

Target: ingest/raw >= 0.85 (everything but embedding must hide behind it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _bench_common import DEFAULT_DATA, elasticsearch_url, read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from esrag import plugins  # noqa: E402
from esrag.chunking import chunk_document  # noqa: E402
from esrag.config import Settings  # noqa: E402
from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder  # noqa: E402
from esrag.ingest import Ingestor  # noqa: E402
from esrag.types import Document  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR dataset dir with corpus.jsonl")
    ap.add_argument("--limit", type=int, default=300, help="documents to use (0 = all)")
    ap.add_argument("--store", choices=["sqlite", "elasticsearch"], default="sqlite")
    ap.add_argument("--es-url", help="Elasticsearch URL (default with --store elasticsearch: start noida-db)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()

    rows = read_jsonl(args.data / "corpus.jsonl", args.limit or None)
    docs = [Document(doc_id=r["_id"], source=f"{args.data.name}#{r['_id']}", title=r.get("title", ""),
                     text=r["text"]) for r in rows]
    embedder = SentenceTransformerEmbedder(device=args.device, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp, elasticsearch_url(
        args.es_url if args.store == "elasticsearch" else "unused"
    ) as url:
        settings = Settings(store=args.store, index="bench-ingest", sqlite_dir=tmp, batch_size=args.batch_size,
                            es_url=url if args.store == "elasticsearch" else None)
        ingestor = Ingestor(plugins.load(plugins.STORES, args.store)(settings), embedder, settings)
        texts = [c.text for d in docs for c in chunk_document(d, ingestor.chunker)]
        embedder.embed_documents(texts[: args.batch_size])  # warm-up, both paths benefit

        def raw() -> float:
            t = time.perf_counter()
            embedder.embed_documents(texts)
            return len(texts) / (time.perf_counter() - t)

        raw1 = raw()
        ingestor.store.drop()
        report = ingestor.ingest_documents(docs)
        raw2 = raw()
        ingestor.store.drop()
        ingestor.store.close()
    assert report.ok and report.chunks_written == len(texts), report.to_dict()
    raw_mean = (raw1 + raw2) / 2
    out = {
        "store": args.store,
        "device": embedder.device,
        "documents": len(docs),
        "chunks": len(texts),
        "raw_encode_chunks_per_s": [round(raw1, 2), round(raw2, 2)],
        "ingest_chunks_per_s": round(report.chunks_per_s, 2),
        "ratio": round(report.chunks_per_s / raw_mean, 3),
    }
    print(f"{out['chunks']} chunks from {out['documents']} documents ({args.store}, {embedder.device}): "
          f"raw encode {raw1:.1f} / {raw2:.1f} chunks/s, esrag ingest {report.chunks_per_s:.1f} chunks/s, "
          f"ratio {out['ratio']} (target >= 0.85)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
