"""End-to-end ingest throughput against raw embedder throughput, on the same chunks, in the same run.

    python scripts/bench_ingest.py                      # python-faq, first 300 documents, SQLite store
    python scripts/bench_ingest.py --limit 0 --store elasticsearch --es-url http://localhost:9200

1. Load the documents and chunk them exactly as ``esrag ingest`` does.
2. Baseline: ``SentenceTransformer.encode`` on those chunk texts (same batch size, normalised), chunks/s.
3. esrag: ``Ingestor.ingest`` of a ``DocumentsSource`` into a fresh index (load+chunk, embed, write, all
   overlapped), chunks/s.
4. Baseline again, and steps 3-4 ``--rounds`` times. Each round's ratio is its ingest over the mean of the
   baseline runs just before and after it (drift on a noisy machine shows); the median round is reported.

Target: ingest/raw >= 0.85 (everything but embedding must hide behind it).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _bench_common import DEFAULT_DATA, dataset, elasticsearch_url, read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from esrag import plugins  # noqa: E402
from esrag.config import Settings  # noqa: E402
from esrag.embedders.sentence_transformers import SentenceTransformerEmbedder  # noqa: E402
from esrag.ingest.chunking import chunk_document  # noqa: E402
from esrag.ingest.pipeline import Ingestor  # noqa: E402
from esrag.sources.documents import DocumentsSource  # noqa: E402
from esrag.types import Document  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR dataset dir with corpus.jsonl")
    ap.add_argument("--limit", type=int, default=300, help="documents to use (0 = all)")
    ap.add_argument("--store", choices=["sqlite", "elasticsearch"], default="sqlite")
    ap.add_argument("--es-url", help="Elasticsearch URL (default with --store elasticsearch: start noida-db)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default=None)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    args.data = dataset(args.data)

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

        raws = [raw()]
        ingests = []
        for _ in range(args.rounds):
            ingestor.store.drop()
            report = ingestor.ingest(DocumentsSource(docs))
            assert report.ok and report.chunks_written == len(texts), report.to_dict()
            ingests.append(report.chunks_per_s)
            raws.append(raw())
        ingestor.store.drop()
        ingestor.store.close()
    ratios = [ing / ((raws[i] + raws[i + 1]) / 2) for i, ing in enumerate(ingests)]
    out = {
        "store": args.store,
        "device": embedder.device,
        "documents": len(docs),
        "chunks": len(texts),
        "raw_encode_chunks_per_s": [round(r, 2) for r in raws],
        "ingest_chunks_per_s": [round(r, 2) for r in ingests],
        "ratios": [round(r, 3) for r in ratios],
        "ratio": round(sorted(ratios)[len(ratios) // 2], 3),
    }
    print(f"{out['chunks']} chunks from {out['documents']} documents ({args.store}, {embedder.device}): "
          f"raw encode {out['raw_encode_chunks_per_s']} chunks/s, esrag ingest {out['ingest_chunks_per_s']} "
          f"chunks/s, ratios {out['ratios']}, median {out['ratio']} (target >= 0.85)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
