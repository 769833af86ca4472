"""Re-ingest costs against the first ingest, in one run: what an unchanged re-run, a few edits, renames and
deletions cost compared with ingesting the corpus from scratch.

    python scripts/bench_reingest.py                         # 600 multi-chunk python-faq sections, SQLite
    python scripts/bench_reingest.py --docs 120 --store elasticsearch   # noida-db started for the run

The corpus: the first ``--docs`` python-faq sections of at least ``--min-chars`` characters, written as
``.md`` files. Each step runs through a fresh ``Engine`` (as a fresh ``esrag ingest`` process would: its
model loads lazily, only when something must be embedded):

1. first ingest into an empty index;
2. unchanged re-run: must be >= 100x faster, embed nothing and not load the model;
3. 1% of the files edited (a paragraph appended): at most 2% of all chunks re-embedded;
4. 1% renamed, with ``prune``: 0 chunks embedded, the document count unchanged;
5. 1% deleted, with ``prune``: exactly those documents gone;
6. Elasticsearch only: the HTTP requests of a re-ingest in which ``--changed`` documents changed (a
   handful of ``_bulk`` and one ``_refresh`` expected).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from _bench_common import DEFAULT_DATA, dataset, elasticsearch_url, read_jsonl

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from esrag.config import Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402


def write_corpus(data: Path, root: Path, n: int, min_chars: int) -> list[Path]:
    rows = [r for r in read_jsonl(data / "corpus.jsonl") if len(r["text"]) >= min_chars][:n]
    root.mkdir(parents=True)
    paths = []
    for r in rows:
        path = root / (re.sub(r"[^\w.-]+", "-", r["_id"]) + ".md")
        path.write_text(f"# {r.get('title') or r['_id']}\n\n{r['text']}\n", encoding="utf-8")
        paths.append(path)
    return paths


def step(settings: Settings, root: Path, **options: Any) -> dict[str, Any]:
    engine = Engine(settings)
    try:
        t = time.perf_counter()
        report = engine.ingest_paths([root], **options)
        seconds = time.perf_counter() - t
        assert report.ok, report.to_dict()
        counts = engine.store.count()
        return {"seconds": round(seconds, 3), "model_loaded": engine.embedder.loaded,
                "documents_in_index": counts.documents, "chunks_in_index": counts.chunks,
                **{k: v for k, v in report.to_dict().items() if k.startswith(("documents_", "chunks_"))
                   and k != "documents_not_written"}}
    finally:
        engine.close()


def count_requests(settings: Settings, root: Path) -> dict[str, int]:
    """HTTP requests (method + endpoint) of one ingest on Elasticsearch."""
    engine = Engine(settings)
    seen: collections.Counter[str] = collections.Counter()
    try:
        transport = engine.store.client.transport  # type: ignore[attr-defined]
        inner = transport.perform_request

        def counted(method: str, target: str, *args: Any, **kwargs: Any) -> Any:
            path = target.split("?")[0]
            seen[f"{method} {re.sub(r'^/[^/_][^/]*', '/<index>', path)}"] += 1
            return inner(method, target, *args, **kwargs)

        transport.perform_request = counted
        report = engine.ingest_paths([root])
        assert report.ok, report.to_dict()
    finally:
        engine.close()
    return dict(seen)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR dataset dir with corpus.jsonl")
    ap.add_argument("--docs", type=int, default=600, help="documents (files) in the corpus")
    ap.add_argument("--min-chars", type=int, default=1500, help="shortest section taken (multi-chunk ones)")
    ap.add_argument("--store", choices=["sqlite", "elasticsearch"], default="sqlite")
    ap.add_argument("--es-url", help="Elasticsearch URL (default with --store elasticsearch: start noida-db)")
    ap.add_argument("--changed", type=int, default=100, help="documents changed for the request count (ES)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    args.data = dataset(args.data)

    with tempfile.TemporaryDirectory() as tmp, elasticsearch_url(
        args.es_url if args.store == "elasticsearch" else "unused"
    ) as url:
        root = Path(tmp) / "corpus"
        paths = write_corpus(args.data, root, args.docs, args.min_chars)
        settings = Settings(store=args.store, index="bench-reingest", sqlite_dir=str(Path(tmp) / "store"),
                            batch_size=args.batch_size, es_url=url if args.store == "elasticsearch" else None)
        one_percent = max(1, len(paths) // 100)
        out: dict[str, Any] = {"store": args.store, "documents": len(paths)}
        out["first"] = step(settings, root)
        out["unchanged"] = step(settings, root)
        for path in paths[:one_percent]:
            path.write_text(path.read_text(encoding="utf-8") + "\n\nAn appended paragraph: the benchmark edited "
                            "this section to measure what an edit costs.\n", encoding="utf-8")
        out["edited"] = step(settings, root)
        for path in paths[one_percent:2 * one_percent]:
            path.rename(path.with_name("renamed-" + path.name))
        out["renamed"] = step(settings, root, prune=True)
        for path in paths[2 * one_percent:3 * one_percent]:
            path.unlink()
        out["deleted"] = step(settings, root, prune=True)
        if args.store == "elasticsearch":
            for path in sorted(root.glob("*.md"))[:args.changed]:
                path.write_text(path.read_text(encoding="utf-8") + "\n\nChanged again.\n", encoding="utf-8")
            out["requests_with_changes"] = count_requests(settings, root)
        Engine(settings).drop()

    first, same = out["first"], out["unchanged"]
    total = first["chunks_in_index"]
    out["unchanged_speedup"] = round(first["seconds"] / max(same["seconds"], 1e-9), 1)
    out["edited_embedded_fraction"] = round(out["edited"]["chunks_embedded"] / total, 4)
    print(f"{args.store}: {len(paths)} documents, {total} chunks. First ingest {first['seconds']} s; unchanged "
          f"re-run {same['seconds']} s ({out['unchanged_speedup']}x, target >= 100x; model loaded: "
          f"{same['model_loaded']}); {one_percent} edited: {out['edited']['chunks_embedded']} chunks embedded "
          f"({100 * out['edited_embedded_fraction']:.2f}% of all, target <= 2%); {one_percent} renamed: "
          f"{out['renamed']['chunks_embedded']} embedded, documents {first['documents_in_index']} -> "
          f"{out['renamed']['documents_in_index']}; {one_percent} deleted: {out['deleted']['documents_removed']} "
          f"removed, documents {out['deleted']['documents_in_index']}")
    if "requests_with_changes" in out:
        print(f"requests of a re-ingest with {args.changed} changed documents: {out['requests_with_changes']}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
