"""Exact lookups: a query word found in one chunk only (an error code, an id) ranks that chunk first.

The corpus is 50 Markdown files of real prose (paragraphs of esrag's own docs/), each holding one unique
made-up word; searching for that word with the default settings must put its file first, on both stores,
through the engine (what `esrag search` calls), `esrag search --json` itself, `ask`'s sources, and the API.
The packaged all-MiniLM-L6-v2 embeds, so the kNN side is the real one the word has to win against. About
four words in ten carry digits, as error codes do: those are lookups (``esrag.retrieval.search.is_lookup``) and run at
the lookup alpha; the plain words rely on the BM25 floor alone (``esrag.retrieval.fusion``).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from esrag.cli import main
from esrag.config import Settings
from esrag.engine import Engine
from esrag.types import Document
from tests.fixtures.api import ApiServer, store_args

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
FILES = 50
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def _paragraphs() -> list[str]:
    """Prose paragraphs of docs/*.md: no code, tables, lists or headings."""
    out = []
    for path in sorted((ROOT / "docs").glob("*.md")):
        for block in re.split(r"\n\s*\n", path.read_text()):
            text = " ".join(block.split())
            if len(text) > 120 and text[0].isalpha() and "```" not in block and "|" not in text:
                out.append(text)
    return out


def unique_word_corpus(root: Path, seed: int = 26) -> dict[str, str]:
    """Write FILES Markdown files into ``root`` (a folder named notes); return word -> the doc id (notes/NAME)
    of the file that holds it."""
    rng = random.Random(seed)
    paragraphs = _paragraphs()
    assert len(paragraphs) >= 30, "docs/ should have enough prose paragraphs"
    known = " ".join(paragraphs).lower()
    words: dict[str, str] = {}
    while len(words) < FILES:
        word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(3, 4)))
        if rng.random() < 0.4:
            word += str(rng.randint(10, 9999))  # an error-code-like token: letters and digits
        if word in words or word in known:
            continue
        name = f"notes/note-{len(words):02d}.md"
        words[word] = name
        picked = rng.sample(paragraphs, 6)
        where = rng.randrange(6)
        picked[where] += f" If the log shows {word}, follow the steps above before you retry."
        (root.parent / name).write_text(f"# Note {len(words)}\n\n" + "\n\n".join(picked) + "\n")
    return words


@pytest.fixture
def corpus(tmp_path: Path, store_settings: Callable[..., Settings]) -> Iterator[tuple[Engine, dict[str, str], Path]]:
    root = tmp_path / "notes"
    root.mkdir()
    words = unique_word_corpus(root)
    engine = Engine(store_settings())
    report = engine.ingest_paths([root])
    assert report.ok and report.documents_new == FILES
    yield engine, words, root
    engine.drop()
    engine.close()


def test_the_unique_word_corpus_has_one_bm25_hit_per_word(
        corpus: tuple[Engine, dict[str, str], Path]) -> None:
    engine, words, _ = corpus
    assert engine.store.count().chunks > FILES  # several chunks per file: a word sits in one of them
    for word, name in words.items():
        hits = engine.search(word, mode="bm25").hits
        # one file; two of its chunks when the word falls in their overlap
        assert hits and {h.doc_id for h in hits} == {name}, word


def test_the_file_holding_the_word_ranks_first_at_the_defaults(
        corpus: tuple[Engine, dict[str, str], Path]) -> None:
    engine, words, _ = corpus
    s = engine.settings
    assert (s.mode, s.fusion, s.normalization) == ("hybrid", "linear", "zscore")  # the defaults
    for word, name in words.items():
        result = engine.search(word)
        first = result.hits[0]
        assert first.doc_id == name, f"{word}: {[h.doc_id for h in result.hits[:5]]}"
        assert first.bm25_rank == 1 and first.bm25_norm > 0.0
        assert result.bm25_complete
        # a word with digits looks like an error code: a lookup, at the lookup alpha; plain words at alpha
        has_digit = any(c.isdigit() for c in word)
        assert result.lookup == has_digit
        assert result.alpha == (s.lookup_alpha if has_digit else s.alpha)
        assert all(h.bm25_norm == 0.0 for h in result.hits if h.doc_id != name)
        # ask's sources are the same retrieval: the file comes first there too
        answer = engine.ask(word, generator="none")
        assert answer.passages[0].hit.doc_id == name, word


def test_the_cli_puts_the_file_first_and_explain_says_why(
        corpus: tuple[Engine, dict[str, str], Path]) -> None:
    engine, words, _ = corpus
    args = store_args(engine.settings.store_name, engine.settings)
    for word, name in list(words.items())[:3]:
        out = CliRunner().invoke(main, ["search", word, "--json", "-k", "3", *args], catch_exceptions=False)
        assert out.exit_code == 0, out.output
        assert json.loads(out.stdout)["hits"][0]["doc_id"] == name
    word, name = next(iter(words.items()))
    out = CliRunner().invoke(main, ["search", word, "--explain", "-k", "2", *args], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"{name}" in out.stdout.splitlines()[0]
    assert "BM25 returned every chunk that matches the query" in " ".join(out.stdout.split())


def test_the_api_puts_the_file_first(corpus: tuple[Engine, dict[str, str], Path],
                                     serve: Callable[..., ApiServer]) -> None:
    engine, words, _ = corpus
    server = serve(*store_args(engine.settings.store_name, engine.settings))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for word, name in words.items():
            r = client.post("/v1/search", json={"query": word, "k": 3})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["doc_id"] == name, word
        for word, name in list(words.items())[:10]:
            r = client.post("/v1/ask", json={"question": word, "generator": "none"})
            assert r.status_code == 200, r.text
            assert r.json()["passages"][0]["doc_id"] == name, word


def test_a_lone_hit_scores_two_with_zscore_and_one_with_minmax(fake_distribution: Path,
                                                               store_settings: Callable[..., Settings]) -> None:
    """One chunk in the index: each side's population is the hit and its floor, so zscore gives 2 per side
    and minmax 1 (docs/fusion.md, 'What the score of a lone hit means'), never the 0 of 'not returned'."""
    engine = Engine(store_settings(embedder="hashed"))
    try:
        doc = Document(doc_id="keys", source="keys", text="Rotate the API keys every 90 days.", title="Keys")
        assert engine.ingest_documents([doc]).ok
        hit = engine.search("rotate keys").hits[0]
        assert (hit.bm25_norm, hit.dense_norm, hit.score) == (pytest.approx(2.0), pytest.approx(2.0),
                                                              pytest.approx(2.0))
        assert engine.search("rotate keys", normalization="minmax").hits[0].score == pytest.approx(1.0)
    finally:
        engine.drop()
        engine.close()
