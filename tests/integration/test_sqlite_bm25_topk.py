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
from esrag.stores import sqlite_bm25, sqlite_postings
from esrag.stores.sqlite import SQLiteStore
from esrag.stores.sqlite_bm25 import TOKENIZERS, Bm25Index, positions_of
from esrag.stores.sqlite_postings import Head, Saved
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


def _with_heads(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[sqlite3.Connection, Saved, int]:
    """Small thresholds (prefixes of 2, 8, 32 ... rows, heads of 9 rows for terms in 200 rows or more),
    then every query term's postings and head saved, as a first process's searches leave them."""
    monkeypatch.setattr(sqlite_bm25, "PREFIX", 2)
    monkeypatch.setattr(sqlite_bm25, "HEAD_ROWS", 9)
    monkeypatch.setattr(sqlite_bm25, "HEAD_MIN", 200)
    monkeypatch.setattr(sqlite_postings, "PERSIST_MIN", 100)
    saved = Saved(TOKENIZERS["standard"], lambda: sqlite3.connect(path, isolation_level=None,
                                                                   check_same_thread=False))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    return conn, saved, _generation(conn)


def _generation(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def _search_all(conn: sqlite3.Connection, saved: Saved, queries: list[list[str]]) -> None:
    conn.execute("BEGIN")
    index = Bm25Index(conn, saved=saved, generation=_generation(conn))
    for terms in queries:
        index.top(conn, terms, 10)
    conn.execute("COMMIT")
    saved.flush()  # the postings, then the heads their prefixes queued


def test_top_from_saved_heads_equals_the_exhaustive_scorer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh index whose common terms have saved heads ranks from them (scoring candidates from the saved
    rows alone) and gives exactly the exhaustive answer, with and without filters."""
    rng = np.random.default_rng(11)
    texts = _random_texts(rng)
    conn, saved, generation = _with_heads(_write(tmp_path, texts), monkeypatch)
    words = [w for t in texts for w in t.split()]
    queries = [[words[int(j)] for j in rng.integers(0, len(words), size=int(rng.integers(1, 6)))]
               for _ in range(60)] + [["the"], ["the", "of", "and"], ["a", "the", "and", "of", "a"]]
    _search_all(conn, saved, queries)
    heads = dict(conn.execute("SELECT term, length(rows) / 8 FROM bm25_heads"))
    assert {"the", "of", "and", "a"} <= set(heads) and set(heads.values()) == {9}, heads
    allowed = np.sort(rng.choice(np.arange(1, len(texts) + 1), size=len(texts) // 2, replace=False))
    conn.execute("BEGIN")
    used = 0
    for terms in queries:
        for limit in (1, 3, 10, 50):
            for only in (None, allowed):
                index = Bm25Index(conn, saved=saved, generation=generation)  # nothing derived yet
                got = index.top(conn, terms, limit, only)
                entries = [index.postings(conn, t) for t in terms]
                used += sum(e is not None and e.head is not None for e in entries)
                mask = None
                if only is not None:
                    mask = np.zeros(index.n_rows, dtype=bool)
                    mask[positions_of(index.rowids, only)] = True
                assert got == index.exhaustive(entries, limit, mask), (terms, limit)  # type: ignore[arg-type]
    conn.execute("COMMIT")
    assert used > 100  # the heads were read, not just saved
    conn.close()
    saved.close()


def test_a_head_is_never_used_once_the_store_has_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written after a head was saved that outranks all its rows: the next snapshot does not read
    the head (it would miss the row), ranks in full, and saves a new head once the store is quiet again;
    a head ranked for a snapshot the store has since moved past is not saved."""
    rng = np.random.default_rng(12)
    texts = _random_texts(rng)
    path = _write(tmp_path, texts)
    conn, saved, generation = _with_heads(path, monkeypatch)
    _search_all(conn, saved, [["of"], ["the"]])
    (before,) = conn.execute("SELECT generation FROM bm25_heads WHERE term = 'of'").fetchone()
    store = SQLiteStore(Settings(sqlite_dir=str(tmp_path), index="t"))
    store.write([EmbeddedChunk(Chunk(id="new", doc_id="new", source="s", title="", text="of of of", chunk_index=0,
                                     chunk_count=1, start=0, end=1, chunk_sha="n", doc_sha="n"),
                               np.array([1.0, 0.0], dtype=np.float32))])
    store.close()
    new_rowid = conn.execute("SELECT rowid FROM chunks WHERE id = 'new'").fetchone()[0]
    later = _generation(conn)
    assert later > generation
    conn.execute("BEGIN")
    assert saved.head(conn, later, "of") is None
    index = Bm25Index(conn, saved=saved, generation=later)
    top = index.top(conn, ["of"], 3)
    entry = index.postings(conn, "of")
    assert entry is not None and entry.head is None
    assert top is not None and top[0][0] == new_rowid
    assert top == index.exhaustive([entry], 3)
    conn.execute("COMMIT")
    # a head ranked for the old snapshot, queued now, is not saved (the store changed since); one ranked for
    # the current one is, as is the head the ranking above queued
    ranked = Head(np.arange(1, 301, dtype=np.int64), np.arange(300), np.linspace(2.0, 1.0, 300), 9)
    saved.save_head_later("old-snapshot", generation, ranked)
    saved.save_head_later("this-snapshot", later, ranked)
    saved.flush()
    heads = dict(conn.execute("SELECT term, generation FROM bm25_heads"))
    assert "old-snapshot" not in heads and heads["this-snapshot"] == later
    assert conn.execute("SELECT rows FROM bm25_heads WHERE term = 'this-snapshot'").fetchone()[0] == \
        np.arange(1, 10, dtype="<i8").tobytes()  # the 9 best, best first
    assert before == generation and heads["of"] == later
    conn.execute("BEGIN")
    index = Bm25Index(conn, saved=saved, generation=later)
    assert index.top(conn, ["of"], 3) == top
    entry = index.postings(conn, "of")
    assert entry is not None and entry.head is not None
    conn.execute("COMMIT")
    conn.close()
    saved.close()


def test_top_from_heads_from_two_threads_at_once_equals_one_thread(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """One index whose terms are read with their heads, shared by two threads that rank the same queries at
    once (each derived array computed by whichever thread needs it first, or both)."""
    rng = np.random.default_rng(13)
    texts = _random_texts(rng)
    path = _write(tmp_path, texts)
    conn, saved, generation = _with_heads(path, monkeypatch)
    queries = [["the"], ["the", "of", "and"], ["a", "the", "and", "of", "a"], ["of", "w3"], ["and", "w1", "the"]]
    _search_all(conn, saved, queries)
    conn.execute("BEGIN")
    reference = Bm25Index(conn, saved=saved, generation=generation)
    expected = [reference.exhaustive([reference.postings(conn, t) for t in q], k)  # type: ignore[misc]
                for q in queries for k in (1, 10, 40)]
    shared = Bm25Index(conn, saved=saved, generation=generation)
    conn.execute("COMMIT")
    results: dict[int, list[list[tuple[int, float]] | None]] = {}
    barrier = threading.Barrier(2)

    def run(n: int) -> None:
        mine = sqlite3.connect(path)
        sqlite_bm25.attach_vocab(mine)
        mine.execute("BEGIN")
        barrier.wait()
        results[n] = [shared.top(mine, q, k) for q in queries for k in (1, 10, 40)]
        mine.execute("COMMIT")
        mine.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[0] == expected and results[1] == expected
    entries = [shared.postings(conn, t) for t in ("the", "of", "and")]
    assert all(e is not None and e.head is not None for e in entries)
    conn.close()
    saved.close()
