"""Before/after evaluation of a fine-tuned embedding model, and K-fold cross-validation of fine-tuning.

A model is measured the way ``esrag eval`` measures one: the dataset's corpus is ingested into an index of
the configured store (chunked, embedded), every held-out query is sent once, and ``dense`` and ``hybrid``
(the configured fusion) are scored by nDCG@10 at the document level. The base model's index is the one
``esrag eval`` uses (``eval-<dataset>...``, kept: a second run embeds nothing); a fine-tuned model's index
is named after the model directory and dropped once measured.

Cross-validation (``cross_validate``): the judged queries are split into K folds (those of ``esrag tune``);
for each fold a model is trained on the pairs of the other folds' queries (plus any pairs that come from no
query: heading pairs, another split's) and measured on the fold's queries only. Each query is thus scored
once, by a model that never saw it; the gain is the mean over queries, and its spread the standard
deviation of the per-fold gains. When no training pair comes from a judged query, one model serves every
fold (training would be the same K times).

The top of the module (``summarize``) is pure; the rest does I/O.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from esrag.errors import BulkWriteError
from esrag.quality.finetune_pairs import Pair, PassageOf, check_disjoint, indexed_passage, kfolds

if TYPE_CHECKING:
    from esrag.config import Settings
    from esrag.quality.evaluation import BeirDataset
    from esrag.quality.finetune import TrainConfig, TrainReport

#: what before/after compares: the kNN side alone, and the configured hybrid
METHODS = ("dense", "hybrid")
METRIC = "ndcg@10"

#: method -> query id -> nDCG@10
PerQuery = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Fold:
    """One fold: the queries trained on and held out, the model's per-query scores on the held-out ones,
    and its training report."""

    index: int
    train_qids: tuple[str, ...]
    heldout_qids: tuple[str, ...]
    tuned: PerQuery
    report: TrainReport


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def summarize(base: PerQuery, folds: Sequence[tuple[Sequence[str], PerQuery]]) -> dict[str, Any]:
    """method -> {base, tuned, gain (means over every held-out query, each scored once), per_fold: [{base,
    tuned, gain, queries}], gain_std (the standard deviation of the per-fold gains, 0 for one fold)}.

    ``base``: the base model's scores of every query; ``folds``: (held-out query ids, the fold model's
    scores of them). A held-out query missing from either side scores 0 there."""
    out: dict[str, Any] = {}
    for m in METHODS:
        before: list[float] = []
        after: list[float] = []
        per_fold = []
        for qids, tuned in folds:
            b = [base.get(m, {}).get(q, 0.0) for q in qids]
            a = [tuned.get(m, {}).get(q, 0.0) for q in qids]
            before += b
            after += a
            per_fold.append({"base": _mean(b), "tuned": _mean(a), "gain": _mean(a) - _mean(b),
                             "queries": len(qids)})
        gains = [f["gain"] for f in per_fold]
        out[m] = {"base": _mean(before), "tuned": _mean(after), "gain": _mean(after) - _mean(before),
                  "gain_std": float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0, "per_fold": per_fold}
    return out


# -- I/O ---------------------------------------------------------------------------------------------------


def tuned_index_name(base_index: str, model_dir: Path) -> str:
    """The throw-away index a fine-tuned model is measured in: the base index's name, ``-ft-`` and a hash
    of the model directory's absolute path and provenance (two models never share one)."""
    from esrag.types import sha256_hex

    prov = model_dir / "esrag-finetune.json"
    stamp = prov.read_text(encoding="utf-8") if prov.is_file() else ""
    return f"{base_index}-ft-{sha256_hex(str(model_dir.resolve()), stamp)[:10]}"


def dense_cosines(response: Any) -> dict[str, float]:
    """Document id -> the cosine of the query and the document's best chunk, from one query's dense hits
    (scored as Elasticsearch scores cosine: ``(1 + cos) / 2``)."""
    out: dict[str, float] = {}
    for hit in response.dense:
        c = 2.0 * float(hit.score) - 1.0
        if c > out.get(hit.doc_id, -2.0):
            out[hit.doc_id] = c
    return out


def score_model(
    dataset: BeirDataset,
    settings: Settings,
    qids: Sequence[str],
    candidates: int = 300,
    progress: bool = False,
    drop: bool = False,
    log: Callable[[str], None] | None = None,
    cosines: dict[str, dict[str, float]] | None = None,
) -> PerQuery:
    """Ingest ``dataset``'s corpus with ``settings`` (its model and index) and score the queries ``qids``:
    method -> query id -> nDCG@10. With ``drop`` the index is deleted afterwards. ``cosines``, when given,
    receives each query's ``dense_cosines`` (what hard negatives are mined from)."""
    from esrag.engine import Engine
    from esrag.quality.evaluation import evaluate_per_query, method_ranking, retrieve_candidates

    engine = Engine(settings)
    engine.check_plugins()
    try:
        if log:
            log(f"indexing {len(dataset.documents)} documents with {settings.model} into {settings.index!r}")
        report = engine.ingest_documents(dataset.documents, total=len(dataset.documents), progress=progress)
        if not report.ok:
            raise BulkWriteError(f"{len(report.errors)} chunks failed to write; first: {report.errors[0].reason}",
                                 tuple(report.errors))
        queries = {q: dataset.queries[q] for q in qids}
        qrels = {q: dataset.qrels[q] for q in qids}
        def keep(qid: str, response: Any) -> None:
            if cosines is not None:
                cosines[qid] = dense_cosines(response)

        retrieval = retrieve_candidates(queries, engine.searcher, candidates, progress, on_query=keep)
        out: PerQuery = {}
        for m in METHODS:
            run = {q: method_ranking(resp, m, settings.alpha, settings.normalization, settings.rrf_k,
                                     doc_weight=settings.doc_weight)
                   for q, resp in retrieval.candidates.items()}
            out[m] = evaluate_per_query(qrels, run, [METRIC])[METRIC]
        return out
    finally:
        try:
            if drop:
                engine.drop()
        finally:
            engine.close()


