"""Ingest from an existing Elasticsearch index: read throughput, the unchanged re-run against the first
run, and peak memory at two source sizes, with 1 and with 2 slices.

    python scripts/bench_es_source.py --corpus GCIDE_DIR                 # 10,000 and 50,000 records
    python scripts/bench_es_source.py --corpus GCIDE_DIR --sizes 2000 5000 --es-url http://localhost:9200

The source index holds the first N entries of the gcide dictionary corpus (``scripts/build_gcide_corpus.py
OUT_DIR``; one record per definition block: ``title``, ``text``, a ``letter`` keyword), filled through the
bulk API. The destination is a fresh embedded (SQLite) index. Embedding is excluded: the embedder is the
deterministic hashed bag-of-words of the plugin tests (no model), so the figures are those of reading,
comparing, chunking and writing. Every run is a separate process (as ``esrag ingest`` is), which reports its
own peak RSS (``ru_maxrss``) and its time, from building the engine to the end of the ingest (the
process's time, imports included, is reported beside it):

1. read only: the source's id pass and the ``_mget`` of every record, nothing written: records/s;
2. first ingest (1 slice): seconds and peak RSS;
3. unchanged re-run (1 slice): seconds (target: at least 20x faster than 2) and peak RSS;
4. first ingest with 2 slices at once, into another fresh index: wall seconds and each process's RSS;
5. with ``--model-records M``: a first ingest of M records with the real packaged model (the default
   sentence-transformers embedder, on CPU), and its unchanged re-run: the ratio the target is about, since
   embedding is what a first ingest costs in production.

Targets: the unchanged re-run >= 20x faster than the first ingest; peak RSS of the first ingest at the
largest size within 1.2x of that at the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import elasticsearch_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, resource, sys, time
began = time.perf_counter()
from esrag.config import Settings
from esrag.engine import Engine
args = json.loads(sys.argv[1])
settings = Settings(store="sqlite", sqlite_dir=args["dir"], index=args["index"],
                    embedder=args.get("embedder", "hashed"), chunk_size=256, chunk_overlap=32)
start = time.perf_counter()
with Engine(settings) as engine:
    source = engine.source("elasticsearch", index=args["source"], es_url=args["url"], text_fields=["text"],
                           title_field="title", metadata_fields=["letter"], slice=args.get("slice"))
    if args["mode"] == "read":
        source.start()
        stubs, n = [], 0
        for item in source.items():
            if hasattr(item, "version"):
                stubs.append(item)
            if len(stubs) >= 500:
                n += sum(1 for _ in source.fetch(stubs)); stubs = []
        n += sum(1 for _ in source.fetch(stubs)) if stubs else 0
        source.close()
        out = {"records": n}
    else:
        report = engine.ingest(source, prune=True)
        out = {"records": report.documents, "new": report.documents_new, "unchanged": report.documents_unchanged,
               "chunks_written": report.chunks_written, "ok": report.ok}
out["seconds"] = time.perf_counter() - start
out["process_s"] = time.perf_counter() - began
out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def fill(url: str, index: str, corpus: Path, n: int) -> float:
    from elasticsearch import Elasticsearch, helpers

    es = Elasticsearch(url, request_timeout=120)
    es.options(ignore_status=404).indices.delete(index=index)
    es.indices.create(index=index, mappings={"properties": {"title": {"type": "text"}, "text": {"type": "text"},
                                                            "letter": {"type": "keyword"}}})

    def actions() -> Any:
        with corpus.open(encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= n:
                    return
                row = json.loads(line)
                letter = (row.get("title") or "?")[:1].lower()
                yield {"_index": index, "_id": row["_id"], "_source": {"title": row.get("title", ""),
                                                                      "text": row["text"], "letter": letter}}

    start = time.perf_counter()
    helpers.bulk(es, actions(), chunk_size=2000, request_timeout=120)
    es.indices.refresh(index=index)
    es.close()
    return time.perf_counter() - start


def child(args: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)], env=env, stdout=subprocess.PIPE, text=True)


def result(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode:
        sys.exit(f"a run failed (exit {proc.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="a directory holding the gcide corpus.jsonl")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--es-url", help="the source cluster (default: a noida-db started for the run)")
    parser.add_argument("--model-records", type=int, default=0,
                        help="also time a first ingest of this many records with the real model, and its re-run")
    opts = parser.parse_args()
    from tests.plugins.dist import write_distribution

    site = write_distribution(Path(tempfile.mkdtemp(prefix="esrag-bench-site-")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "ESRAG_EMBEDDER_HASHED_DIMS": "64", "HF_HUB_OFFLINE": "1"}
    rows = []
    with elasticsearch_url(opts.es_url) as url, tempfile.TemporaryDirectory() as tmp:
        for n in opts.sizes:
            source = f"bench-source-{n}"
            filled = fill(url, source, opts.corpus / "corpus.jsonl", n)
            base = {"dir": tmp, "url": url, "source": source}
            read = result(child({**base, "index": f"read-{n}", "mode": "read"}, env))
            first = result(child({**base, "index": f"one-{n}", "mode": "ingest"}, env))
            again = result(child({**base, "index": f"one-{n}", "mode": "ingest"}, env))
            start = time.perf_counter()
            procs = [child({**base, "index": f"two-{n}", "mode": "ingest", "slice": f"{i}/2"}, env) for i in range(2)]
            sliced = [result(p) for p in procs]
            wall = time.perf_counter() - start
            assert first["ok"] and again["unchanged"] == first["new"] and sum(s["new"] for s in sliced) == first["new"]
            row = {"records": n, "fill_s": round(filled, 1),
                   "read_records_per_s": round(read["records"] / read["seconds"]),
                   "first_s": round(first["seconds"], 1), "first_records_per_s": round(n / first["seconds"]),
                   "rerun_s": round(again["seconds"], 2), "rerun_process_s": round(again["process_s"], 2),
                   "first_process_s": round(first["process_s"], 1),
                   "rerun_speedup": round(first["seconds"] / again["seconds"], 1),
                   "first_rss_mb": round(first["rss_mb"]), "rerun_rss_mb": round(again["rss_mb"]),
                   "two_slices_wall_s": round(wall, 1), "two_slices_speedup": round(first["seconds"] / wall, 2),
                   "slice_rss_mb": [round(s["rss_mb"]) for s in sliced], "chunks": first["chunks_written"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if opts.model_records:
            n = opts.model_records
            fill(url, "bench-model", opts.corpus / "corpus.jsonl", n)
            base = {"dir": tmp, "url": url, "source": "bench-model", "index": "model", "mode": "ingest",
                    "embedder": "sentence_transformers"}
            first, again = result(child(base, env)), result(child(base, env))
            print(json.dumps({"model_records": n, "chunks": first["chunks_written"],
                              "first_s": round(first["seconds"], 1),
                              "rerun_s": round(again["seconds"], 2),
                              "rerun_speedup": round(first["seconds"] / again["seconds"], 1),
                              "rerun_rss_mb": round(again["rss_mb"]), "first_rss_mb": round(first["rss_mb"])}),
                  flush=True)
    if len(rows) > 1:
        ratio = rows[-1]["first_rss_mb"] / rows[0]["first_rss_mb"]
        print(f"peak RSS of the first ingest at {rows[-1]['records']:,} records / at {rows[0]['records']:,}: "
              f"{ratio:.2f}x (target <= 1.2x)")
    for r in rows:
        print(f"{r['records']:,} records: unchanged re-run {r['rerun_speedup']}x faster than the first ingest "
              f"(target >= 20x); 2 slices {r['two_slices_speedup']}x the speed of 1")


if __name__ == "__main__":
    main()
