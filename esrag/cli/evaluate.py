"""``esrag eval`` and ``esrag tune``: retrieval quality on a BEIR-layout dataset.

Thin: parse options, resolve settings, call esrag.quality.evaluation / esrag.quality.tuning, print."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from esrag.cli.common import build_settings, chunk_options, fusion_options, model_options, progress_flag, store_options
from esrag.config import NORMALIZATIONS, check_doc_weight, save_settings
from esrag.engine import Engine
from esrag.errors import BulkWriteError, ConfigError
from esrag.ingest.context import PLAIN

if TYPE_CHECKING:
    from esrag.ingest.pipeline import IngestReport
    from esrag.quality.evaluation import BeirDataset
    from esrag.quality.tuning import TuneResult

T = TypeVar("T")

METRIC_HEADERS = {"ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "recall@100": "R@100"}

dataset_argument = click.argument("dataset_dir",
                                  type=click.Path(exists=True, file_okay=False, path_type=Path))

eval_options = [
    click.option("--split", default="test", show_default=True, help="Qrels split: qrels/SPLIT.tsv."),
    click.option("--candidates", type=click.IntRange(min=1), default=300, show_default=True,
                 help="Chunks fetched per side and query (documents are deduplicated from these)."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables."),
    click.option("--progress/--no-progress", default=None,
                 help="Progress bars on stderr. [default: when stderr is a terminal]"),
]


def common_eval_options(f: Any) -> Any:
    """Dataset, store, model and chunking options shared by ``eval`` and ``tune``."""
    for d in reversed([dataset_argument, *eval_options]):
        f = d(f)
    return chunk_options(model_options(store_options(f)))


@dataclass(frozen=True)
class Prepared:
    """A dataset indexed and ready to query."""

    dataset: BeirDataset
    engine: Engine
    report: IngestReport

    @property
    def settings(self) -> Any:
        return self.engine.settings


@contextmanager
def _prepared(dataset_dir: Path, split: str, progress: bool, options: dict[str, Any]) -> Iterator[Prepared]:
    """Load the dataset, open the store and model, ingest incrementally (the store is closed on exit)."""
    from esrag.quality.evaluation import check_eval_dependencies, eval_index_name, load_beir

    check_eval_dependencies()
    dataset = load_beir(dataset_dir, split)
    settings = build_settings(**{k: v for k, v in options.items() if k != "index"})
    settings = settings.replace(index=options.get("index") or eval_index_name(
        dataset.name, settings.model, settings.chunk_size, settings.chunk_overlap, settings.embed_template))
    engine = Engine(settings)
    engine.check_plugins()
    try:
        click.echo(f"Indexing {len(dataset.documents)} documents of {dataset.name} into "
                   f"{settings.store_name} index {settings.index!r}...", err=True)
        report = engine.ingest_documents(dataset.documents, total=len(dataset.documents), progress=progress)
        click.echo(f"ingest: {report.documents_new} new, {report.documents_changed} changed, "
                   f"{report.documents_unchanged} unchanged documents; {report.chunks_embedded} chunks "
                   f"embedded in {report.seconds:.1f}s", err=True)
        if not report.ok:
            raise BulkWriteError(f"{len(report.errors)} chunks failed to write; first: "
                                 f"{report.errors[0].reason}", tuple(report.errors))
        yield Prepared(dataset, engine, report)
    finally:
        engine.close()


@click.command("eval")
@common_eval_options
@click.option("--methods", "methods", multiple=True, metavar="M[,M...]",
              help="Methods to report: tfidf, bm25, dense, hybrid, rrf (comma-separated or repeated). "
                   "[default: all]")
@fusion_options
@click.option("--runs", "runs_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write one TREC run file per method into DIR (METHOD.trec).")
def eval_cmd(dataset_dir: Path, split: str, candidates: int, as_json: bool, progress: bool | None,
             methods: tuple[str, ...], runs_dir: Path | None, **options: Any) -> None:
    """Evaluate retrieval on a BEIR-layout dataset: nDCG@10, MRR@10 and Recall@100 per method.

    \b
    DATASET_DIR holds corpus.jsonl, queries.jsonl and qrels/SPLIT.tsv. The corpus is
    ingested (incrementally) into the index eval-<dataset>, every query is sent once
    (BM25 and kNN candidates together), and bm25, dense, hybrid and rrf are fused from
    those same candidates; tfidf is a whole-document scikit-learn baseline.
    """
    from esrag.quality.evaluation import (
        METRICS,
        build_runs,
        evaluate_run,
        format_trec_run,
        parse_methods,
        percentile,
        retrieve_candidates,
    )

    chosen = parse_methods(methods)
    show = progress_flag(progress)
    with _prepared(dataset_dir, split, show, options) as ctx:
        settings, dataset = ctx.settings, ctx.dataset
        store_methods = [m for m in chosen if m != "tfidf"]
        retrieval = None
        if store_methods:
            retrieval = retrieve_candidates(dataset.queries, ctx.engine.searcher, candidates, show)
        runs = build_runs(dataset, retrieval.candidates if retrieval else {}, chosen, settings.alpha,
                          settings.normalization, settings.rrf_k, doc_weight=settings.doc_weight)
        results = {m: evaluate_run(dataset.qrels, runs[m], METRICS) for m in chosen}
        report = ctx.report
        params = build_params(settings, ctx.engine)
    if runs_dir is not None:
        runs_dir.mkdir(parents=True, exist_ok=True)
        for m, run in runs.items():
            (runs_dir / f"{m}.trec").write_text(format_trec_run(run, f"esrag-{m}"), encoding="utf-8")
    out = {
        "dataset": dataset.name,
        "store": settings.store_name,
        "index": settings.index,
        "split": split,
        "queries": len(dataset.queries),
        "documents": len(dataset.documents),
        "params": {"alpha": settings.alpha, "normalization": settings.normalization, "rrf_k": settings.rrf_k,
                   "doc_weight": settings.doc_weight, "candidates": candidates, **params},
        "results": results,
        "latency_ms": None if retrieval is None else {
            "query_embedding_mean": retrieval.embed_ms,
            "store_p50": percentile(retrieval.store_ms, 50),
            "store_p95": percentile(retrieval.store_ms, 95),
        },
        "ingest": report.to_dict(),
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"{dataset.name} ({split}): {len(dataset.queries)} queries, {len(dataset.documents)} "
               f"documents, {settings.store_name} index {settings.index!r}")
    click.echo(f"hybrid: linear {settings.normalization} alpha={settings.alpha}; rrf: k={settings.rrf_k}; "
               f"section weight {settings.doc_weight} (every method)")
    click.echo(_describe_build(out["params"]))
    click.echo("")
    click.echo(f"{'method':<8}" + "".join(f"{METRIC_HEADERS[m]:>10}" for m in METRICS))
    for m in chosen:
        click.echo(f"{m:<8}" + "".join(f"{results[m][k]:>10.4f}" for k in METRICS))
    if retrieval is not None:
        click.echo(f"\nstore round trip p50 {percentile(retrieval.store_ms, 50):.1f} ms, "
                   f"p95 {percentile(retrieval.store_ms, 95):.1f} ms; query embedding "
                   f"{retrieval.embed_ms:.1f} ms/query (batched)")
    if runs_dir is not None:
        click.echo(f"runs written to {runs_dir}/")


@click.command("tune")
@common_eval_options
@click.option("--step", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.1, show_default=True,
              help="Alpha step of the linear-fusion sweep.")
@click.option("--rrf-ks", default="1,10,20,40,60,100", show_default=True, metavar="K[,K...]",
              help="RRF k values to try.")
@click.option("--doc-weights", default="0,0.25,0.5,0.75,1", show_default=True, metavar="W[,W...]",
              help="Section weights to try (see --doc-weight of `esrag search`), each with every fusion.")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="Cross-validation folds over queries.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fold split.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the tuning curve as a PNG.")
@click.option("--save", is_flag=True,
              help="Write the best fusion, alpha, normalisation and section weight to esrag.toml.")
def tune(dataset_dir: Path, split: str, candidates: int, as_json: bool, progress: bool | None, step: float,
         rrf_ks: str, doc_weights: str, folds: int, seed: int, plot_path: Path | None, save: bool,
         **options: Any) -> None:
    """Sweep fusion settings on a BEIR-layout dataset and pick the best by nDCG@10.

    \b
    Linear fusion at alpha = 0, STEP, ..., 1 with each normaliser (minmax, zscore, none),
    and RRF at each k, each at every section weight. Candidates are fetched once per query and every setting is
    re-fused in the client. The best setting is chosen on all queries (and saved with
    --save); k-fold cross-validation over queries estimates how well choosing that way
    does on queries it was not chosen on.
    """
    from esrag.quality.evaluation import retrieve_candidates
    from esrag.quality.tuning import plot_curve, score_settings, sweep_settings, tune_to_dict
    from esrag.quality.tuning import tune as run_tune

    ks = _comma_separated(rrf_ks, int, "--rrf-ks", "integers")
    weights = _comma_separated(doc_weights, lambda w: check_doc_weight(float(w)), "--doc-weights",
                               "weights in [0, 1]")
    if not weights:
        raise click.BadParameter("give at least one weight", param_hint="--doc-weights")
    grid = sweep_settings(step, NORMALIZATIONS, ks, weights)
    show = progress_flag(progress)
    with _prepared(dataset_dir, split, show, options) as ctx:
        settings, dataset = ctx.settings, ctx.dataset
        if not 2 <= folds <= len(dataset.queries):
            raise ConfigError(f"--folds must be between 2 and the number of queries ({len(dataset.queries)})")
        retrieval = retrieve_candidates(dataset.queries, ctx.engine.searcher, candidates, show)
        params = build_params(settings, ctx.engine)
    scores = score_settings(dataset.qrels, retrieval.candidates, grid)
    result = run_tune(scores, folds, seed)
    saved = None
    if save:
        saved = save_settings(result.best.config_updates())
    if plot_path is not None:
        plot_curve(result, plot_path, dataset.name)
    out = {"dataset": dataset.name, "store": settings.store_name, "index": settings.index,
           "queries": len(dataset.queries), "params": {"candidates": candidates, **params},
           **tune_to_dict(result),
           "saved": str(saved) if saved else None, "plot": str(plot_path) if plot_path else None}
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    _print_tune(result, dataset.name, len(dataset.queries))
    click.echo(_describe_build(params))
    if plot_path is not None:
        click.echo(f"plot written to {plot_path}")
    if saved is not None:
        click.echo(f"saved {result.best.config_updates()} to {saved}")


def _comma_separated(value: str, convert: Callable[[str], T], flag: str, what: str) -> list[T]:
    """The non-blank items of ``value``, converted; a usage error naming ``flag`` when one does not convert
    (``convert`` raises ValueError, which a ConfigError is)."""
    try:
        return [convert(v) for v in value.split(",") if v.strip()]
    except ValueError as e:
        raise click.BadParameter(f"expected comma-separated {what}, got {value!r}", param_hint=flag) from e


def build_params(settings: Any, engine: Engine) -> dict[str, Any]:
    """What made the index that an evaluation measured, as the index records it: model, chunking, embed
    template, analyzer."""
    meta = engine.store.read_meta()
    return {"model": settings.model, **(meta.build_params() if meta else {})}


def _describe_build(params: dict[str, Any]) -> str:
    template = "off" if params["embed_template"] == PLAIN else repr(params["embed_template"])
    return (f"index: {params['model']}, chunks of {params['chunk_size']} tokens (overlap "
            f"{params['chunk_overlap']}), embed template {template}, analyzer {params['analyzer']}")


def _print_tune(result: TuneResult, name: str, n_queries: int) -> None:
    from esrag.quality.tuning import at_doc_weight, best_per_doc_weight

    m = result.metric
    curve = at_doc_weight(result)
    linear = [s for s in curve if s.fusion == "linear"]
    norms = list(dict.fromkeys(s.normalization for s in linear))
    alphas = sorted({s.alpha for s in linear})
    by_key = {(s.normalization, s.alpha): v for s, v in curve.items() if s.fusion == "linear"}
    click.echo(f"{name}: {m} over {n_queries} queries\n")
    per_weight = best_per_doc_weight(result)
    if len(per_weight) > 1:
        click.echo("section weight (best setting at each)")
        click.echo(f"{'weight':>6}{m:>10}  setting")
        for w, (s, v) in sorted(per_weight.items()):
            click.echo(f"{w:>6.2f}{v:>10.4f}  {s.label}")
        click.echo("")
    click.echo(f"linear fusion at section weight {result.best.doc_weight:g}")
    click.echo(f"{'alpha':>6}" + "".join(f"{n:>10}" for n in norms))
    for a in alphas:
        click.echo(f"{a:>6.2f}" + "".join(f"{by_key[(n, a)]:>10.4f}" for n in norms))
    rrf = sorted((s for s in curve if s.fusion == "rrf"), key=lambda s: s.rrf_k)
    if rrf:
        click.echo(f"\nrrf (equal weights) at section weight {result.best.doc_weight:g}")
        click.echo(f"{'k':>6}{m:>10}")
        for s in rrf:
            click.echo(f"{s.rrf_k:>6}{curve[s]:>10.4f}")
    click.echo(f"\nbest on all queries: {result.best.label}: {m} {result.best_score:.4f} (optimistic: chosen "
               "and scored on the same queries)")
    click.echo(f"{result.folds}-fold cross-validation (seed {result.seed}): held-out {m} "
               f"{result.cv.heldout_mean:.4f}")
    for f in result.cv.folds:
        click.echo(f"  fold {f.index}: chose {f.chosen.label} on {len(f.train_qids)} queries -> "
                   f"{f.test_score:.4f} on {len(f.test_qids)} held-out")