def passage_reader(settings: Settings) -> PassageOf:
    """``indexed_passage`` for the index ``settings`` describe: its chunker (the embedder's tokenizer, chunk
    size and overlap) and its embed template, so that training pairs hold what that index embeds. Loads
    the model's tokenizer; touches no store."""
    from esrag.engine import Engine
    from esrag.ingest.context import ContextTemplate
    from esrag.ingest.pipeline import make_chunker

    return indexed_passage(make_chunker(Engine(settings).embedder, settings), ContextTemplate(settings.embed_template))


def base_settings(settings: Settings, dataset_name: str, index: str | None = None) -> Settings:
    """``settings`` with ``index``, or else the index ``esrag eval`` uses for this dataset and model."""
    from esrag.quality.evaluation import eval_index_name

    return settings.replace(index=index or eval_index_name(dataset_name, settings.model, settings.chunk_size,
                                                  settings.chunk_overlap, settings.embed_template))


def score_tuned(dataset: BeirDataset, settings: Settings, model_dir: Path, qids: Sequence[str],
                candidates: int = 300, progress: bool = False,
                log: Callable[[str], None] | None = None) -> PerQuery:
    """``score_model`` for a fine-tuned model directory, in a throw-away index (dropped afterwards)."""
    tuned = settings.replace(model=str(model_dir.resolve()),
                             index=tuned_index_name(settings.index, model_dir))
    return score_model(dataset, tuned, qids, candidates, progress, drop=True, log=log)


def cross_validate(
    dataset: BeirDataset,
    settings: Settings,
    config: TrainConfig,
    query_pairs: Callable[[Sequence[str]], list[Pair]],
    other_pairs: Sequence[Pair],
    k: int,
    seed: int = 0,
    base: PerQuery | None = None,
    candidates: int = 300,
    progress: bool = False,
    workdir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[PerQuery, list[Fold], dict[str, Any]]:
    """K-fold cross-validated fine-tuning (see the module docstring): (base scores, folds, summary).

    ``query_pairs(qids)`` gives the training pairs of judged queries; ``other_pairs`` those of no held-out
    query (checked by id and text for every fold: ConfigError on overlap). Fold models are written under
    ``workdir`` (a temporary directory when None) and removed once measured. ``settings`` names the base
    model's index (``base_settings``); ``base``: the base model's scores, when already measured."""
    from esrag.quality.finetune import train

    qids = sorted(dataset.queries)
    splits = kfolds(qids, k, seed)
    if base is None:
        base = score_model(dataset, settings, qids, candidates, progress, log=log)
    root = Path(tempfile.mkdtemp(prefix="esrag-finetune-cv-", dir=workdir))
    folds: list[Fold] = []
    try:
        fold_pairs = [[*query_pairs(train_qids), *other_pairs] for train_qids, _ in splits]
        for pairs, (_, heldout) in zip(fold_pairs, splits, strict=True):
            check_disjoint(pairs, {q: dataset.queries[q] for q in heldout})
        if not any(p.query_id for pairs in fold_pairs for p in pairs):  # the same pairs in every fold
            if log:
                log(f"training one model on {len(other_pairs)} pairs (no fold trains on judged queries)")
            report = train(list(other_pairs), config, root / "all", progress=progress)
            scores = score_tuned(dataset, settings, root / "all", qids, candidates, progress, log=log)
            for i, (train_qids, heldout) in enumerate(splits):
                tuned = {m: {q: scores[m][q] for q in heldout} for m in scores}
                folds.append(Fold(i, tuple(train_qids), tuple(heldout), tuned, report))
        else:
            for i, (train_qids, heldout) in enumerate(splits):
                model_dir = root / f"fold-{i}"
                if log:
                    log(f"fold {i + 1}/{k}: training on {len(fold_pairs[i])} pairs ({len(train_qids)} queries), "
                        f"{len(heldout)} held out")
                report = train(fold_pairs[i], config, model_dir, progress=progress,
                               provenance={"fold": i, "train_queries": list(train_qids)})
                tuned = score_tuned(dataset, settings, model_dir, heldout, candidates, progress, log=log)
                folds.append(Fold(i, tuple(train_qids), tuple(heldout), tuned, report))
                shutil.rmtree(model_dir, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    summary = summarize(base, [(f.heldout_qids, f.tuned) for f in folds])
    return base, folds, summary
