"""What ``esrag reindex`` costs against its baselines, measured in one run, with searches running throughout.

    python scripts/bench_reindex.py --data /work/shared/data/python-faq          # 400 sections, SQLite
    python scripts/bench_reindex.py --data DIR --store elasticsearch              # noida-db started for the run

1. A fresh ingest of the first ``--docs`` python-faq sections (the packaged MiniLM).
2. Raw write speed: the same chunks with their vectors, read back once, written by ``Store.write`` into an
   empty index (batches of 500, one refresh).
3. A reindex that changes only ``index_options`` (vectors copied; on Elasticsearch inside the server, one
   ``POST _reindex``): its speed against (2), the median of ``--rounds`` ratios, each round timing (2) and
   (3) back to back, alone. Target: >= 0.5x. It must embed nothing and load no model. On Elasticsearch the
   copy through the client (every chunk read in point-in-time pages and written through ``_bulk``, the path
   before the server-side copy) is timed in the same rounds too.
4. A reindex with a model change: the packaged MiniLM saved with perturbed weights (a real, different
   model), against a fresh ingest of the same documents with that model. Target: no slower.

Two threads search the index (a separate engine, as a running server) during (3) and (4); any error is
reported and fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
    raw: list[float] = []
    copies: list[float] = []
    client_copies: list[float] = []  # the copy through this process (the path before the server-side copy)
    server = base["store"] == "elasticsearch"
    for r in range(rounds):  # interleaved, each timed alone: the machine's load shifts between rounds
        target = Engine(Settings(**base, index=f"raw{r}", device="cpu", index_options="int8_hnsw"))
        target.store.ensure_index(eng.store.read_meta())  # type: ignore[arg-type]

        def write(store: Any = target.store) -> None:
            for lo in range(0, len(chunks), 500):
                assert not store.write(chunks[lo:lo + 500]).errors
            store.refresh()

        raw.append(timed(write)[1])
        target.drop()
        target.close()
        fresh = Engine(settings)
        copy, seconds = timed(lambda e=fresh, r=r: e.reindex({"index_options": ("int8_hnsw", "hnsw")[r % 2]}))
        copies.append(seconds)
        copy_loaded = fresh.embedder.loaded
        fresh.reindexer().delete_old()  # untimed, as the raw index's drop
        fresh.close()
        if server:
            fresh = Engine(settings)
            reindexer = fresh.reindexer()
            reindexer.server_copy = False
            options = {"index_options": ("hnsw", "int8_hnsw")[r % 2]}
            client_copies.append(timed(lambda x=reindexer, o=options: x.run(o))[1])  # type: ignore[misc]
            reindexer.delete_old()
            fresh.close()
    t_raw, t_copy = statistics.median(raw), statistics.median(copies)
    ratio = statistics.median(w / c for w, c in zip(raw, copies, strict=True))
    with Searches(settings) as s_copy:  # and once more with searches running
        fresh = Engine(settings)
        _, t_copy_searched = timed(lambda: fresh.reindex({"index_options": "int8_hnsw"}, delete_old=True))
        fresh.close()
    client_searched: dict[str, Any] = {}
    if server:  # the client copy too, with searches running
        with Searches(settings) as s_client:
            fresh = Engine(settings)
            reindexer = fresh.reindexer()
            reindexer.server_copy = False
            client_searched["client_copy_with_searches_s"] = round(
                timed(lambda: reindexer.run({"index_options": "hnsw"}, delete_old=True))[1], 3)
            fresh.close()
        client_searched["searches_during_client_copy"] = s_client.answers
        client_searched["search_errors_client_copy"] = s_client.errors[:3]
    copy_figures: dict[str, Any] = {
        "raw_write_s": [round(x, 3) for x in raw], "copy_reindex_s": [round(x, 3) for x in copies],
        "raw_write_median_s": round(t_raw, 3), "copy_reindex_median_s": round(t_copy, 3),
        "copy_vs_raw_speed_median": round(ratio, 3), "copy_embedded": copy.chunks_embedded,
        "copy_model_loaded": copy_loaded, "copy_notes": copy.notes,
        "copy_with_searches_s": round(t_copy_searched, 3)}
    if client_copies:
        copy_figures["client_copy_reindex_s"] = [round(x, 3) for x in client_copies]
        copy_figures["client_copy_vs_raw_speed_median"] = round(
            statistics.median(w / c for w, c in zip(raw, client_copies, strict=True)), 3)
        copy_figures.update(client_searched)
    if skip_model:
        eng.drop()
        eng.close()
        return {"documents": len(docs), "chunks": len(chunks), **copy_figures,
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
        **copy_figures, "raw_write_chunks_per_s": round(n / t_raw), "copy_reindex_chunks_per_s": round(n / t_copy),
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
    if out["search_errors"] or out.get("search_errors_client_copy"):
        raise SystemExit("searches failed during a reindex")


if __name__ == "__main__":
    main()
