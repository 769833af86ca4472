"""HybridSearcher: embed the query once, fetch BM25 and kNN candidates in one store round trip, fuse."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from esrag.config import Settings, check_alpha, check_doc_weight
from esrag.embedders import fingerprint
from esrag.embedders.base import Embedder
from esrag.errors import ConfigError, ModelMismatchError
from esrag.retrieval.fusion import Fused, linear_fusion, ranked, rrf_fusion, with_document_evidence
from esrag.stores.base import Store
from esrag.types import Filters, Hit, ScoredChunk, SearchRequest


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    request: SearchRequest
    mode: str
    fusion: str
    alpha: float
    normalization: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    doc_weight: float = 0.0
    #: BM25 returned fewer candidates than asked: every matching chunk, so every other one scores 0 there
    bm25_complete: bool = False
    #: the query is a lookup (``is_lookup``) and ran at the ``lookup_alpha`` setting
    lookup: bool = False


_IDENTIFIER = re.compile(r"[A-Za-z0-9_]+(?:(?:::|[.\-/])[A-Za-z0-9_]+)*")


def is_lookup(query: str) -> bool:
    """Whether ``query`` is an exact lookup: one identifier-like token (letters with a digit, ``_``, ``-``,
    ``.``, ``/`` or ``::`` in it: ``E1234``, ``PyErr_SetString``, ``os.path.join``, ``utf-8``) or one
    phrase in double quotes. Plain words and questions are not; nor are numbers alone (``3.11``)."""
    q = query.strip()
    if len(q) >= 3 and q[0] == q[-1] == '"' and '"' not in q[1:-1] and q[1:-1].strip():
        return True
    return (_IDENTIFIER.fullmatch(q) is not None and any(c.isalpha() for c in q)
            and any(c.isdigit() or c in "_-./:" for c in q))


def check_model(store: Store, embedder: Embedder) -> None:
    """Raise ModelMismatchError if the index was built with another model or dims than ``embedder``, or
    records a fingerprint that the embedder's does not match (esrag.embedders.fingerprint)."""
    meta = store.read_meta()
    if meta is None:
        return
    d = store.describe()
    if meta.model != embedder.model_name or meta.dims != embedder.dims:
        raise ModelMismatchError.of(f"{d.get('index', '')!r} at {d.get('location', '')}", meta.model, meta.dims,
                                    embedder.model_name, embedder.dims)
    fingerprint.check(meta, embedder, f"{d.get('index', '')!r} at {d.get('location', '')}")


def fuse(
    bm25: list[ScoredChunk],
    dense: list[ScoredChunk],
    mode: str,
    fusion: str,
    alpha: float,
    normalization: str,
    rrf_k: int,
    k: int | None = None,
    doc_weight: float = 0.0,
    candidates: int | None = None,
) -> list[Hit]:
    """Turn the two candidate lists into the best ``k`` Hits (all of them when k is None), best first.

    ``candidates`` is how many hits each side was asked for: a BM25 list shorter than that holds every
    chunk matching the query, so every other chunk's BM25 score is known to be 0 (``esrag.retrieval.fusion``).

    With ``doc_weight``, each side's scores are mixed with their sections' opening chunks' before the
    fusion (``esrag.retrieval.fusion.with_document_evidence``); the Hits still report each side's raw store score and
    store rank, and the normalised weighted score that entered the fusion."""
    if mode == "bm25":
        alpha, dense = 0.0, []
    elif mode == "dense":
        alpha, bm25 = 1.0, []
    b_in = with_document_evidence([(c.id, c.doc_id, c.chunk_index, c.section, c.score) for c in bm25], doc_weight)
    d_in = with_document_evidence([(c.id, c.doc_id, c.chunk_index, c.section, c.score) for c in dense], doc_weight)
    if fusion == "rrf":
        fused = rrf_fusion(b_in, d_in, rrf_k, alpha)
    else:
        complete = candidates is not None and len(bm25) < candidates
        fused = linear_fusion(b_in, d_in, alpha, normalization, bm25_floor=0.0 if complete else None)
    by_id = {c.id: c for c in dense}
    by_id.update({c.id: c for c in bm25})
    if doc_weight == 0.0:
        return [_hit(f, by_id[f.id]) for f in fused[:k]]
    b_raw = ranked([(c.id, c.score) for c in bm25])  # the store's ranks and scores
    d_raw = ranked([(c.id, c.score) for c in dense])
    return [_hit(f._replace(bm25_score=b[1] if (b := b_raw.get(f.id)) else None,
                            bm25_rank=b[0] if b else None,
                            dense_score=d[1] if (d := d_raw.get(f.id)) else None,
                            dense_rank=d[0] if d else None), by_id[f.id]) for f in fused[:k]]


