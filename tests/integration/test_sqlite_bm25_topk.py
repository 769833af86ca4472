"""``Bm25Index.top`` (the prefix bound over impact-ordered postings) against ``Bm25Index.exhaustive`` (every
posting scored): the same top k, the same scores bit for bit, ties at the cut by rowid, on a random
Zipf-worded corpus and on the project's own documentation, with and without filters, at prefix sizes that
force every path (a bound met at once, prefixes grown, the exhaustive fallback)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from esrag.config import Settings
from esrag.stores import sqlite_bm25
from esrag.stores.sqlite import SQLiteStore
from esrag.stores.sqlite_bm25 import Bm25Index, positions_of
from esrag.types import Chunk, EmbeddedChunk, IndexMeta

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _write(directory: Path, texts: list[str]) -> Path:
    store = SQLiteStore(Settings(sqlite_dir=str(directory), index="t"))
    store.ensure_index(IndexMeta(model="m", dims=2))
    store.write([EmbeddedChunk(Chunk(id=f"c{i}", doc_id=f"d{i}", source="s", title="", text=t, chunk_index=0,
                                     chunk_count=1, start=0, end=1, chunk_sha=f"s{i}", doc_sha=f"d{i}"),
                               np.array([1.0, float(i % 7)], dtype=np.float32)) for i, t in enumerate(texts)])
    store.close()
    return directory / "t.db"


def _random_texts(rng: np.random.Generator) -> list[str]:
    vocab = ["the", "of", "and", "a"] + [f"w{i}" for i in range(2_000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    texts = [" ".join(vocab[i] for i in rng.choice(len(vocab), size=int(rng.integers(1, 80)), p=weights))
             for _ in range(3_000)]
    return texts + texts[:400]  # identical rows: equal scores, ordered by rowid, also at the cut


def _doc_texts() -> list[str]:
    words = " ".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
                     ).split()
    return [" ".join(words[i:i + 40]) for i in range(0, len(words), 40)]


@pytest.fixture(scope="module", params=["random", "docs"])
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[sqlite3.Connection, list[str], list[list[str]]]]:
    rng = np.random.default_rng(7)
    texts = _random_texts(rng) if request.param == "random" else _doc_texts()
    conn = sqlite3.connect(_write(tmp_path_factory.mktemp(request.param), texts), check_same_thread=False)
    words = [w for t in texts for w in sqlite_bm25.fold(t).split() if w.isalnum()]
    queries = [[words[int(j)] for j in rng.integers(0, len(words), size=int(rng.integers(1, 7)))]
               for _ in range(80)]
    queries += [["the"], ["the", "of", "and"], ["the", "the", "of"], ["a", "the", "and", "of", "a"],
                ["absentword"], ["absentword", "the"]]
    yield conn, texts, queries
    conn.close()


@pytest.mark.parametrize(("prefix", "sparsity"), [(1, 4), (3, 4), (32, 4), (1024, 4), (3, 0)])
def test_top_equals_the_exhaustive_scorer(corpus: tuple[sqlite3.Connection, list[str], list[list[str]]],
                                          monkeypatch: pytest.MonkeyPatch, prefix: int, sparsity: int) -> None:
    """Also with the rowids mapped to positions by binary search (sparsity 0: no inverse map)."""
    conn, texts, queries = corpus
    monkeypatch.setattr(sqlite_bm25, "PREFIX", prefix)
    monkeypatch.setattr(sqlite_bm25, "INVERSE_SPARSITY", sparsity)
    conn.execute("BEGIN")
    index = Bm25Index(conn)
    index.postings(conn, "the")
    assert (index._inverse is None) == (sparsity == 0)
    rng = np.random.default_rng(prefix)
    broad = np.sort(rng.choice(np.arange(1, len(texts) + 1), size=len(texts) // 2, replace=False))
    narrow = np.sort(rng.choice(np.arange(1, len(texts) + 1), size=len(texts) // 20, replace=False))
    for terms in queries:
        entries = [index.postings(conn, t) for t in terms]
        assert all(e is not None for e in entries), terms
        for limit in (1, 10, 100, 5_000):
            for allowed in (None, broad, narrow):
                mask = None
                if allowed is not None:
                    mask = np.zeros(index.n_rows, dtype=bool)
                    mask[positions_of(index.rowids, allowed)] = True
                got = index.top(conn, terms, limit, allowed)
                want = index.exhaustive(entries, limit, mask)  # type: ignore[arg-type]
                assert got == want, (terms, limit, None if allowed is None else len(allowed))
                assert len(got) == min(limit, len(want))
    conn.execute("COMMIT")


def test_top_from_two_threads_at_once_equals_one_thread(
        corpus: tuple[sqlite3.Connection, list[str], list[list[str]]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One Bm25Index (its term cache) shared by two threads that load and rank the same terms at once."""
    _, texts, queries = corpus
    monkeypatch.setattr(sqlite_bm25, "PREFIX", 8)
    path = _write(tmp_path, texts)
    setup = sqlite3.connect(path)
    setup.execute("BEGIN")
    index = Bm25Index(setup)
    expected = [index.exhaustive([index.postings(setup, t) for t in q], 10) for q in queries]  # type: ignore[misc]
    setup.execute("COMMIT")
    shared = Bm25Index(setup)  # a fresh, empty cache for the threads
    results: dict[int, list[list[tuple[int, float]] | None]] = {}
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        conn = sqlite3.connect(path)
        sqlite_bm25.attach_vocab(conn)
        barrier.wait()
        results[n] = [shared.top(conn, q, 10) for q in queries]
        conn.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    setup.close()
    assert results[0] == expected and results[1] == expected
