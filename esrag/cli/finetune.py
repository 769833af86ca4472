"""``esrag finetune``: adapt the embedding model to a corpus; evaluate it before and after.

Thin: parse options, gather the pairs (esrag.quality.finetune_pairs), train (esrag.quality.finetune), measure
(esrag.quality.finetune_eval), print."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from esrag.cli.common import build_settings, chunk_options, fusion_options, model_options, progress_flag, store_options
from esrag.errors import ConfigError

if TYPE_CHECKING:
    from esrag.quality.evaluation import BeirDataset
    from esrag.quality.finetune_eval import PerQuery
    from esrag.quality.finetune_pairs import Pair, PassageOf
    from esrag.types import Document

PAIR_KINDS = ("qrels", "headings")


def _kinds(values: Sequence[str], has_qrels: bool) -> list[str]:
    asked = {v.strip().lower() for value in values for v in value.split(",") if v.strip()}
    unknown = asked - set(PAIR_KINDS)
    if unknown:
        raise click.BadParameter(f"unknown pair kind(s) {', '.join(sorted(unknown))}; choose from "
                                 f"{', '.join(PAIR_KINDS)}", param_hint="--pairs")
    if not asked:
        asked = {"qrels"} if has_qrels else {"headings"}
    return [k for k in PAIR_KINDS if k in asked]


def _documents_of(paths: Sequence[Path]) -> list[Document]:
    """The documents of files and directories, found and loaded as ``esrag ingest`` finds and loads them."""
    from esrag.sources.loaders import Skipped, discover_sources, iter_file
    from esrag.types import Document

    found, skipped = discover_sources([str(p) for p in paths])
    docs: list[Document] = []
    for source in found:
        for item in iter_file(source.path, {}, source.doc_id):
            if isinstance(item, Document):
                docs.append(item)
            elif isinstance(item, Skipped):
                skipped.append(item)
    for s in skipped[:5]:
        click.echo(f"skipped {s.path}: {s.reason}", err=True)
    return docs


def _index_heading_pairs(settings: Any) -> list[Pair]:
    """Heading pairs from the chunks of the configured index (its stored context names their headings)."""
    from esrag.engine import Engine
    from esrag.errors import IndexNotFoundError
    from esrag.ingest.context import ContextTemplate
    from esrag.quality.finetune_pairs import index_heading_pairs

    engine = Engine(settings)
    try:
        meta = engine.store.read_meta() if engine.store.exists() else None
        if meta is None:
            raise IndexNotFoundError(f"no index {settings.index!r} in the {settings.store_name} store to read "
                                     "headings from: give PATHS, or --qrels DATASET, or the --index that holds them")
        chunks = (ec.chunk for batch in engine.store.iter_chunks() for ec in batch)
        return index_heading_pairs(chunks, ContextTemplate(meta.embed_template))
    finally:
        engine.close()


def _train_split(root: Path, asked: str | None, eval_split: str) -> str | None:
    """The split whose judged pairs are trained on, when separate from the evaluated one: the one asked,
    else ``train`` when the dataset has one; None: part of ``eval_split``'s queries are held out."""
    if asked is not None:
        if asked == eval_split:
            raise ConfigError(f"the held-out split overlaps the training data: --train-split and --eval-split "
                              f"are both {asked!r}; leave --train-split out to hold out part of its queries")
        return asked
    return "train" if eval_split != "train" and (root / "qrels" / "train.tsv").is_file() else None


@click.command("finetune")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--output", "-o", "output", required=True, type=click.Path(path_type=Path),
              help="Directory to write the model to (new or empty; `--model DIR` then uses it).")