def _hit(f: Fused, c: ScoredChunk) -> Hit:
    return Hit(
        id=c.id, doc_id=c.doc_id, source=c.source, title=c.title, text=c.text, chunk_index=c.chunk_index,
        score=f.score, bm25_score=f.bm25_score, dense_score=f.dense_score, bm25_rank=f.bm25_rank,
        dense_rank=f.dense_rank, bm25_norm=f.bm25_norm, dense_norm=f.dense_norm, metadata=c.metadata,
    )


class HybridSearcher:
    """Search one store with one embedder. Defaults come from Settings; each call may override them.

    Thread-safe: ``search`` may run in several threads at once (the store and the embedder are).
    """

    def __init__(self, store: Store, embedder: Embedder | None, settings: Settings) -> None:
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self._checked = False

    def build_request(
        self,
        query: str,
        mode: str | None = None,
        candidates: int | None = None,
        filters: Filters | None = None,
    ) -> SearchRequest:
        return self.build_requests([query], mode, candidates, filters)[0]

    def build_requests(
        self,
        queries: Sequence[str],
        mode: str | None = None,
        candidates: int | None = None,
        filters: Filters | None = None,
    ) -> list[SearchRequest]:
        """The store requests of several queries, their vectors embedded in one batch (evaluation)."""
        mode = mode or self.settings.mode
        candidates = candidates or self.settings.candidates
        vectors: Sequence[np.ndarray | None] = [None] * len(queries)
        if mode in ("hybrid", "dense"):
            if self.embedder is None:
                raise ConfigError(f"mode {mode!r} needs an embedding model", field="mode")
            if not self._checked:
                check_model(self.store, self.embedder)
                self._checked = True
            vectors = list(self.embedder.embed_queries(list(queries)))
        return [SearchRequest(
            text=query if mode in ("hybrid", "bm25") else None,
            vector=vector,
            candidates=candidates,
            filters=dict(filters or {}),
            num_candidates=max(2 * candidates, candidates + 10),
        ) for query, vector in zip(queries, vectors, strict=True)]

    def search(
        self,
        query: str,
        k: int | None = None,
        mode: str | None = None,
        alpha: float | None = None,
        fusion: str | None = None,
        normalization: str | None = None,
        filters: Filters | None = None,
        candidates: int | None = None,
        rrf_k: int | None = None,
        doc_weight: float | None = None,
    ) -> SearchResult:
        s = self.settings
        mode = mode or s.mode
        k = k or s.k
        fusion = fusion or s.fusion
        lookup = alpha is None and mode == "hybrid" and fusion == "linear" and is_lookup(query)
        alpha = (s.lookup_alpha if lookup else s.alpha) if alpha is None else check_alpha(alpha)
        normalization = normalization or s.normalization
        doc_weight = s.doc_weight if doc_weight is None else check_doc_weight(doc_weight)
        candidates = max(candidates or s.candidates, k)
        t0 = time.perf_counter()
        request = self.build_request(query, mode, candidates, filters)
        t1 = time.perf_counter()
        response = self.store.search(request)
        t2 = time.perf_counter()
        hits = fuse(response.bm25, response.dense, mode, fusion, alpha, normalization, rrf_k or s.rrf_k, k,
                    doc_weight, request.candidates)
        t3 = time.perf_counter()
        timings = {"embed_ms": (t1 - t0) * 1e3, "store_ms": (t2 - t1) * 1e3, "fuse_ms": (t3 - t2) * 1e3}
        complete = request.text is not None and len(response.bm25) < request.candidates
        return SearchResult(hits, request, mode, fusion, alpha, normalization, timings, doc_weight, complete,
                            lookup)

    def explain(self, result: SearchResult) -> dict[str, Any]:
        """The native request (paste into Kibana Dev Tools for ES) and the per-hit arithmetic."""
        return {"request": self.store.explain_request(result.request), "mode": result.mode,
                "fusion": result.fusion, "alpha": result.alpha, "normalization": result.normalization,
                "doc_weight": result.doc_weight, "bm25_complete": result.bm25_complete, "lookup": result.lookup,
                "normalized": normalization_meaning(result)}


def normalization_meaning(result: SearchResult) -> str:
    """One sentence on what the normalised scores of ``result`` mean (``--explain``, docs/fusion.md)."""
    if result.fusion == "rrf":
        return "each side adds w / (rrf_k + rank); a side that did not return a chunk adds 0"
    floor = ("BM25 returned every chunk that matches the query (fewer than the candidates asked for), so "
             "every other chunk's BM25 score is 0: that is its floor; " if result.bm25_complete else "")
    what = {"zscore": "each side's score is its distance above the side's floor in standard deviations",
            "minmax": "each side's score is (s - floor) / (best - floor), in (0, 1]",
            "none": "each side's score is raw"}[result.normalization]
    return (f"{floor}{what}; a side's floor stands for 'not returned' (one mean step below its lowest score "
            f"when its list was cut), and a chunk that side did not return gets 0 from it")
