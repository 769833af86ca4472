"""Retrieval evaluation on BEIR-layout datasets: loading, runs, metrics and the method comparison.

A dataset directory holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with or without a header).

Evaluation is at the *document* level: the corpus is chunked and indexed like any ingest, and a document's
score for a query is its best chunk's score. Each query costs one store round trip (BM25 and kNN candidates
together); bm25, dense, hybrid and rrf are all fused client-side from those same candidates, and tfidf is a
classic whole-document baseline computed in memory with scikit-learn.

Metrics come from ``ranx``. Runs are handed to it with rank-derived scores, so that the metrics see exactly
esrag's order (fusion's tie-breaks included) and not an order ranx re-derives from tied scores.

The top of the module is pure (parsing, run building, tfidf, metrics); the bottom section, ``I/O``, indexes a
dataset into a store and fetches the candidates.
"""

from __future__ import annotations

import json
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esrag.config import DEFAULT_MODEL, ChunkingSettings
from esrag.errors import ConfigError, LoaderError, MissingDependencyError
from esrag.ingest.context import PLAIN
from esrag.retrieval.search import HybridSearcher, fuse
from esrag.stats import percentile  # noqa: F401 - re-exported for the CLI
from esrag.types import Document, ScoredChunk, SearchResponse, sha256_hex

#: The metrics reported by ``esrag eval``, in ranx's names.
METRICS = ("ndcg@10", "mrr@10", "recall@100")
#: Retrieval methods, in report order.
METHODS = ("tfidf", "bm25", "dense", "hybrid", "rrf")
#: Documents kept per query in a run: the deepest metric cutoff.
RUN_DEPTH = 100
#: Chunk candidates fetched per side and query. Several chunks can belong to one document, so this is well
#: above RUN_DEPTH, for Recall@100 to see about 100 distinct documents.
DEFAULT_CANDIDATES = 300

#: (doc_id, score) pairs, best first.
Ranking = list[tuple[str, float]]
#: query id -> Ranking
RunDict = dict[str, Ranking]
#: query id -> doc id -> graded relevance (> 0)
QrelsDict = dict[str, dict[str, int]]


@dataclass(frozen=True)
class BeirDataset:
    """A loaded BEIR dataset. ``queries`` holds only the queries judged in the split, and ``qrels`` only
    positive judgments of those queries."""

    name: str
    documents: tuple[Document, ...]
    queries: dict[str, str]
    qrels: QrelsDict
    split: str = "test"


# -- loading (pure parsers + a thin reader) ---------------------------------------------------------------