@click.option("--qrels", "qrels_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              metavar="DATASET", help="A BEIR-layout dataset with judged queries: its judged pairs (with --pairs "
                                      "qrels) and the held-out queries of the before/after evaluation.")
@click.option("--pairs", "pair_kinds", multiple=True, metavar="KIND[,KIND]",
              help="Training pairs: qrels (judged query -> document) and/or headings (a heading or title -> "
                   "its section: of PATHS, else of the dataset's corpus, else of the chunks of --index). "
                   "[default: qrels with --qrels, else headings]")
@click.option("--train-split", default=None, metavar="SPLIT",
              help="Qrels split to train on. [default: train if qrels/train.tsv exists, else part of "
                   "--eval-split's queries (--heldout)]")
@click.option("--eval-split", default="test", show_default=True, metavar="SPLIT", help="Qrels split to evaluate on.")
@click.option("--heldout", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=0.2,
              show_default=True, help="Fraction of --eval-split's queries held out, when it is also trained on.")
@click.option("--cv", "cv", type=click.IntRange(min=2), default=None, metavar="K",
              help="K-fold cross-validated gain (one model per fold), then the model on all queries.")
@click.option("--hard-negatives/--no-hard-negatives", default=True, show_default=True,
              help="Give each judged pair a hard negative: the document the base model ranks best for the query "
                   "among those not judged relevant and not almost as close as the answer (a likely unjudged "
                   "answer). Mined from the base model's index, which the evaluation builds anyway.")
@click.option("--max-pairs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Train on a seeded sample of at most N of the pairs that come from no judged query.")
@click.option("--epochs", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True)
@click.option("--lr", "learning_rate", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=2e-5,
              show_default=True, help="Peak learning rate (AdamW, linear decay).")
@click.option("--warmup", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.1, show_default=True,
              help="Fraction of the steps over which the learning rate rises from 0.")
@click.option("--train-batch-size", type=click.IntRange(min=2), default=32, show_default=True,
              help="Pairs per step: each anchor's negatives are the batch's other passages.")
@click.option("--mini-batch-size", type=click.IntRange(min=0), default=0, show_default=True,
              help="> 0: the cached loss (GradCache): the batch is embedded this many at a time, so a large "
                   "--train-batch-size fits in memory with all its in-batch negatives. 0: plain loss.")
@click.option("--max-seq-length", type=click.IntRange(8, 8192), default=256, show_default=True,
              help="Tokens of each text the model reads in training (256: a whole chunk of the default --chunk-size).")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto",
              show_default=True, help="auto: bf16 on CUDA where supported, else fp16; fp32 on the CPU.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of training, split and folds.")
@click.option("--save-steps", type=click.IntRange(min=1), default=50, show_default=True,
              help="Checkpoint every N steps (a killed run continues with --resume).")
@click.option("--max-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Stop after N steps (0: run the epochs).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --output from its last checkpoint.")
@click.option("--no-eval", is_flag=True, help="Train only: no before/after evaluation.")
@click.option("--candidates", type=click.IntRange(min=1), default=300, show_default=True,
              help="Chunks fetched per side and query in the evaluation.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars on stderr. [default: when stderr is a terminal]")
