"""Does fine-tuning the embedder help? nDCG@10 of dense and of the default hybrid, base model against the
fine-tuned one, K-fold cross-validated over the judged queries, for two kinds of training pairs:

- ``qrels``: the judged (query, document) pairs of the other folds' queries (a model per fold);
- ``qrels-hard``: the same pairs, each with a hard negative mined from the base model's ranking of its query
  (``esrag.quality.finetune_pairs.with_hard_negatives``);
- ``headings``: (title or heading -> its section) of the corpus, no labels (one model, scored per fold).

Everything goes through the library as ``esrag finetune --cv K`` does (esrag.quality.finetune_eval.cross_validate):
the corpus is ingested into a throw-away SQLite store with each model, queries are retrieved as
``esrag eval`` retrieves them, and a judged pair holds its document as the index embeds it (its first chunk,
with its context; ``--passages document --max-seq-length 128`` measures the first version: title and text
cut at 128 tokens). The hyper-parameters are fixed up front (below), not tuned to any set.

On a shared 2-core CPU, re-embedding a corpus per fold model is the cost, so a set can be cut to
``--max-docs`` documents: every judged document, then a seeded sample of the others. Figures on a cut
corpus are higher than on the whole one (fewer distractors); base and fine-tuned are compared on the same.

    python scripts/bench_finetune.py /tmp/sets/python-faq /tmp/sets/debian-faq --kinds qrels-hard --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from esrag.config import Settings
from esrag.quality.evaluation import BeirDataset, load_beir
from esrag.quality.finetune import TrainConfig
from esrag.quality.finetune_eval import base_settings, cross_validate, passage_reader, score_model
from esrag.quality.finetune_pairs import (
    document_passages,
    heading_pairs,
    qrels_pairs,
    subsample,
    text_key,
    with_hard_negatives,
)


def cut(dataset: BeirDataset, max_docs: int | None, seed: int) -> BeirDataset:
    """Every judged document, then a seeded sample of the others, up to ``max_docs`` (all when None)."""
    if max_docs is None or len(dataset.documents) <= max_docs:
        return dataset
    judged = {d for rel in dataset.qrels.values() for d in rel}
    rest = [d for d in dataset.documents if d.doc_id not in judged]
    keep = judged | {d.doc_id for d in random.Random(seed).sample(rest, max(0, max_docs - len(judged)))}
    docs = tuple(d for d in dataset.documents if d.doc_id in keep)
    return BeirDataset(dataset.name, docs, dataset.queries, dataset.qrels, dataset.split)


def run_set(path: Path, args: argparse.Namespace, store: Path) -> dict[str, Any]:
    full = load_beir(path, "test")
    dataset = cut(full, args.max_docs, args.seed)
    settings = base_settings(Settings(store="sqlite", sqlite_dir=str(store), device="cpu"), dataset.name)
    config = TrainConfig(base_model=settings.model, epochs=args.epochs, learning_rate=args.lr, warmup=0.1,
                         batch_size=args.batch_size, seed=args.seed, max_seq_length=args.max_seq_length,
                         device="cpu", save_steps=10_000)
    log = (lambda m: print(f"[{dataset.name}] {m}", file=sys.stderr, flush=True))  # noqa: E731
    t = time.perf_counter()
    cosines: dict[str, dict[str, float]] = {}
    base = score_model(dataset, settings, sorted(dataset.queries), log=log, cosines=cosines)
    # judged pairs hold each document as the index embeds it (as `esrag finetune` does), or, with
    # --passages document, its title and text cut at --max-seq-length tokens (the method before)
    passage = passage_reader(settings) if args.passages == "indexed" else None
    passages = document_passages(dataset.documents, passage=passage)
    base_seconds = time.perf_counter() - t
    docs = {d.doc_id: d for d in dataset.documents}
    out: dict[str, Any] = {"set": dataset.name, "documents": len(dataset.documents),
                           "documents_full": len(full.documents), "queries": len(dataset.queries),
                           "base_index_seconds": round(base_seconds, 1), "passages": args.passages}
    # a heading that is word for word a judged query would leak it (esrag finetune refuses such pairs):
    # left out here, and counted
    asked = {text_key(q) for q in full.queries.values()}
    found = heading_pairs(full.documents)
    clean = [p for p in found if text_key(p.anchor) not in asked]
    out["heading_pairs_found"], out["heading_pairs_dropped_as_queries"] = len(found), len(found) - len(clean)
    headings = subsample(clean, args.max_heading_pairs, args.seed)
    for kind in args.kinds:
        mined = [0, 0]
        if kind == "qrels":
            def query_pairs(qids: Any) -> Any:
                return qrels_pairs(dataset.queries, dataset.qrels, docs, qids, passage=passage)
            other: list[Any] = []
        elif kind == "qrels-hard":  # the same pairs, each with a negative mined from the base model's ranking
            def query_pairs(qids: Any, mined: list[int] = mined) -> Any:
                pairs, n = with_hard_negatives(qrels_pairs(dataset.queries, dataset.qrels, docs, qids,
                                                           passage=passage), cosines, dataset.qrels, passages)
                mined[0], mined[1] = mined[0] + n, mined[1] + len(pairs)
                return pairs
            other = []
        else:
            def query_pairs(qids: Any) -> Any:
                return []
            other = headings
        t = time.perf_counter()
        _, folds, summary = cross_validate(dataset, settings, config, query_pairs, other, args.folds, args.seed,
                                           base=base, log=log)
        out[kind] = {
            "results": summary,
            "pairs_per_fold": [f.report.pairs for f in folds],
            "train_seconds_per_fold": [round(f.report.seconds, 1) for f in folds],
            "steps_per_fold": [f.report.steps for f in folds],
            "seconds_total": round(time.perf_counter() - t, 1),
        } | ({"pairs_with_a_mined_negative": f"{mined[0]} of {mined[1]}"} if kind == "qrels-hard" else {})
        log(f"{kind}: " + ", ".join(f"{m} {r['base']:.3f} -> {r['tuned']:.3f} ({r['gain']:+.3f} ± {r['gain_std']:.3f})"
                                    for m, r in summary.items()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sets", nargs="+", type=Path, help="BEIR-layout dataset directories")
    p.add_argument("--max-docs", type=int, default=None, help="cut each corpus to N documents (judged first)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--kinds", default="qrels,headings")
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-seq-length", type=int, default=256,
                   help="tokens read in training (256: a whole chunk of the default 256, as `esrag finetune`)")
    p.add_argument("--passages", choices=["indexed", "document"], default="indexed",
                   help="a judged pair's passage: the document's first chunk as embedded, or its title and text")
    p.add_argument("--max-heading-pairs", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args()
    args.kinds = [k for k in args.kinds.split(",") if k]
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("sets", "json")}

    def report() -> str:
        return json.dumps({"params": params, "seconds": round(time.perf_counter() - t0, 1), "sets": results},
                          indent=2)

    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as store:
        for path in args.sets:
            results.append(run_set(path, args, Path(store)))
            if args.json:  # after each set: a long run that is stopped keeps what it measured
                args.json.write_text(report(), encoding="utf-8")
    print(report())


if __name__ == "__main__":
    main()