def _json_lines(lines: Iterable[str], what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoaderError(f"{what} line {lineno}: invalid JSON: {e}") from e
        if not isinstance(obj, dict) or "_id" not in obj:
            raise LoaderError(f"{what} line {lineno}: expected an object with an '_id'")
        yield lineno, obj


def parse_corpus(lines: Iterable[str], name: str) -> list[Document]:
    """Documents from ``corpus.jsonl`` lines. ``doc_id`` is the ``_id``; blank lines are ignored; a repeated
    ``_id`` is an error (it would silently merge two documents)."""
    docs: list[Document] = []
    seen: set[str] = set()
    for lineno, obj in _json_lines(lines, "corpus.jsonl"):
        doc_id = str(obj["_id"])
        if doc_id in seen:
            raise LoaderError(f"corpus.jsonl line {lineno}: duplicate _id {doc_id!r}")
        seen.add(doc_id)
        docs.append(Document(doc_id=doc_id, source=f"{name}/corpus.jsonl#{doc_id}",
                             text=str(obj.get("text") or ""), title=str(obj.get("title") or "")))
    return docs


def parse_queries(lines: Iterable[str]) -> dict[str, str]:
    """Query id -> text from ``queries.jsonl`` lines."""
    return {str(obj["_id"]): str(obj.get("text") or "") for _, obj in _json_lines(lines, "queries.jsonl")}


def parse_qrels(lines: Iterable[str]) -> QrelsDict:
    """Positive judgments from a BEIR qrels TSV (``query-id``, ``corpus-id``, ``score``).

    A first line whose score column is not an integer is taken as the header. Rows with score <= 0 are
    dropped (not relevant), so every query in the result has at least one relevant document.
    """
    qrels: QrelsDict = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        cols = line.rstrip("\r\n").split("\t")
        if len(cols) < 3:
            raise LoaderError(f"qrels line {lineno}: expected 3 tab-separated columns, got {line!r}")
        try:
            score = int(float(cols[2]))
        except ValueError as e:
            if lineno == 1:
                continue  # header
            raise LoaderError(f"qrels line {lineno}: score {cols[2]!r} is not a number") from e
        if score > 0:
            qrels.setdefault(cols[0], {})[cols[1]] = score
    return qrels


def load_beir(path: str | Path, split: str = "test") -> BeirDataset:
    """Read a BEIR dataset directory. Queries without judgments in ``split`` are left out, as are judgments
    of queries missing from ``queries.jsonl``. Raises LoaderError for a missing file or an empty split."""
    root = Path(path)
    files = {"corpus": root / "corpus.jsonl", "queries": root / "queries.jsonl",
             "qrels": root / "qrels" / f"{split}.tsv"}
    for f in files.values():
        if not f.is_file():
            raise LoaderError(f"{f} not found: a BEIR dataset needs corpus.jsonl, queries.jsonl and "
                              f"qrels/{split}.tsv")
    name = root.resolve().name
    try:
        with files["corpus"].open(encoding="utf-8") as fh:
            documents = parse_corpus(fh, name)
        with files["queries"].open(encoding="utf-8") as fh:
            all_queries = parse_queries(fh)
        with files["qrels"].open(encoding="utf-8") as fh:
            all_qrels = parse_qrels(fh)
    except (OSError, UnicodeDecodeError) as e:
        raise LoaderError(f"cannot read dataset {root}: {e}") from e
    qrels = {q: rel for q, rel in all_qrels.items() if q in all_queries}
    if not qrels:
        raise LoaderError(f"{files['qrels']} judges none of the queries in {files['queries']}")
    if not documents:
        raise LoaderError(f"{files['corpus']} holds no documents")
    queries = {q: all_queries[q] for q in sorted(qrels)}
    return BeirDataset(name=name, documents=tuple(documents), queries=queries, qrels=qrels, split=split)


_DEFAULTS = {k: f.default for k, f in ChunkingSettings.model_fields.items()}


def eval_index_name(dataset_name: str, model: str, chunk_size: int = _DEFAULTS["chunk_size"],
                    chunk_overlap: int = _DEFAULTS["chunk_overlap"],
                    embed_template: str = _DEFAULTS["embed_template"]) -> str:
    """Index name for a dataset: ``eval-<dataset>`` with the default model and chunking, with suffixes for
    what differs (``-<model>``: the model's last path component; ``-c<size>-o<overlap>``; ``-t<hash>`` of
    the embed template, ``-tplain`` without context), lowercased to the characters an index name allows,
    so that each setting keeps its own vectors and comparing them embeds each only once."""

    def slug(s: str) -> str:
        return re.sub(r"[^a-z0-9_]+", "-", s.lower()).strip("-_") or "x"

    name = f"eval-{slug(dataset_name)}"
    if model != DEFAULT_MODEL:
        name += f"-{slug(Path(model.rstrip('/')).name)}"
    if (chunk_size, chunk_overlap) != (_DEFAULTS["chunk_size"], _DEFAULTS["chunk_overlap"]):
        name += f"-c{chunk_size}-o{chunk_overlap}"
    if embed_template != _DEFAULTS["embed_template"]:
        name += "-tplain" if embed_template == PLAIN else f"-t{sha256_hex(embed_template)[:8]}"
    return name


# -- runs -----------------------------------------------------------------------------------------------


def doc_ranking(pairs: Iterable[tuple[str, float]], depth: int = RUN_DEPTH) -> Ranking:
    """Collapse a best-first list of (doc_id, chunk score) to documents: each document keeps its first,
    i.e. best, chunk's score and position. At most ``depth`` documents."""
    out: Ranking = []
    seen: set[str] = set()
    for doc_id, score in pairs:
        if doc_id in seen:
            continue
        seen.add(doc_id)
        out.append((doc_id, float(score)))
        if len(out) >= depth:
            break
    return out


def method_ranking(
    response: SearchResponse,
    method: str,
    alpha: float = 0.5,
    normalization: str = "minmax",
    rrf_k: int = 60,
    depth: int = RUN_DEPTH,
    doc_weight: float = 0.0,
) -> Ranking:
    """Document ranking of one store method (bm25, dense, hybrid = linear fusion at ``alpha``, rrf =
    unweighted reciprocal rank fusion with ``rrf_k``) from one query's candidates, fused exactly as
    ``esrag search`` fuses them (``doc_weight`` on every method: it is part of how esrag ranks one side)."""
    if method == "bm25":
        hits = fuse(response.bm25, [], "bm25", "linear", 0.0, normalization, rrf_k, doc_weight=doc_weight,
                    candidates=response.candidates)
    elif method == "dense":
        hits = fuse([], response.dense, "dense", "linear", 1.0, normalization, rrf_k, doc_weight=doc_weight,
                    candidates=response.candidates)
    elif method == "hybrid":
        hits = fuse(response.bm25, response.dense, "hybrid", "linear", alpha, normalization, rrf_k,
                    doc_weight=doc_weight, candidates=response.candidates)
    elif method == "rrf":
        hits = fuse(response.bm25, response.dense, "hybrid", "rrf", 0.5, normalization, rrf_k,
                    doc_weight=doc_weight, candidates=response.candidates)
    else:
        raise ConfigError(f"unknown store method {method!r}; choose one of bm25, dense, hybrid, rrf")
    return doc_ranking(((h.doc_id, h.score) for h in hits), depth)


_TOKEN = re.compile(r"[^\W_]+")


def tfidf_tokenize(text: str) -> list[str]:
    """Lowercase and split on anything that is not a letter or digit (punctuation and ``_`` included)."""
    return _TOKEN.findall(text.lower())


def document_text(doc: Document) -> str:
    """The text a whole-document baseline sees: title, blank line, text (just the text if untitled)."""
    return f"{doc.title}\n\n{doc.text}" if doc.title else doc.text


def tfidf_run(
    documents: Sequence[Document], queries: Mapping[str, str], depth: int = RUN_DEPTH, batch: int = 256
) -> RunDict:
    """The classic baseline: scikit-learn TF-IDF (``tfidf_tokenize``, smoothed idf, l2-normalised rows),
    cosine between each query and each whole document. Documents with zero similarity are left out; equal
    scores are ordered by corpus position."""
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError as e:
        raise MissingDependencyError("scikit-learn", "eval", "the tfidf baseline") from e
    vectorizer = TfidfVectorizer(tokenizer=tfidf_tokenize, lowercase=False, token_pattern=None)
    matrix = vectorizer.fit_transform([document_text(d) for d in documents])
    ids = [d.doc_id for d in documents]
    qids = list(queries)
    run: RunDict = {}
    for lo in range(0, len(qids), batch):
        chunk = qids[lo:lo + batch]
        sims = (vectorizer.transform([queries[q] for q in chunk]) @ matrix.T).toarray()
        for qid, row in zip(chunk, sims, strict=True):
            top = np.flatnonzero(row > 0.0)
            order = top[np.lexsort((top, -row[top]))][:depth]
            run[qid] = [(ids[i], float(row[i])) for i in order]
    return run


# -- metrics (ranx) ---------------------------------------------------------------------------------------


def check_eval_dependencies(tfidf: bool = True) -> None:
    """MissingDependencyError now, before any ingest starts, if a package the evaluation needs is missing."""
    import importlib

    needed = [("ranx", "ranx", "evaluation metrics")]
    if tfidf:
        needed.append(("sklearn", "scikit-learn", "the tfidf baseline"))
    for module, package, purpose in needed:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise MissingDependencyError(package, "eval", purpose) from e


def _ranx() -> Any:
    try:
        import ranx
    except ImportError as e:
        raise MissingDependencyError("ranx", "eval", "evaluation metrics") from e
    return ranx


def _ranx_pair(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Ranking]) -> tuple[Any, Any]:
    ranx = _ranx()
    qrels_obj = ranx.Qrels({q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items()})
    # Rank-derived scores: ranx re-sorts by score, and must see exactly this order.
    run_obj = ranx.Run({q: {d: float(len(ranking) - i) for i, (d, _) in enumerate(ranking)}
                        for q, ranking in run.items() if q in qrels})
    return qrels_obj, run_obj


