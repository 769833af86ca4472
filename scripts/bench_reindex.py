"""What ``esrag reindex`` costs against its baselines, measured in one run, with searches running throughout.

    python scripts/bench_reindex.py --data /work/shared/data/python-faq          # 400 sections, SQLite
    python scripts/bench_reindex.py --data DIR --store elasticsearch              # noida-db started for the run

1. A fresh ingest of the first ``--docs`` python-faq sections (the packaged MiniLM).
2. Raw write speed: the same chunks with their vectors, read back once, written by ``Store.write`` into an
   empty index (batches of 500, one refresh), the best of ``--rounds``.
3. A reindex that changes only ``index_options`` (vectors copied): its chunks/s against (2). Target:
   >= 0.5x. It must embed nothing and load no model.
4. A reindex with a model change: the packaged MiniLM saved with perturbed weights (a real, different
   model), against a fresh ingest of the same documents with that model. Target: no slower.

Two threads search the index (a separate engine, as a running server) during (3) and (4); any error is
reported and fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _bench_common import DEFAULT_DATA, dataset, elasticsearch_url, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.fixtures
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.types import Document  # noqa: E402
from tests.fixtures.models import perturbed_minilm  # noqa: E402


class Searches:
    """Threads searching without pause through their own engine; counts answers and errors."""

    def __init__(self, settings: Settings, threads: int = 2) -> None:
        self.engine = Engine(settings)
        self.engine.search("warm up")
        self.done = threading.Event()
        self.answers = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(threads)]

    def _loop(self, i: int) -> None:
        queries = ["how do I sort a list", "what is a generator", "install a package", "unicode strings"]
        n = 0
        while not self.done.is_set():
            try:
                self.engine.search(queries[(i + n) % len(queries)], k=5)
                self.answers += 1
            except Exception as e:  # noqa: BLE001 - every failure is the finding
                self.errors.append(f"{type(e).__name__}: {e}")
            n += 1

    def __enter__(self) -> Searches:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        for t in self.threads:
            t.join()
        self.engine.close()


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def run(base: dict[str, Any], docs: list[Document], rounds: int, tmp: Path, skip_model: bool = False
        ) -> dict[str, Any]:
    settings = Settings(**base, index="bench", device="cpu", index_options="hnsw")
    eng = Engine(settings)
    ingest, t_ingest = timed(lambda: eng.ingest_documents(docs))
    assert ingest.ok
    chunks = [c for batch in eng.store.iter_chunks() for c in batch]
    raw = []
    for r in range(rounds):
        target = Engine(Settings(**base, index=f"raw{r}", device="cpu", index_options="int8_hnsw"))
        target.store.ensure_index(eng.store.read_meta())  # type: ignore[arg-type]

        def write(store: Any = target.store) -> None:
            for lo in range(0, len(chunks), 500):
                assert not store.write(chunks[lo:lo + 500]).errors
            store.refresh()

        raw.append(timed(write)[1])
        target.drop()
        target.close()
    t_raw = min(raw)
    copies = []
    for r in range(rounds):  # timed alone, like the raw writes
        fresh = Engine(settings)
        copy, seconds = timed(lambda e=fresh, r=r: e.reindex({"index_options": ("int8_hnsw", "hnsw")[r % 2]}))
        copies.append(seconds)
        copy_loaded = fresh.embedder.loaded
        fresh.close()
    t_copy = min(copies)
    with Searches(settings) as s_copy:  # and once more with searches running
        fresh = Engine(settings)
        fresh.reindex({"index_options": "int8_hnsw"}, delete_old=True)
        fresh.close()
    if skip_model:
        eng.drop()
        eng.close()
        return {"documents": len(docs), "chunks": len(chunks), "raw_write_s": round(t_raw, 3),
                "copy_reindex_s": round(t_copy, 3), "copy_vs_raw_speed": round(t_raw / t_copy, 3),
                "copy_embedded": copy.chunks_embedded, "copy_model_loaded": copy_loaded,
                "searches_during_copy": s_copy.answers, "search_errors": s_copy.errors[:3]}
    model = perturbed_minilm(tmp / "minilm-perturbed")
    with Searches(settings) as s_model:
        reembed, t_model = timed(lambda: eng.reindex({"model": model}))
    other = Engine(Settings(**base, index="fresh-new-model", device="cpu", model=model))
    fresh_new, t_fresh_new = timed(lambda: other.ingest_documents(docs))
    assert fresh_new.ok
    other.drop()
    other.close()
    eng.drop()
    eng.close()
    n = len(chunks)
    return {
        "documents": len(docs), "chunks": n,
        "fresh_ingest_s": round(t_ingest, 2),
        "raw_write_s": round(t_raw, 3), "raw_write_chunks_per_s": round(n / t_raw),
        "copy_reindex_s": round(t_copy, 3), "copy_reindex_chunks_per_s": round(n / t_copy),
        "copy_vs_raw_speed": round(t_raw / t_copy, 3), "copy_embedded": copy.chunks_embedded,
        "copy_model_loaded": copy_loaded,
        "model_reindex_s": round(t_model, 2), "model_reindex_embedded": reembed.chunks_embedded,
        "fresh_ingest_new_model_s": round(t_fresh_new, 2),
        "model_reindex_vs_fresh_ingest_time": round(t_model / t_fresh_new, 3),
        "searches_during_copy": s_copy.answers, "searches_during_model": s_model.answers,
        "search_errors": s_copy.errors[:3] + s_model.errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--docs", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--store", choices=("sqlite", "elasticsearch"), default="sqlite")
    ap.add_argument("--es-url")
    ap.add_argument("--skip-model", action="store_true", help="Only the copy reindex against raw writes.")
    args = ap.parse_args()
    rows = read_jsonl(dataset(args.data) / "corpus.jsonl", args.docs)
    docs = [Document(doc_id=r["_id"], source=r["_id"], title=r.get("title", ""), text=r["text"]) for r in rows]
    with tempfile.TemporaryDirectory(prefix="esrag-bench-reindex-") as tmp:
        if args.store == "sqlite":
            out = run({"store": "sqlite", "sqlite_dir": tmp}, docs, args.rounds, Path(tmp), args.skip_model)
        else:
            with elasticsearch_url(args.es_url) as url:
                out = run({"store": "elasticsearch", "es_url": url}, docs, args.rounds, Path(tmp),
                          args.skip_model)
    print(json.dumps(out, indent=2))
    if out["search_errors"]:
        raise SystemExit("searches failed during a reindex")


if __name__ == "__main__":
    main()
