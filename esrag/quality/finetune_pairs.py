"""Training pairs for ``esrag finetune``, the held-out split and the folds. Pure: no I/O, no model.

A pair is (anchor, positive): a query and a passage that answers it. Two kinds:

- **qrels pairs**: one per judged (query, relevant document) of a BEIR split; the passage is the
  document as the index embeds it (``indexed_passage``: its first chunk, with the context the embed template
  puts before it), or without an index's chunker its title and text
  (``esrag.quality.evaluation.document_text``); cut to ``max_chars`` either way.
- **heading pairs** (no labels): one per section of a document that has a heading: the heading is the
  anchor and the section's text the passage. A document without an outline gives (its title, its text)
  when its title is not just its file name. A heading shared by several sections names none of them and
  is dropped (with in-batch negatives, two passages under one anchor would teach the model to push each
  away from its own heading).

A pair may carry a **hard negative**: a passage the base model ranks high for the anchor that does not
answer it (``with_hard_negatives``, mined from the base model's own ranking of each judged query). With it,
each anchor is also pushed away from the passage the model confuses it with, not only from the batch's
random ones. Mining is positive-aware: a document scoring almost as high as the judged answer is more often
an unjudged answer than a wrong one, so only those at most ``NEGATIVE_MARGIN`` times the positive's cosine
qualify (the "TopK-PercPos" rule of NV-Retriever, Moreira et al. 2024, with its 0.95). When some pairs have
one and others not, ``fill_negatives`` gives the others a seeded random passage of another pair, so that
every example has the same columns.

Guards, each a ConfigError with a one-line message: ``check_enough`` (fewer pairs than one batch: the
in-batch negatives need a full batch) and ``check_disjoint`` (a held-out query among the training pairs,
by id, or by text among the anchors of unlabelled pairs).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from esrag.errors import ConfigError
from esrag.ingest.context import sections

if TYPE_CHECKING:  # esrag.quality.evaluation imports the settings (pydantic): kept off the training-only path
    from esrag.ingest.chunking import Chunker
    from esrag.ingest.context import ContextTemplate
    from esrag.types import Chunk, Document

#: passages are cut to this many characters (the model reads at most its max_seq_length tokens anyway;
#: the cut only bounds memory and tokenisation time for very long sections)
MAX_PASSAGE_CHARS = 4000
#: a heading pair's passage needs at least this many characters to say something
MIN_PASSAGE_CHARS = 40
#: a mined negative's cosine to the query is at most this fraction of the positive's (see the module docstring)
NEGATIVE_MARGIN = 0.95
#: negatives are mined among the base model's this many best documents of the query
NEGATIVE_DEPTH = 30


@dataclass(frozen=True)
class Pair:
    """One training example. ``query_id`` is the judged query it came from ("" for a heading pair);
    ``doc_id`` the document of the passage; ``negative`` a passage that does not answer the anchor ("" for
    none)."""

    anchor: str
    positive: str
    query_id: str = ""
    doc_id: str = ""
    kind: str = "qrels"
    negative: str = ""


def _clean(text: str) -> str:
    return " ".join(text.split())


def text_key(text: str) -> str:
    """How texts are compared for overlap: whitespace collapsed, case folded."""
    return _clean(text).casefold()


def passage_of(doc: Document, max_chars: int = MAX_PASSAGE_CHARS) -> str:
    """The passage a pair holds for a whole document: its title and text
    (``esrag.quality.evaluation.document_text``), cut to ``max_chars``."""
    from esrag.quality.evaluation import document_text

    return document_text(doc).strip()[:max_chars]


#: how a pair's passage is read from a document (``passage_of`` or an ``indexed_passage``)
PassageOf = Callable[["Document"], str]


def indexed_passage(chunker: Chunker, template: ContextTemplate, max_chars: int = MAX_PASSAGE_CHARS) -> PassageOf:
    """A document's passage as an index with this ``chunker`` and embed ``template`` embeds it: the embedded
    text of its first chunk (``Chunk.embed_text``: the template's context, then the chunk), cut to
    ``max_chars``; "" for a blank document.

    The model is then trained on the view of a document it will be asked to embed: the same context (a
    title the index does not embed is not trained on either) and the same length (a chunk, not a whole
    section cut at the training sequence length). Retrieval scores a document by its best chunk; the first
    is the one a section's answer starts in, and the one a cut passage would hold anyway."""
    from esrag.ingest.chunking import chunk_document

    def passage(doc: Document) -> str:
        chunks = chunk_document(doc, chunker, template=template)
        return chunks[0].embed_text.strip()[:max_chars] if chunks else ""

    return passage


def _reader(passage: PassageOf | None, max_chars: int) -> PassageOf:
    """``passage``, or ``passage_of`` cut to ``max_chars`` when None."""
    return passage or (lambda d: passage_of(d, max_chars))


def document_passages(documents: Iterable[Document], max_chars: int = MAX_PASSAGE_CHARS,
                      passage: PassageOf | None = None) -> dict[str, str]:
    """Document id -> the document's passage (``passage``, else ``passage_of``): what hard negatives are
    drawn from."""
    read = _reader(passage, max_chars)
    return {d.doc_id: read(d) for d in documents}


def qrels_pairs(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    documents: Mapping[str, Document],
    query_ids: Iterable[str] | None = None,
    max_chars: int = MAX_PASSAGE_CHARS,
    passage: PassageOf | None = None,
) -> list[Pair]:
    """One pair per positive judgment of the queries ``query_ids`` (all judged queries when None), in
    sorted (query id, doc id) order; the positive is the document's ``passage`` (``passage_of`` when None).
    Judgments of documents missing from ``documents`` and queries with a blank text are left out."""
    read = _reader(passage, max_chars)
    wanted = sorted(set(qrels) if query_ids is None else set(query_ids) & set(qrels))
    out: list[Pair] = []
    for qid in wanted:
        anchor = _clean(queries.get(qid, ""))
        if not anchor:
            continue
        for doc_id in sorted(qrels[qid]):
            doc = documents.get(doc_id)
            if doc is None:
                continue
            text = read(doc)
            if text:
                out.append(Pair(anchor, text, qid, doc_id, "qrels"))
    return out


def heading_pairs(
    documents: Iterable[Document],
    max_chars: int = MAX_PASSAGE_CHARS,
    min_chars: int = MIN_PASSAGE_CHARS,
) -> list[Pair]:
    """(heading, section text) pairs of ``documents``, in document and section order.

    A section's anchor is its deepest heading (``esrag.ingest.context.sections``); a document without an outline
    gives its title when the title is not the file name. The heading line is removed from the start of
    the passage, so the model cannot match the two by copying. Passages shorter than ``min_chars`` after
    that, and anchors held by more than one passage, are dropped.
    """
    found: list[Pair] = []
    for doc in documents:
        title = "" if doc.title_is_name else _clean(doc.title)
        for start, end, path in sections(doc, title):
            pair = _section_pair(_clean(path[-1]) if path else title, doc.text[start:end], doc.doc_id, max_chars,
                                 min_chars)
            if pair is not None:
                found.append(pair)
    return _unique_anchors(found)


def index_heading_pairs(
    chunks: Iterable[Chunk],
    template: ContextTemplate,
    max_chars: int = MAX_PASSAGE_CHARS,
    min_chars: int = MIN_PASSAGE_CHARS,
) -> list[Pair]:
    """``heading_pairs`` from an esrag index's stored chunks instead of the documents: a section's chunks
    (same document and ``Chunk.section``) are put back together by their offsets, and its heading is the
    deepest one of the path the chunks' stored context holds (``ContextTemplate.headings_in``, for the
    index's embed template). A document's chunks with no heading in their context give (its title, its
    text) when the title is not the file name. Pairs come in (document id, section) order."""
    by_section: dict[tuple[str, int], list[Chunk]] = {}
    for c in chunks:
        by_section.setdefault((c.doc_id, c.section), []).append(c)
    found: list[Pair] = []
    for (doc_id, _), parts in sorted(by_section.items()):
        parts.sort(key=lambda c: (c.start, c.chunk_index))
        first = parts[0]
        path = template.headings_in(first.context, first.title) or ()
        title = _clean(first.title)
        if title and _is_file_name(title, first.source):
            title = ""
        pair = _section_pair(_clean(path[-1]) if path else title, _joined(parts), doc_id, max_chars, min_chars)
        if pair is not None:
            found.append(pair)
    return _unique_anchors(found)


def _is_file_name(title: str, source: str) -> bool:
    name = source.replace("\\", "/").rsplit("/", 1)[-1]
    return title in (name, name.rsplit(".", 1)[0])


def _joined(parts: Sequence[Chunk]) -> str:
    """The text of consecutive chunks (sorted by start), their overlaps counted once: by offsets when each
    chunk's text spans exactly its offsets (a gap, whitespace that no chunk stores, becomes a line break,
    or a blank line when it is longer than one character), else joined with a blank line."""
    if any(len(c.text) != c.end - c.start for c in parts):
        return "\n\n".join(c.text for c in parts)
    out: list[str] = []
    end = parts[0].start
    for c in parts:
        if c.end <= end and out:
            continue
        if c.start > end and out:  # chunks are stored without the whitespace between them
            out.append("\n" if c.start - end == 1 else "\n\n")
        out.append(c.text[max(0, end - c.start):])
        end = max(end, c.end)
    return "".join(out)


def _section_pair(anchor: str, text: str, doc_id: str, max_chars: int, min_chars: int) -> Pair | None:
    """(anchor, the section's text without its heading line), or None when either is too short."""
    if not anchor:
        return None
    passage = text.strip()
    first, _, rest = passage.partition("\n")
    if anchor in _clean(first) and len(_clean(first)) <= len(anchor) + 8:  # the heading line (+ marks)
        passage = rest.strip()
        if set(passage.split("\n", 1)[0].strip()) <= set("=-~^*#+`'\"."):  # an RST underline
            passage = passage.partition("\n")[2].strip()
    passage = passage[:max_chars]
    return Pair(anchor, passage, "", doc_id, "headings") if len(passage) >= min_chars else None


def _unique_anchors(found: list[Pair]) -> list[Pair]:
    """The pairs whose anchor no other pair has (a shared heading names none of its sections)."""
    counts = Counter(text_key(p.anchor) for p in found)
    return [p for p in found if counts[text_key(p.anchor)] == 1]


def split_heldout(query_ids: Iterable[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training ids, held-out ids): a seeded shuffle of the sorted distinct ids, the last
    ``round(fraction * n)`` (at least 1, at most n - 1) held out. Deterministic whatever the input order."""
    ids = sorted(set(query_ids))
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"the held-out fraction must be in (0, 1), got {fraction}")
    if len(ids) < 2:
        raise ConfigError(f"need at least 2 judged queries to hold some out, got {len(ids)}")
    random.Random(seed).shuffle(ids)
    n_out = min(max(1, round(fraction * len(ids))), len(ids) - 1)
    return sorted(ids[:-n_out]), sorted(ids[-n_out:])


def kfolds(query_ids: Iterable[str], k: int, seed: int = 0) -> list[tuple[list[str], list[str]]]:
    """``k`` (training ids, held-out ids) splits: the held-out parts are disjoint, near-equal and cover
    every id once (``esrag.quality.tuning.kfold_split``, the folds of ``esrag tune``)."""
    from esrag.quality.tuning import kfold_split

    folds = kfold_split(list(query_ids), k, seed)
    return [(sorted(q for j, f in enumerate(folds) if j != i for q in f), sorted(fold))
            for i, fold in enumerate(folds)]


def check_enough(pairs: Sequence[Pair], batch_size: int) -> None:
    """A ConfigError when there are fewer pairs than one batch: in-batch negatives need the batch full
    (the last, partial batch is dropped)."""
    if batch_size < 2:
        raise ConfigError(f"the training batch size must be at least 2 (in-batch negatives), got {batch_size}")
    distinct = len({(p.anchor, p.positive) for p in pairs})
    if distinct < batch_size:
        raise ConfigError(f"too few training pairs: {distinct} distinct, fewer than one batch of {batch_size}; "
                          "lower --train-batch-size or give more data")


def check_disjoint(pairs: Sequence[Pair], heldout: Mapping[str, str]) -> None:
    """A ConfigError when a held-out query (id -> text) is among the training pairs: by query id for
    qrels pairs, by text (whitespace and case ignored) for the anchors of pairs that come from no judged
    query (a heading that is also a held-out query). Two judged queries with the same text and different
    ids are two queries (a dataset may ask one question of two documents): they may fall on either side."""
    ids = {p.query_id for p in pairs if p.query_id}
    by_id = sorted(ids & set(heldout))
    if by_id:
        raise ConfigError(f"the held-out split overlaps the training data: {len(by_id)} held-out queries are "
                          f"among the training pairs (first: {by_id[0]!r})")
    anchors = {text_key(p.anchor) for p in pairs if not p.query_id}
    by_text = sorted(q for q, text in heldout.items() if text_key(text) in anchors)
    if by_text:
        raise ConfigError(f"the held-out split overlaps the training data: {len(by_text)} held-out queries "
                          f"are, word for word, anchors of training pairs (first: {by_text[0]!r}: "
                          f"{_clean(heldout[by_text[0]])[:60]!r})")


def subsample(pairs: Sequence[Pair], limit: int | None, seed: int = 0) -> list[Pair]:
    """At most ``limit`` pairs, a seeded sample kept in input order; all of them when None or fewer."""
    if limit is None or len(pairs) <= limit:
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def with_hard_negatives(
    pairs: Sequence[Pair],
    cosines: Mapping[str, Mapping[str, float]],
    judged: Mapping[str, Collection[str]],
    passages: Mapping[str, str],
    margin: float = NEGATIVE_MARGIN,
    depth: int = NEGATIVE_DEPTH,
) -> tuple[list[Pair], int]:
    """(``pairs`` with a mined negative where one qualifies, how many got one).

    ``cosines``: query id -> document id -> the base model's cosine of the query and the document (its best
    chunk); ``judged``: query id -> its relevant documents (never a negative); ``passages``: document id ->
    the text a pair would hold for it. A pair's negative is the best-ranked document among the query's
    ``depth`` best that is not judged relevant, whose passage differs from the positive's, and whose cosine
    is at most ``margin`` times the positive's (any, when the positive was not retrieved). Ties rank by
    document id. Pairs of no query (heading pairs), or of a query with no such document, are left as they are.
    """
    out: list[Pair] = []
    mined = 0
    for p in pairs:
        scores = cosines.get(p.query_id) if p.query_id else None
        if not scores:
            out.append(p)
            continue
        cap = margin * scores[p.doc_id] if p.doc_id in scores else float("inf")
        ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[:depth]
        relevant = judged.get(p.query_id, ())
        negative = next((passages[d] for d, c in ranked
                         if d not in relevant and d != p.doc_id and c <= cap and d in passages
                         and passages[d] and passages[d] != p.positive), "")
        mined += bool(negative)
        out.append(replace(p, negative=negative) if negative else p)
    return out, mined


def fill_negatives(pairs: Sequence[Pair], seed: int = 0) -> list[Pair]:
    """``pairs`` unchanged when none has a negative; otherwise every pair without one gets the positive of
    a seeded random other pair (of another document, and not its own positive) as its negative. With a
    single distinct passage there is nothing to draw: those pairs keep none."""
    if not any(p.negative for p in pairs):
        return list(pairs)
    rng = random.Random(seed)
    pool = sorted({(p.positive, p.doc_id) for p in pairs})
    out: list[Pair] = []
    for p in pairs:
        if p.negative:
            out.append(p)
            continue
        others = [text for text, doc in pool if text != p.positive and (not p.doc_id or doc != p.doc_id)]
        out.append(replace(p, negative=rng.choice(others)) if others else p)
    return out