def evaluate_per_query(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Ranking], metrics: Sequence[str] = METRICS
) -> dict[str, dict[str, float]]:
    """metric -> query id -> value, for every judged query (a query absent from the run scores 0)."""
    if not qrels:
        raise ConfigError("no judged queries to evaluate")
    qrels_obj, run_obj = _ranx_pair(qrels, run)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unsafe cast.*")  # numba, inside ranx
        _ranx().evaluate(qrels_obj, run_obj, list(metrics), make_comparable=True)
    return {m: {str(q): float(v) for q, v in run_obj.scores[m].items()} for m in metrics}


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Ranking], metrics: Sequence[str] = METRICS
) -> dict[str, float]:
    """metric -> mean over the judged queries (queries absent from the run count 0)."""
    per_query = evaluate_per_query(qrels, run, metrics)
    return {m: float(np.mean(list(per_query[m].values()))) for m in metrics}


def format_trec_run(run: Mapping[str, Ranking], tag: str) -> str:
    """A run in TREC format, ``qid Q0 docid rank score tag`` per line, rank 1-based, queries sorted."""
    lines = []
    for qid in sorted(run):
        for rank, (doc_id, score) in enumerate(run[qid], start=1):
            lines.append(f"{qid} Q0 {doc_id} {rank} {score:.6f} {tag}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_methods(values: Iterable[str]) -> list[str]:
    """Methods from comma-separated and/or repeated values, in report order; empty means all."""
    asked = {m.strip().lower() for v in values for m in v.split(",") if m.strip()}
    unknown = asked - set(METHODS)
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(METHODS)}")
    return [m for m in METHODS if m in asked] if asked else list(METHODS)