@fusion_options
@chunk_options
@model_options
@store_options
def finetune(paths: tuple[Path, ...], output: Path, qrels_dir: Path | None, pair_kinds: tuple[str, ...],
             train_split: str | None, eval_split: str, heldout: float, cv: int | None, hard_negatives: bool,
             max_pairs: int | None,
             epochs: float, learning_rate: float, warmup: float, train_batch_size: int, mini_batch_size: int,
             max_seq_length: int, precision: str, seed: int, save_steps: int, max_steps: int, resume: bool,
             no_eval: bool, candidates: int, as_json: bool, progress: bool | None, **options: Any) -> None:
    """Fine-tune the embedding model on (query, passage) pairs and write it to --output.

    \b
    esrag finetune --qrels DATASET -o models/ft        judged pairs; before/after on held-out queries
    esrag finetune docs/ --pairs headings -o models/ft  no labels: each heading -> its section
    esrag finetune --pairs headings -o models/ft        the same, from the chunks of the index
    esrag finetune --qrels DATASET --cv 5 -o models/ft  cross-validated gain, then the model on all

    Then `esrag eval DATASET --model models/ft` and `esrag reindex --model models/ft`.
    The model directory records how it was made in esrag-finetune.json.
    """
    from esrag.quality.evaluation import check_eval_dependencies, load_beir
    from esrag.quality.finetune import TrainConfig, check_output, write_provenance
    from esrag.quality.finetune_pairs import heading_pairs, subsample

    show = progress_flag(progress)
    kinds = _kinds(pair_kinds, qrels_dir is not None)
    check_output(output, resume)
    settings = build_settings(**{k: v for k, v in options.items() if k != "index"})
    config = TrainConfig(base_model=settings.model, epochs=epochs, learning_rate=learning_rate, warmup=warmup,
                         batch_size=train_batch_size, mini_batch_size=mini_batch_size, seed=seed,
                         max_seq_length=max_seq_length, precision=precision, device=settings.device,
                         save_steps=save_steps, max_steps=max_steps)
    if "qrels" in kinds and qrels_dir is None:
        raise click.UsageError("--pairs qrels needs --qrels DATASET")
    if cv and (qrels_dir is None or no_eval):
        raise click.UsageError("--cv needs --qrels DATASET (its judged queries are the folds) and evaluation")
    evaluate = qrels_dir is not None and not no_eval
    if evaluate:
        check_eval_dependencies(tfidf=False)
    dataset = load_beir(qrels_dir, eval_split) if qrels_dir is not None else None
    data: dict[str, Any] = {"pairs": kinds}
    other: list[Pair] = []
    if "headings" in kinds:
        if paths:
            docs = _documents_of(paths)
            data["heading_sources"] = [str(p.resolve()) for p in paths]
            found = heading_pairs(docs)
        elif dataset is not None:
            found = heading_pairs(list(dataset.documents))
            data["heading_sources"] = [str(qrels_dir.resolve() / "corpus.jsonl")] if qrels_dir else []
        else:
            source = settings if options.get("index") is None else settings.replace(index=options["index"])
            found = _index_heading_pairs(source)
            data["heading_sources"] = [f"index {source.index!r} ({source.store_name})"]
        other += subsample(found, max_pairs, seed)
        data["heading_pairs"] = len(other)
    elif paths:
        raise click.UsageError("PATHS are read for --pairs headings only")
    log = (lambda m: None) if as_json else (lambda m: click.echo(m, err=True))  # noqa: E731
    # hard negatives are mined from the base model's ranking of every judged query: its evaluation scores
    base_all: PerQuery | None = None
    cosines: dict[str, dict[str, float]] | None = None
    if hard_negatives and "qrels" in kinds and dataset is not None:
        from esrag.quality.finetune_eval import base_settings, score_model

        check_eval_dependencies(tfidf=False)
        cosines = {}
        base_all = score_model(dataset, base_settings(settings, dataset.name, options.get("index")),
                               sorted(dataset.queries), candidates, show, log=log, cosines=cosines)
    passage = None
    passages: dict[str, str] = {}  # document id -> passage: what hard negatives are drawn from
    if dataset is not None and "qrels" in kinds:  # judged pairs hold each document as the index embeds it
        from esrag.quality.finetune_eval import passage_reader
        from esrag.quality.finetune_pairs import document_passages

        passage = passage_reader(settings)
        data["passages"] = {"view": "first chunk, as embedded", "chunk_size": settings.chunk_size,
                            "embed_template": settings.embed_template}
        if cosines is not None:  # chunks the corpus once, for both kinds of judged pairs below
            passages = document_passages(dataset.documents, passage=passage)
    query_pairs = _query_pairs(dataset, kinds, cosines, data, passage, passages)
    if dataset is not None and qrels_dir is not None:
        data |= {"dataset": dataset.name, "dataset_path": str(qrels_dir.resolve()), "eval_split": eval_split}
        separate = _train_split(qrels_dir, train_split, eval_split)
        if separate is not None and "qrels" in kinds:
            other += _separate_pairs(qrels_dir, separate, dataset, settings, options.get("index"), cosines,
                                     candidates, show, log, passage, passages)
            data["train_split"] = separate
    else:
        separate = None
    if cv:
        assert dataset is not None
        _run_cv(dataset, settings, config, query_pairs, other, cv, seed, candidates, show, output, resume,
                data, as_json, options.get("index"), log, base_all)
        return
    heldout_qids: list[str] = []
    train_qids: list[str] = []
    if dataset is not None:
        from esrag.quality.finetune_pairs import split_heldout

        qids = sorted(dataset.queries)
        if not evaluate:
            train_qids = qids
        elif separate is not None or "qrels" not in kinds:  # no query of this split is trained on
            heldout_qids = qids
        else:
            train_qids, heldout_qids = split_heldout(qids, heldout, seed)
    pairs = [*query_pairs(train_qids), *other]
    data |= {"train_queries": train_qids, "heldout_queries": heldout_qids, "n_pairs": len(pairs)}
    if not evaluate:
        report = _train(pairs, config, output, resume, show, data, log)
        _print({"output": str(output), "training": report.to_dict(), "data": data}, as_json, None, None)
        return
    assert dataset is not None
    from esrag.quality.finetune_eval import base_settings, score_model, score_tuned, summarize
    from esrag.quality.finetune_pairs import check_disjoint, check_enough

    check_disjoint(pairs, {q: dataset.queries[q] for q in heldout_qids})
    check_enough(pairs, config.batch_size)
    base_cfg = base_settings(settings, dataset.name, options.get("index"))
    base = base_all if base_all is not None else score_model(dataset, base_cfg, heldout_qids, candidates, show,
                                                             log=log)
    report = _train(pairs, config, output, resume, show, data, log)
    tuned = score_tuned(dataset, base_cfg, output, heldout_qids, candidates, show, log=log)
    summary = summarize(base, [(heldout_qids, tuned)])
    evaluation = {"heldout_queries": len(heldout_qids), "metric": "ndcg@10", "results": summary}
    write_provenance(output, {"evaluation": evaluation})
    _print({"output": str(output), "training": report.to_dict(), "data": data, "evaluation": evaluation},
           as_json, dataset, settings)


