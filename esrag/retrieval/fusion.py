"""Score normalisation and fusion of a BM25 list and a kNN list. Pure functions, no I/O.

Linear fusion: ``hybrid = (1 - alpha) * norm(bm25) + alpha * norm(dense)`` over the union of both lists.
Each side is normalised against the score that stands for "this side did not return the chunk" (``floor``):

- ``minmax``: ``(s - floor) / (max - floor)``, in (0, 1]: the side's best hit gets 1;
- ``zscore``: ``(s - floor) / std``: how many standard deviations above "not returned" a hit stands;
- ``none``: raw scores; a chunk the side did not return counts 0, or the floor when scores reach 0.

So a chunk a side returned always gets more from that side than it would have had the side not returned it,
and a chunk a side did not return gets exactly 0 from it (``none``: see above). The floor and the
population whose ``std`` is taken:

- A side that returned **fewer candidates than it was asked for** returned every chunk it scores (in the
  filters' scope). For BM25 every other chunk then scores exactly 0 (it matches no query term): the floor
  is 0, and each chunk of the union that BM25 did not return enters the statistics with that 0. So the
  rarer a query's words, the more a BM25 match counts: a lone BM25 hit among M candidates stands
  ``M / sqrt(M - 1)`` standard deviations above the rest (about sqrt(M)); this is what makes an exact
  lookup (an error code, an id: a word found in one chunk) rank first.
- Otherwise (the list was cut at the number asked for, or a kNN list, whose scores have no natural zero)
  a chunk the side did not return scored at most its lowest score: the floor is one mean step below the
  lowest, ``min - (max - min) / (n - 1)`` (1 when all n scores are equal), entering the statistics once.

A lone candidate (one chunk returned by both sides) therefore scores 1 with ``minmax`` and 2 with
``zscore`` on each side, and so in the fusion: the two-point population of a hit and its floor.

Reciprocal rank fusion: ``sum_i w_i / (k + rank_i)`` with 1-based ranks, ``w = (1 - alpha, alpha) * 2``
so that alpha=0.5 gives the textbook unweighted RRF; a side that did not return a chunk adds nothing.

Section evidence (``doc_weight``, applied to each side's list before normalisation): a chunk's score
becomes ``(1 - w) * own + w * opening``, where ``opening`` is that side's score of the first chunk of the
chunk's section (``ScoredChunk.section``: the part of its document under one heading; the whole document
when it has no headings), or the side's lowest candidate score if that chunk is not among the candidates.
A chunk whose section is unknown (-1) is its own opening. Every chunk of a section moves by the same amount,
so the order of a section's chunks is kept; what changes is how sections compete. A chunk's own score alone
rewards a long section for having many chunks to match with; a section's opening chunk says what the
section is about, which is the evidence a whole-document ranker has (passage and document evidence
combined, as in Callan, SIGIR 1994). The figures behind the default are in docs/evaluation.md.

Ordering is total and reproducible: fused score descending, then the rank on the heavier side
(bm25 when alpha < 0.5, dense when alpha > 0.5, bm25 at 0.5), then the other side's rank, then id.
That tie-break is what makes alpha=0 reproduce the BM25 order exactly and alpha=1 the kNN order exactly,
even where normalisation maps several hits to the same value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from esrag.config import NORMALIZATIONS, check_alpha, check_doc_weight


class Fused(NamedTuple):
    id: str
    score: float
    bm25_score: float | None
    dense_score: float | None
    bm25_rank: int | None  # 1-based
    dense_rank: int | None
    bm25_norm: float
    dense_norm: float


class Normalized(NamedTuple):
    scores: list[float]
    #: what a chunk the side did not return gets: 0 (with ``none``, the floor when a score is 0 or below)
    absent: float


def floor_of(scores: Sequence[float], floor: float | None = None) -> float:
    """The score standing for "not returned": ``floor`` when known and below every score, else one mean
    step below the lowest score (1 below it when all are equal). 0 for an empty list."""
    if not scores:
        return 0.0 if floor is None else float(floor)
    lo, hi = min(scores), max(scores)
    if floor is not None and floor < lo:
        return float(floor)
    step = (hi - lo) / (len(scores) - 1) if hi > lo else 1.0
    return min(lo - step, math.nextafter(lo, -math.inf))  # strictly below, even where the step underflows


def normalize(scores: Sequence[float], method: str = "minmax", floor: float | None = None,
              absent: int = 1) -> Normalized:
    """Normalise one side's list of scores against the score standing for "not returned".

    ``floor`` is the exact score of every chunk the side did not return, when known (0 for a BM25 list
    shorter than the candidates asked for), else None (see ``floor_of``). ``absent`` is how many chunks of
    the union the side did not return; with a known floor each enters the zscore statistics at the floor,
    else the floor enters once (so does it when ``absent`` is 0). Empty in, empty out.
    """
    if method not in NORMALIZATIONS:
        msg = f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}"
        raise ValueError(msg)
    f = floor_of(scores, floor)
    if method == "none":
        return Normalized([float(s) for s in scores], 0.0 if not scores or min(scores) > 0.0 else f)
    if not scores:
        return Normalized([], 0.0)
    if method == "minmax":
        span = max(scores) - f
        return Normalized([(s - f) / span for s in scores], 0.0)
    copies = max(absent, 1) if floor is not None and f == floor else 1
    n = len(scores) + copies
    mean = (sum(scores) + copies * f) / n
    var = (sum((s - mean) ** 2 for s in scores) + copies * (f - mean) ** 2) / n
    std = math.sqrt(var)
    if not std > 0.0:  # the spread underflows (subnormal scores): every hit stands above the floor alike
        return Normalized([1.0] * len(scores), 0.0)
    return Normalized([(s - f) / std for s in scores], 0.0)


def with_document_evidence(
    chunks: Sequence[tuple[str, str, int, int, float]], weight: float
) -> list[tuple[str, float]]:
    """(id, doc_id, chunk_index, section, score) best first -> (id, weighted score) best first.

    ``weight`` 0 returns the scores unchanged (same order). Equal weighted scores keep the input order.
    """
    check_doc_weight(weight)
    if weight == 0.0 or not chunks:
        return [(c[0], float(c[4])) for c in chunks]
    floor = min(float(c[4]) for c in chunks)
    opening: dict[tuple[str, int], float] = {}
    for _, doc_id, chunk_index, section, score in chunks:
        if chunk_index == section:
            opening.setdefault((doc_id, section), float(score))
    own = 1.0 - weight
    weighted = [(i, own * float(s) + weight * (s if sec < 0 else opening.get((d, sec), floor)))
                for i, d, _, sec, s in chunks]
    return sorted(weighted, key=lambda p: -p[1])  # stable: equal scores keep the input order


def ranked(hits: Sequence[tuple[str, float]]) -> dict[str, tuple[int, float]]:
    """id -> (1-based rank, score). If an id repeats, its first (best) occurrence wins."""
    out: dict[str, tuple[int, float]] = {}
    for rank, (doc, score) in enumerate(hits, start=1):
        out.setdefault(doc, (rank, float(score)))
    return out


def _sort(fused: list[Fused], alpha: float) -> list[Fused]:
    inf = math.inf
    dense_first = alpha > 0.5

    def key(f: Fused) -> tuple[float, float, float, str]:
        sr = f.bm25_rank if f.bm25_rank is not None else inf
        dr = f.dense_rank if f.dense_rank is not None else inf
        first, second = (dr, sr) if dense_first else (sr, dr)
        return (-f.score, first, second, f.id)

    return sorted(fused, key=key)


def linear_fusion(
    bm25: Sequence[tuple[str, float]],
    dense: Sequence[tuple[str, float]],
    alpha: float,
    normalization: str = "minmax",
    bm25_floor: float | None = None,
    dense_floor: float | None = None,
) -> list[Fused]:
    """Fuse two ranked lists of (id, score), best first, with ``(1 - alpha) * bm25 + alpha * dense``.

    ``bm25_floor``/``dense_floor``: the exact score of every chunk that side did not return, when known
    (see ``normalize``); None when the side's list was cut."""
    check_alpha(alpha)
    s_ranked, d_ranked = ranked(bm25), ranked(dense)
    s_ids, d_ids = list(s_ranked), list(d_ranked)
    union = list(dict.fromkeys(s_ids + d_ids))
    s_side = normalize([s_ranked[i][1] for i in s_ids], normalization, bm25_floor, len(union) - len(s_ids))
    d_side = normalize([d_ranked[i][1] for i in d_ids], normalization, dense_floor, len(union) - len(d_ids))
    s_norm = dict(zip(s_ids, s_side.scores, strict=True))
    d_norm = dict(zip(d_ids, d_side.scores, strict=True))
    out = []
    for doc in union:
        sn, dn = s_norm.get(doc, s_side.absent), d_norm.get(doc, d_side.absent)
        s, d = s_ranked.get(doc), d_ranked.get(doc)
        out.append(Fused(
            id=doc,
            score=(1.0 - alpha) * sn + alpha * dn,
            bm25_score=s[1] if s else None,
            dense_score=d[1] if d else None,
            bm25_rank=s[0] if s else None,
            dense_rank=d[0] if d else None,
            bm25_norm=sn,
            dense_norm=dn,
        ))
    return _sort(out, alpha)


