"""Fusion tuning: sweep alpha x normalisation (linear) and k (RRF), each at every section weight, over fixed
candidates, pick by nDCG@10 with k-fold cross-validation over queries. Pure, apart from ``plot_curve``.

Candidates are retrieved once per query (``esrag.quality.evaluation.retrieve_candidates``); every setting is then
re-fused client-side, so a sweep costs no further store round trips.

Cross-validation: queries are split into ``k`` seeded folds. For each fold, the setting with the best mean
nDCG@10 on the *other* folds is chosen and scored on the held-out fold. The reported figure is the mean over
all queries of their held-out score, so no query is scored with parameters chosen on it. The setting chosen
on all queries (what ``--save`` writes) is reported too; its all-query score is optimistic by construction.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esrag.config import NORMALIZATIONS, check_doc_weight
from esrag.errors import ConfigError, MissingDependencyError
from esrag.quality.evaluation import RUN_DEPTH, QrelsDict, Ranking, doc_ranking, evaluate_per_query
from esrag.retrieval.search import fuse
from esrag.types import SearchResponse

DEFAULT_RRF_KS = (1, 10, 20, 40, 60, 100)
DEFAULT_DOC_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
TUNE_METRIC = "ndcg@10"


@dataclass(frozen=True)
class FusionSetting:
    """One point of the sweep. RRF is swept at alpha 0.5 (equal weights); ``normalization`` only matters for
    linear fusion and ``rrf_k`` only for RRF; ``doc_weight`` for both
    (esrag.retrieval.fusion.with_document_evidence)."""

    fusion: str
    alpha: float
    normalization: str = "minmax"
    rrf_k: int = 60
    doc_weight: float = 0.0

    @property
    def label(self) -> str:
        weight = f" doc={self.doc_weight:g}"
        if self.fusion == "rrf":
            return f"rrf k={self.rrf_k}{weight}"
        return f"linear {self.normalization} alpha={self.alpha:.2f}{weight}"

    def config_updates(self) -> dict[str, Any]:
        """What ``esrag tune --save`` writes to esrag.toml for this setting."""
        if self.fusion == "rrf":
            return {"fusion": "rrf", "alpha": self.alpha, "rrf_k": self.rrf_k, "doc_weight": self.doc_weight}
        return {"fusion": "linear", "alpha": self.alpha, "normalization": self.normalization,
                "doc_weight": self.doc_weight}

    def to_dict(self) -> dict[str, Any]:
        return {"fusion": self.fusion, "alpha": self.alpha, "normalization": self.normalization,
                "rrf_k": self.rrf_k, "doc_weight": self.doc_weight}


def alpha_grid(step: float) -> list[float]:
    """0, step, 2*step, ... up to 1 inclusive (1 is added when step does not divide 1)."""
    if not 0.0 < step <= 1.0:
        raise ConfigError(f"step must be in (0, 1], got {step}")
    n = int(1.0 / step + 1e-9)
    alphas = [round(i * step, 6) for i in range(n + 1)]
    if alphas[-1] < 1.0:
        alphas.append(1.0)
    return alphas


def sweep_settings(
    step: float = 0.1,
    normalizations: Sequence[str] = NORMALIZATIONS,
    rrf_ks: Sequence[int] = DEFAULT_RRF_KS,
    doc_weights: Sequence[float] = DEFAULT_DOC_WEIGHTS,
) -> list[FusionSetting]:
    """For each section weight: linear fusion at every alpha of ``alpha_grid(step)`` for each normaliser,
    then RRF at each k."""
    if any(k < 1 for k in rrf_ks):
        raise ConfigError(f"RRF k values must be at least 1, got {list(rrf_ks)}")
    if not doc_weights:
        raise ConfigError("give at least one section weight")
    for w in doc_weights:
        check_doc_weight(w)
    out = []
    for w in dict.fromkeys(doc_weights):
        out += [FusionSetting("linear", a, n, doc_weight=w) for n in normalizations for a in alpha_grid(step)]
        out += [FusionSetting("rrf", 0.5, "minmax", k, doc_weight=w) for k in rrf_ks]
    return out


def fused_ranking(response: SearchResponse, setting: FusionSetting, depth: int = RUN_DEPTH) -> Ranking:
    """Document ranking of one query's candidates under ``setting`` (best chunk per document)."""
    hits = fuse(response.bm25, response.dense, "hybrid", setting.fusion, setting.alpha,
                setting.normalization, setting.rrf_k, doc_weight=setting.doc_weight,
                candidates=response.candidates)
    return doc_ranking(((h.doc_id, h.score) for h in hits), depth)