def _query_pairs(dataset: BeirDataset | None, kinds: Sequence[str], cosines: dict[str, dict[str, float]] | None,
                 data: dict[str, Any], passage: PassageOf | None, passages: Mapping[str, str]) -> Any:
    """qids -> the judged pairs of those queries, each document read by ``passage``, each pair with a hard
    negative mined from ``cosines`` when given (the base model's ranking) among ``passages``; ``data``
    counts the pairs that got one."""
    from esrag.quality.finetune_pairs import qrels_pairs, with_hard_negatives

    docs = {d.doc_id: d for d in dataset.documents} if dataset is not None else {}

    def pairs(qids: Sequence[str]) -> list[Pair]:
        if dataset is None or "qrels" not in kinds or not qids:
            return []
        found = qrels_pairs(dataset.queries, dataset.qrels, docs, qids, passage=passage)
        if cosines is None:
            return found
        out, n = with_hard_negatives(found, cosines, dataset.qrels, passages)
        data["hard_negatives"] = {"mined": n, "pairs": len(out)}
        return out

    return pairs


def _separate_pairs(root: Path, split: str, dataset: BeirDataset, settings: Any, index: str | None,
                    cosines: dict[str, dict[str, float]] | None, candidates: int, show: bool,
                    log: Any, passage: PassageOf | None, passages: Mapping[str, str]) -> list[Pair]:
    """The judged pairs of another split of the dataset (against the evaluated split's corpus), with hard
    negatives mined from the base model's ranking of that split's queries when ``cosines`` is given; a
    ConfigError when that split judges a query of the evaluated one."""
    from esrag.quality.evaluation import load_beir
    from esrag.quality.finetune_eval import base_settings, score_model
    from esrag.quality.finetune_pairs import qrels_pairs, with_hard_negatives

    train = load_beir(root, split)
    shared = sorted(set(train.qrels) & set(dataset.qrels))
    if shared:
        raise ConfigError(f"the held-out split overlaps the training data: {len(shared)} queries of "
                          f"qrels/{dataset.split}.tsv are judged in qrels/{split}.tsv too (first: {shared[0]!r})")
    docs = {d.doc_id: d for d in dataset.documents}
    pairs = qrels_pairs(train.queries, train.qrels, docs, passage=passage)
    if cosines is None:
        return pairs
    # the same corpus, so the same base index: nothing is embedded again
    score_model(train, base_settings(settings, dataset.name, index), sorted(train.qrels), candidates, show,
                log=log, cosines=cosines)
    out, n = with_hard_negatives(pairs, cosines, train.qrels, passages)
    log(f"hard negatives for {n} of {len(out)} pairs of qrels/{split}.tsv")
    return out


