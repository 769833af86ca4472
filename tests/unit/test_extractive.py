"""The extractive generator's pure parts: which sentences are quotable, and MMR selection (word overlap,
no embedder)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from esrag.config import Settings
from esrag.generators.base import Message
from esrag.generators.extractive import (
    Candidate,
    ExtractiveGenerator,
    candidate_sentences,
    format_answer,
    paragraphs,
    select_sentences,
)

OPS = """# Operations

esrag needs, on its indices, the privileges `create_index`, `manage` (for aliases),
`read`, `write` and `delete`. Use an API key.

```bash
esrag ingest docs/ --prune
```

| flag | meaning |
|------|---------|
- Set `ESRAG_ES_URL` to the cluster URL so that esrag connects to it.
- The list below:
"""


def test_paragraphs_join_wrapped_lines_and_skip_headings_code_and_tables() -> None:
    assert paragraphs(OPS) == [
        "esrag needs, on its indices, the privileges `create_index`, `manage` (for aliases), `read`, `write` "
        "and `delete`. Use an API key.",
        "flag | meaning",
        "Set `ESRAG_ES_URL` to the cluster URL so that esrag connects to it.",
        "The list below:",
    ]


def test_candidates_are_whole_sentences_that_stand_alone() -> None:
    cut = "--explain` prints the body. It is printed as JSON for Dev Tools."  # a chunk cut mid-span
    assert candidate_sentences([OPS, cut]) == [
        Candidate(1, "esrag needs, on its indices, the privileges `create_index`, `manage` (for aliases), "
                     "`read`, `write` and `delete`."),
        Candidate(1, "Use an API key."),
        Candidate(1, "Set `ESRAG_ES_URL` to the cluster URL so that esrag connects to it."),
        Candidate(2, "It is printed as JSON for Dev Tools."),
    ]


def test_selection_prefers_the_answering_sentence_and_skips_a_near_copy() -> None:
    passages = [
        "The sky is blue because air scatters blue light. Grass is green in spring.",
        "The sky is blue because the air scatters blue light more.",
        "Rayleigh scattering makes the sky blue at noon and red at dusk.",
    ]
    picked = select_sentences("Why is the sky blue?", passages, max_sentences=2)
    assert picked == [Candidate(1, "The sky is blue because air scatters blue light."),
                      Candidate(3, "Rayleigh scattering makes the sky blue at noon and red at dusk.")]


def test_nothing_quotable_gives_nothing() -> None:
    assert select_sentences("anything?", ["# Title", "```\ncode here\n```"]) == []


def test_format_answer_ends_each_sentence_and_cites_it() -> None:
    assert format_answer([Candidate(2, "A b c d."), Candidate(1, "E f g h;")]) == "A b c d.[2] E f g h.[1]"


def test_the_generator_quotes_without_an_embedder() -> None:
    g = ExtractiveGenerator(Settings())
    messages = [Message("user", "Sources: ...\n\nQuestion: Which privileges does esrag need?")]
    text = "".join(g.stream(messages, sources=1, passage_texts=[OPS]))
    assert text.startswith("esrag needs, on its indices, the privileges")
    assert text.endswith("`delete`.[1]")
    assert "".join(g.stream(messages)) == ""


def test_two_threads_answer_at_once_with_one_generator() -> None:
    from concurrent.futures import ThreadPoolExecutor

    g = ExtractiveGenerator(Settings())
    sky = ["The sky is blue because air scatters blue light. Grass is green in spring."]
    asks = [("Which privileges does esrag need?", [OPS]), ("Why is the sky blue?", sky)] * 20
    alone = ["".join(g.stream([], sources=1, passage_texts=p, question=q)) for q, p in asks]
    with ThreadPoolExecutor(2) as pool:
        both = list(pool.map(lambda a: "".join(g.stream([], sources=1, passage_texts=a[1], question=a[0])), asks))
    assert both == alone and alone[1].startswith("The sky is blue")


class CountingEmbedder:
    """Counts the texts it embeds (bag of words vectors: enough for the selection to run)."""

    def __init__(self) -> None:
        self.documents = 0

    def _vec(self, text: str) -> np.ndarray:
        v = np.zeros(64, dtype=np.float32)
        for w in text.lower().split():
            v[hash(w) % 64] += 1.0
        return v / max(float(np.linalg.norm(v)), 1e-9)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.documents += len(texts)
        return np.stack([self._vec(t) for t in texts])


def test_a_large_k_embeds_only_the_sentences_of_the_passages_that_fit_the_budget() -> None:
    """k = 50 long passages: the answerer's context budget keeps a best-ranked prefix of them (every one of
    the default five), and only their sentences are embedded."""
    from esrag.answering.rag import RagPipeline
    from esrag.types import Hit

    text = " ".join(f"Passage sentence number {j} explains how the keys are rotated by the operator."
                    for j in range(12))
    hits = [Hit(id=f"c{i}", doc_id=f"d{i}", source=f"docs/{i}.md", title="", text=text, chunk_index=0,
                score=1.0 - i / 100, bm25_score=None, dense_score=None, bm25_rank=None, dense_rank=None,
                bm25_norm=0.0, dense_norm=0.0) for i in range(50)]

    class Searcher:
        embedder = None

        def search(self, query: str, **kwargs: Any) -> Any:
            return type("R", (), {"hits": hits[: kwargs["k"]]})()

    g = ExtractiveGenerator(Settings())
    g.embedder = CountingEmbedder()
    answer = RagPipeline(Searcher(), g, Settings()).ask("How are the keys rotated?", k=50)  # type: ignore[arg-type]
    assert len(answer.retrieved) == 50
    assert 5 <= len(answer.passages) <= 12
    assert g.embedder.documents == len(candidate_sentences([p.text for p in answer.passages])) <= 12 * 12
    assert answer.citations and {c.n for c in answer.citations} <= {p.n for p in answer.passages}