def build_runs(
    dataset: BeirDataset,
    candidates: Mapping[str, SearchResponse],
    methods: Sequence[str],
    alpha: float,
    normalization: str = "minmax",
    rrf_k: int = 60,
    depth: int = RUN_DEPTH,
    doc_weight: float = 0.0,
) -> dict[str, RunDict]:
    """method -> run, for the methods asked; store methods from ``candidates`` (query id -> the query's
    store response), tfidf from the dataset itself."""
    runs: dict[str, RunDict] = {}
    for method in methods:
        if method == "tfidf":
            runs[method] = tfidf_run(dataset.documents, dataset.queries, depth)
        else:
            runs[method] = {q: method_ranking(resp, method, alpha, normalization, rrf_k, depth, doc_weight)
                            for q, resp in candidates.items()}
    return runs


# -- I/O: index a dataset, fetch candidates -------------------------------------------------------------


@dataclass(frozen=True)
class Retrieval:
    """Every judged query's candidates, and what fetching them cost (milliseconds per query)."""

    candidates: dict[str, SearchResponse]
    embed_ms: float
    store_ms: list[float]


def retrieve_candidates(
    queries: Mapping[str, str],
    searcher: HybridSearcher,
    candidates: int = DEFAULT_CANDIDATES,
    progress: bool = False,
    on_query: Callable[[str, SearchResponse], None] | None = None,
) -> Retrieval:
    """One store round trip per query, BM25 and kNN together, ``candidates`` chunks per side.

    The requests are built by the searcher, exactly as ``esrag search`` builds them (query prefix, model
    check, num_candidates), with the query vectors embedded in one batch up front; ``embed_ms`` is the mean
    embedding time per query, ``store_ms`` each query's round trip.
    """
    qids = list(queries)
    t0 = time.perf_counter()
    requests = searcher.build_requests([queries[q] for q in qids], mode="hybrid", candidates=candidates)
    embed_ms = (time.perf_counter() - t0) * 1e3 / max(len(qids), 1)
    out: dict[str, SearchResponse] = {}
    store_ms: list[float] = []
    bar = _bar(len(qids), "queries", progress)
    try:
        for qid, request in zip(qids, requests, strict=True):
            t = time.perf_counter()
            response = searcher.store.search(request)
            store_ms.append((time.perf_counter() - t) * 1e3)
            out[qid] = SearchResponse(_strip(response.bm25), _strip(response.dense), response.took_ms,
                                      request.candidates)
            if on_query is not None:
                on_query(qid, response)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return Retrieval(out, embed_ms, store_ms)


def _strip(chunks: Sequence[ScoredChunk]) -> list[ScoredChunk]:
    """Drop chunk texts: evaluation needs ids and scores only, and 166 queries x 600 texts add up."""
    return [ScoredChunk(id=c.id, score=c.score, doc_id=c.doc_id, source=c.source, title="", text="",
                        chunk_index=c.chunk_index, section=c.section) for c in chunks]


def _bar(total: int, unit: str, enabled: bool) -> Any:
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="retrieve", dynamic_ncols=True, leave=False)