def _train(pairs: list[Pair], config: Any, output: Path, resume: bool, show: bool, data: dict[str, Any],
           log: Any) -> Any:
    from esrag.quality.finetune import train

    log(f"training {config.base_model} on {len(pairs)} pairs ({config.loss}, batch {config.batch_size}"
        f"{f', mini-batch {config.mini_batch_size}' if config.mini_batch_size else ''}) into {output}")
    report = train(pairs, config, output, resume=resume, progress=show, provenance=data)
    if report.resumed_from:
        log(f"resumed from step {report.resumed_from}")
    first = report.losses[0][1] if report.losses else float("nan")
    last = report.losses[-1][1] if report.losses else float("nan")
    log(f"trained {report.steps} steps in {report.seconds:.1f}s ({report.precision} on {report.device}); "
        f"loss {first:.4f} -> {last:.4f}")
    return report


def _run_cv(dataset: BeirDataset, settings: Any, config: Any, query_pairs: Any, other: list[Pair], k: int,
            seed: int, candidates: int, show: bool, output: Path, resume: bool, data: dict[str, Any],
            as_json: bool, index: str | None, log: Any, base: PerQuery | None = None) -> None:
    from esrag.quality.finetune import write_provenance
    from esrag.quality.finetune_eval import base_settings, cross_validate

    base_cfg = base_settings(settings, dataset.name, index)
    _, folds, summary = cross_validate(dataset, base_cfg, config, query_pairs, other, k, seed, base=base,
                                       candidates=candidates, progress=show,
                                       workdir=output.resolve().parent, log=log)
    evaluation = {"cv": k, "seed": seed, "metric": "ndcg@10", "results": summary,
                  "fold_seconds": [f.report.seconds for f in folds]}
    qids = sorted(dataset.queries)
    pairs = [*query_pairs(qids), *other]
    data |= {"train_queries": qids, "heldout_queries": [], "n_pairs": len(pairs)}
    report = _train(pairs, config, output, resume, show, data, log)
    write_provenance(output, {"evaluation": evaluation})
    _print({"output": str(output), "training": report.to_dict(), "data": data, "evaluation": evaluation},
           as_json, dataset, settings)


def _print(out: dict[str, Any], as_json: bool, dataset: BeirDataset | None, settings: Any) -> None:
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(f"model written to {out['output']}")
    evaluation = out.get("evaluation")
    if not evaluation or dataset is None:
        return
    results = evaluation["results"]
    if "cv" in evaluation:
        click.echo(f"\n{dataset.name}: {evaluation['cv']}-fold cross-validation over {len(dataset.queries)} "
                   f"queries (each scored by a model that never trained on it), nDCG@10")
    else:
        click.echo(f"\n{dataset.name}: {evaluation['heldout_queries']} held-out queries of {dataset.split} "
                   "(never trained on), nDCG@10")
    click.echo(f"{'method':<8}{'base':>10}{'tuned':>10}{'gain':>10}" + ("   fold spread" if "cv" in evaluation
                                                                        else ""))
    for m, r in results.items():
        spread = f"   ±{r['gain_std']:.4f}" if "cv" in evaluation else ""
        click.echo(f"{m:<8}{r['base']:>10.4f}{r['tuned']:>10.4f}{r['gain']:>+10.4f}{spread}")
    if "cv" in evaluation:
        for m, r in results.items():
            gains = ", ".join(f"{f['gain']:+.4f}" for f in r["per_fold"])
            click.echo(f"  {m} gain per fold: {gains}")
        click.echo("the model written was then trained on every query (its own gain is not measured)")
    click.echo(f"hybrid: linear {settings.normalization} alpha={settings.alpha}, section weight "
               f"{settings.doc_weight}")