def score_settings(
    qrels: QrelsDict,
    candidates: Mapping[str, SearchResponse],
    settings: Sequence[FusionSetting],
    metric: str = TUNE_METRIC,
) -> dict[FusionSetting, dict[str, float]]:
    """setting -> query id -> ``metric``, for every judged query."""
    out: dict[FusionSetting, dict[str, float]] = {}
    for setting in settings:
        run = {q: fused_ranking(resp, setting) for q, resp in candidates.items()}
        out[setting] = evaluate_per_query(qrels, run, [metric])[metric]
    return out


def kfold_split(qids: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Split query ids into ``k`` disjoint folds of near-equal size, shuffled with ``seed``.

    Deterministic for a given set of ids, whatever their input order. Needs 2 <= k <= len(qids).
    """
    ids = sorted(set(qids))
    if not 2 <= k <= len(ids):
        raise ConfigError(f"need 2 <= folds <= number of queries ({len(ids)}), got {k}")
    random.Random(seed).shuffle(ids)
    return [ids[i::k] for i in range(k)]


def mean_score(scores: Mapping[str, float], qids: Sequence[str]) -> float:
    return float(np.mean([scores[q] for q in qids])) if qids else 0.0


def select_best(scores: Mapping[FusionSetting, Mapping[str, float]], qids: Sequence[str]) -> FusionSetting:
    """The setting with the highest mean score over ``qids``; ties go to the earliest in ``scores``."""
    if not scores:
        raise ConfigError("no settings to choose from")
    best, best_score = None, -np.inf
    for setting, per_query in scores.items():
        s = mean_score(per_query, qids)
        if s > best_score + 1e-12:
            best, best_score = setting, s
    assert best is not None
    return best


Selector = Callable[[Mapping[FusionSetting, Mapping[str, float]], Sequence[str]], FusionSetting]


@dataclass(frozen=True)
class FoldResult:
    """One fold: the setting chosen on ``train_qids`` and its mean score on the held-out ``test_qids``."""

    index: int
    train_qids: tuple[str, ...]
    test_qids: tuple[str, ...]
    chosen: FusionSetting
    test_score: float


@dataclass(frozen=True)
class CrossValidation:
    """``heldout_mean``: mean over all queries of their held-out score (each query scored once, with
    parameters chosen without it)."""

    folds: tuple[FoldResult, ...]
    heldout_mean: float


def cross_validate(
    scores: Mapping[FusionSetting, Mapping[str, float]],
    folds: Sequence[Sequence[str]],
    select: Selector = select_best,
) -> CrossValidation:
    """For each fold, choose a setting with ``select`` on the other folds' queries only, then score the
    choice on the fold. ``folds`` must be disjoint."""
    results = []
    heldout: list[float] = []
    for i, test in enumerate(folds):
        train = [q for j, fold in enumerate(folds) if j != i for q in fold]
        if set(train) & set(test):
            raise ConfigError("cross-validation folds overlap")
        chosen = select(scores, train)
        per_query = scores[chosen]
        heldout.extend(per_query[q] for q in test)
        results.append(FoldResult(i, tuple(train), tuple(test), chosen, mean_score(per_query, list(test))))
    return CrossValidation(tuple(results), float(np.mean(heldout)) if heldout else 0.0)


@dataclass(frozen=True)
class TuneResult:
    """The curve (mean ``metric`` per setting over all queries), the best setting on all queries, and the
    cross-validated estimate."""

    metric: str
    curve: dict[FusionSetting, float]
    best: FusionSetting
    best_score: float
    cv: CrossValidation
    folds: int
    seed: int


def tune(
    scores: Mapping[FusionSetting, Mapping[str, float]], folds: int = 5, seed: int = 0,
    metric: str = TUNE_METRIC,
) -> TuneResult:
    """Curve, best-on-all-queries and k-fold cross-validation from per-query scores of each setting."""
    if not scores:
        raise ConfigError("no settings to tune")
    qids = sorted(next(iter(scores.values())))
    curve = {s: mean_score(per_query, qids) for s, per_query in scores.items()}
    best = select_best(scores, qids)
    cv = cross_validate(scores, kfold_split(qids, folds, seed))
    return TuneResult(metric, curve, best, curve[best], cv, folds, seed)


def tune_to_dict(result: TuneResult) -> dict[str, Any]:
    """JSON-ready summary of a TuneResult."""
    m = result.metric
    return {
        "metric": m,
        "curve": [{**s.to_dict(), m: v} for s, v in result.curve.items()],
        "best": {**result.best.to_dict(), m: result.best_score},
        "cv": {
            "folds": result.folds,
            "seed": result.seed,
            f"heldout_{m}": result.cv.heldout_mean,
            "per_fold": [{"fold": f.index, "chosen": f.chosen.to_dict(), f"test_{m}": f.test_score,
                          "test_queries": len(f.test_qids)} for f in result.cv.folds],
        },
    }


def at_doc_weight(result: TuneResult, doc_weight: float | None = None) -> dict[FusionSetting, float]:
    """The curve at one section weight (the best setting's when None), as the tables and plot show it."""
    w = result.best.doc_weight if doc_weight is None else doc_weight
    return {s: v for s, v in result.curve.items() if s.doc_weight == w}


def best_per_doc_weight(result: TuneResult) -> dict[float, tuple[FusionSetting, float]]:
    """section weight -> the best setting at that weight and its score (ties: the earliest in the curve)."""
    out: dict[float, tuple[FusionSetting, float]] = {}
    for s, v in result.curve.items():
        if s.doc_weight not in out or v > out[s.doc_weight][1] + 1e-12:
            out[s.doc_weight] = (s, v)
    return out


def plot_curve(result: TuneResult, path: str | Path, title: str = "") -> Path:
    """Write a PNG at the best setting's section weight: the metric against alpha for each normaliser (left)
    and against k for RRF (right)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise MissingDependencyError("matplotlib", "eval", "--plot") from e
    curve = at_doc_weight(result)
    linear = [s for s in curve if s.fusion == "linear"]
    rrf = sorted((s for s in curve if s.fusion == "rrf"), key=lambda s: s.rrf_k)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]}, sharey=True)
    for norm in dict.fromkeys(s.normalization for s in linear):
        pts = sorted((s.alpha, curve[s]) for s in linear if s.normalization == norm)
        ax1.plot([a for a, _ in pts], [v for _, v in pts], marker="o", label=norm)
    ax1.set_xlabel("alpha (0 = BM25, 1 = dense)")
    ax1.set_ylabel(result.metric)
    ax1.set_title(f"linear fusion, section weight {result.best.doc_weight:g}")
    ax1.grid(alpha=0.3)
    ax1.legend(title="normalisation")
    if rrf:
        ax2.plot([str(s.rrf_k) for s in rrf], [curve[s] for s in rrf], marker="o", color="C3")
    ax2.set_xlabel("k")
    ax2.set_title("RRF (equal weights)")
    ax2.grid(alpha=0.3)
    best = result.best
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}best {best.label} ({result.best_score:.3f}); "
                 f"{result.folds}-fold CV held-out {result.cv.heldout_mean:.3f}")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
