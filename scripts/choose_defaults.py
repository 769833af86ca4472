#!/usr/bin/env python3
"""Choose the fusion defaults across evaluation sets, never on one: leave-one-set-out nDCG@10.

For one index configuration (model, chunking, embed template, analyzer: the usual flags) and two or more
BEIR-layout sets, each set is indexed the way ``esrag eval`` indexes it (incrementally, into the same
``eval-<set>...`` index, so a set `esrag eval` already indexed embeds nothing), every judged query is sent
once, and every fusion setting of the sweep (linear fusion at each alpha for each normaliser, RRF at each k,
each at every section weight) is scored on the same candidates. Then:

* **per set**: nDCG@10 of bm25 and dense at each section weight, and of each setting, and the best setting
  on that set alone (an optimistic figure: chosen on the queries it is scored on);
* **leave one set out**: for each set, the setting with the best mean nDCG@10 over the *other* sets (each
  set weighing the same), scored on the held-out set. This is how a default chosen here would do on a
  dataset nobody tuned on;
* **overall**: the setting with the best mean over all sets, the candidate default, with its score on each
  set next to the better single method there (at the same section weight).

    python scripts/choose_defaults.py /tmp/sets/python-faq /tmp/sets/debian-faq /tmp/sets/git-doc \\
        --sqlite-dir /tmp/evalstore --analyzer english --json out.json

Needs the eval extra (ranx). A benchmark script, not part of the package.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from statistics import mean
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from esrag.config import NORMALIZATIONS, Settings  # noqa: E402
from esrag.engine import Engine  # noqa: E402
from esrag.quality.evaluation import (  # noqa: E402
    check_eval_dependencies,
    eval_index_name,
    evaluate_run,
    load_beir,
    method_ranking,
    retrieve_candidates,
)
from esrag.quality.tuning import FusionSetting, score_settings, sweep_settings  # noqa: E402

METRIC = "ndcg@10"


def set_scores(path: Path, base: Settings, grid: list[FusionSetting], candidates: int) -> dict[str, Any]:
    """Single methods at each section weight and every setting of ``grid`` on one set: {"single": {weight:
    {method: score}}, "settings": {setting: mean score}, "index": name, "queries": n}."""
    dataset = load_beir(path)
    settings = base.replace(index=eval_index_name(dataset.name, base.model, base.chunk_size, base.chunk_overlap,
                                                  base.embed_template))
    engine = Engine(settings)
    try:
        report = engine.ingest_documents(dataset.documents, total=len(dataset.documents), progress=False)
        print(f"{dataset.name}: index {settings.index!r}, {report.chunks_embedded} chunks embedded",
              file=sys.stderr, flush=True)
        retrieval = retrieve_candidates(dataset.queries, engine.searcher, candidates)
        meta = engine.store.read_meta()
    finally:
        engine.close()
    single: dict[float, dict[str, float]] = {}
    for weight in dict.fromkeys(s.doc_weight for s in grid):
        for method in ("bm25", "dense"):
            run = {q: method_ranking(resp, method, doc_weight=weight) for q, resp in retrieval.candidates.items()}
            single.setdefault(weight, {})[method] = evaluate_run(dataset.qrels, run, [METRIC])[METRIC]
    scores = score_settings(dataset.qrels, retrieval.candidates, grid, METRIC)
    return {"name": dataset.name, "index": settings.index, "queries": len(dataset.queries),
            "build": meta.build_params() if meta else {}, "single": single,
            "settings": {s: mean(per_query.values()) if per_query else 0.0 for s, per_query in scores.items()}}


def best(sets: list[dict[str, Any]], grid: list[FusionSetting]) -> FusionSetting:
    """The setting with the best mean score over ``sets`` (each set weighs the same); ties: first in grid."""
    return max(grid, key=lambda s: (mean(x["settings"][s] for x in sets), -grid.index(s)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", type=Path, help="BEIR-layout set directories (two or more)")
    ap.add_argument("--sqlite-dir", required=True, help="the store directory (as esrag eval --sqlite-dir)")
    ap.add_argument("--chunk-size", type=int)
    ap.add_argument("--chunk-overlap", type=int)
    ap.add_argument("--embed-template")
    ap.add_argument("--analyzer")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--candidates", type=int, default=300)
    ap.add_argument("--step", type=float, default=0.05, help="alpha step of the sweep")
    ap.add_argument("--rrf-ks", default="10,20,40,60,100")
    ap.add_argument("--doc-weights", default="0,0.25,0.5,0.75,1", help="section weights of the sweep")
    ap.add_argument("--json", type=Path, help="also write everything as JSON here")
    args = ap.parse_args()
    if len(args.sets) < 2:
        sys.exit("give two or more sets: defaults are chosen across sets")
    check_eval_dependencies(tfidf=False)
    overrides = {k: v for k, v in {"chunk_size": args.chunk_size, "chunk_overlap": args.chunk_overlap,
                                   "embed_template": args.embed_template, "analyzer": args.analyzer}.items()
                 if v is not None}
    base = Settings(store="sqlite", sqlite_dir=args.sqlite_dir, device=args.device).replace(**overrides)
    grid = sweep_settings(args.step, NORMALIZATIONS, [int(k) for k in args.rrf_ks.split(",")],
                          [float(w) for w in args.doc_weights.split(",")])
    sets = [set_scores(p, base, grid, args.candidates) for p in args.sets]

    print(f"\nnDCG@10; index build: {sets[0]['build']}")
    weights = list(sets[0]["single"])
    print("single methods (bm25 / dense) at each section weight")
    print(f"{'set':<12}" + "".join(f"{w:>16g}" for w in weights))
    for x in sets:
        print(f"{x['name']:<12}" + "".join(f"{x['single'][w]['bm25']:>9.3f} {x['single'][w]['dense']:.3f}"
                                           for w in weights))
    print(f"\n{'set':<12} {'best on itself':>40} {'held out: chosen on the others':>52}")
    held_out = {}
    for i, x in enumerate(sets):
        own = best([x], grid)
        others = best([y for j, y in enumerate(sets) if j != i], grid)
        held_out[x["name"]] = {"setting": others.to_dict(), "label": others.label, METRIC: x["settings"][others]}
        print(f"{x['name']:<12} {own.label:>34} {x['settings'][own]:.3f} {others.label:>46} "
              f"{x['settings'][others]:.3f}")
    print(f"\nleave-one-set-out mean: {mean(h[METRIC] for h in held_out.values()):.3f}")
    overall = best(sets, grid)
    print(f"\nbest over all sets: {overall.label}")
    for x in sets:
        better = max(x["single"][overall.doc_weight].values())
        print(f"  {x['name']:<12} {x['settings'][overall]:.3f}  (better single method {better:.3f}: "
              f"{'above' if x['settings'][overall] >= better else 'BELOW'})")
    if args.json:
        args.json.write_text(json.dumps({
            "build": sets[0]["build"], "model": base.model,
            "sets": [{"name": x["name"], "index": x["index"], "queries": x["queries"],
                      "single": {str(w): v for w, v in x["single"].items()},
                      "settings": {s.label: round(v, 5) for s, v in x["settings"].items()}} for x in sets],
            "leave_one_set_out": held_out, "overall": {"setting": overall.to_dict(), "label": overall.label,
                                                      "per_set": {x["name"]: x["settings"][overall] for x in sets}},
        }, indent=2))


if __name__ == "__main__":
    main()