def rrf_fusion(
    bm25: Sequence[tuple[str, float]],
    dense: Sequence[tuple[str, float]],
    k: int = 60,
    alpha: float = 0.5,
) -> list[Fused]:
    """Reciprocal rank fusion with side weights ``2 * (1 - alpha)`` and ``2 * alpha``.

    ``bm25_norm``/``dense_norm`` of each result hold that side's RRF contribution.
    """
    check_alpha(alpha)
    if k < 1:
        msg = f"rrf k must be at least 1, got {k}"
        raise ValueError(msg)
    ws, wd = 2.0 * (1.0 - alpha), 2.0 * alpha
    s_ranked, d_ranked = ranked(bm25), ranked(dense)
    out = []
    for doc in dict.fromkeys(list(s_ranked) + list(d_ranked)):
        s, d = s_ranked.get(doc), d_ranked.get(doc)
        sc = ws / (k + s[0]) if s else 0.0
        dc = wd / (k + d[0]) if d else 0.0
        out.append(Fused(
            id=doc,
            score=sc + dc,
            bm25_score=s[1] if s else None,
            dense_score=d[1] if d else None,
            bm25_rank=s[0] if s else None,
            dense_rank=d[0] if d else None,
            bm25_norm=sc,
            dense_norm=dc,
        ))
    return _sort(out, alpha)
