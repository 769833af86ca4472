"""Score normalisation and fusion of a BM25 list and a kNN list. Pure functions, no I/O.

Linear fusion: ``hybrid = (1 - alpha) * norm(bm25) + alpha * norm(dense)`` over the union of both lists;
a chunk one side did not return counts 0 on that side -- or that side's lowest normalised score, if that is
below 0 (z-scores): a chunk a side did not return is never ranked above one it did. Normalisation is per
list:

- ``minmax``: ``(s - min) / (max - min)``; a list whose scores are all equal (or a single hit) maps to 1.0.
- ``zscore``: ``(s - mean) / std`` (population std); all-equal scores map to 0.0.
- ``none``: raw scores.

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
even where normalisation maps several hits to the same value (the minimum of each list maps to 0, like a
hit that side did not return).
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


def normalize(scores: Sequence[float], method: str = "minmax") -> list[float]:
    """Normalise one list of scores. Empty in, empty out."""
    if method == "none":
        return [float(s) for s in scores]
    if not scores:
        return []
    if method == "minmax":
        lo, hi = min(scores), max(scores)
        span = hi - lo
        if span <= 0.0:
            return [1.0] * len(scores)
        return [(s - lo) / span for s in scores]
    if method == "zscore":
        n = len(scores)
        mean = sum(scores) / n
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
        if std <= 0.0:
            return [0.0] * n
        return [(s - mean) / std for s in scores]
    msg = f"unknown normalization {method!r}; choose one of {', '.join(NORMALIZATIONS)}"
    raise ValueError(msg)


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
) -> list[Fused]:
    """Fuse two ranked lists of (id, score), best first, with ``(1 - alpha) * bm25 + alpha * dense``."""
    check_alpha(alpha)
    s_ranked, d_ranked = ranked(bm25), ranked(dense)
    s_ids, d_ids = list(s_ranked), list(d_ranked)
    s_norm = dict(zip(s_ids, normalize([s_ranked[i][1] for i in s_ids], normalization), strict=True))
    d_norm = dict(zip(d_ids, normalize([d_ranked[i][1] for i in d_ids], normalization), strict=True))
    s_floor = min(0.0, *s_norm.values()) if s_norm else 0.0
    d_floor = min(0.0, *d_norm.values()) if d_norm else 0.0
    out = []
    for doc in dict.fromkeys(s_ids + d_ids):
        sn, dn = s_norm.get(doc, s_floor), d_norm.get(doc, d_floor)
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
