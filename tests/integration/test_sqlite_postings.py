"""The BM25 side's saved postings (``sqlite_postings``): a saved term brought up to date through the change
log gives exactly FTS5's own ``bm25()`` hits and scores after adds, deletes and updates, from two threads
and two processes while another writes, and after a SIGKILL in the middle of saves and writes."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from esrag.config import Settings
from esrag.stores import sqlite_bm25, sqlite_postings
from esrag.stores.sqlite import SCHEMA_VERSION, SQLiteStore
from esrag.stores.sqlite_postings import unpack
from esrag.stores.sqlite_sql import bm25_sql, query_terms
from esrag.types import Chunk, EmbeddedChunk, IndexMeta, SearchRequest
from tests.fixtures.processes import sigkill_mid_run

pytestmark = pytest.mark.integration

VOCAB = ["the", "of", "and", "a", "Über", "über"] + [f"w{i}" for i in range(300)]
QUERIES = ["the of", "and a w1", "über w2 w3 the", "w5", "a a the w7 w11", "W0 THE", "nothing-here", "w299 of"]


def _texts(seed: int, n: int) -> list[str]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(VOCAB) + 1)
    p /= p.sum()
    return [" ".join(VOCAB[i] for i in rng.choice(len(VOCAB), size=int(rng.integers(1, 40)), p=p)) for _ in range(n)]


def _chunks(texts: list[str], prefix: str) -> list[EmbeddedChunk]:
    return [EmbeddedChunk(Chunk(id=f"{prefix}{i}", doc_id=f"{prefix}{i}", source="s", title=t[:12], text=t,
                                chunk_index=0, chunk_count=1, start=0, end=1, chunk_sha=f"{prefix}{i}",
                                doc_sha=f"{prefix}{i}"), np.array([1.0, 0.5], dtype=np.float32))
            for i, t in enumerate(texts)]


def _store(directory: Path) -> SQLiteStore:
    return SQLiteStore(Settings(sqlite_dir=str(directory), index="t"))


def _fts5(path: Path, text: str) -> dict[str, float]:
    """FTS5's own answer: every matching chunk's id and -bm25()."""
    built = bm25_sql(query_terms(text), {}, 100_000)
    if built is None:
        return {}
    with sqlite3.connect(path) as conn:
        return {r[1]: float(r[9]) for r in conn.execute(*built)}


def _ours(store: SQLiteStore, text: str) -> dict[str, float]:
    return {c.id: c.score for c in store.search(SearchRequest(text=text, vector=None, candidates=100_000)).bm25}


def _fts5_top(path: Path, text: str, k: int) -> list[tuple[str, float]]:
    built = bm25_sql(query_terms(text), {}, k)
    if built is None:
        return []
    with sqlite3.connect(path) as conn:
        return [(r[1], float(r[9])) for r in conn.execute(*built)]


def _top(store: SQLiteStore, text: str, k: int) -> list[tuple[str, float]]:
    """The top ``k`` alone: ranked from the prefixes (and saved heads), not by scoring every row."""
    return [(c.id, c.score) for c in store.search(SearchRequest(text=text, vector=None, candidates=k)).bm25]


def _saved_terms(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT term, generation FROM bm25_postings"))


def _lengths_generation(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT generation FROM bm25_lengths").fetchone()[0])


def _filled(directory: Path, searched: bool = True) -> Path:
    """A store in ``directory`` with 300 chunks (ids a0..a299), closed; with ``searched``, every query was
    run once first, so the common terms are saved. The database's path."""
    store = _store(directory)
    store.ensure_index(IndexMeta(model="m", dims=2))
    store.write(_chunks(_texts(1, 300), "a"))
    if searched:
        for q in QUERIES:
            _ours(store, q)
    store.close()
    return store.path


@pytest.fixture(autouse=True)
def small_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    """Save terms of 20 rows or more, and heads of 5 rows for terms in 40 or more (the store's tests hold
    hundreds of rows, not millions; top k from prefixes of 1, 4, 16 ... rows, the first two from a head)."""
    monkeypatch.setattr(sqlite_postings, "PERSIST_MIN", 20)
    monkeypatch.setattr(sqlite_bm25, "HEAD_MIN", 40)
    monkeypatch.setattr(sqlite_bm25, "HEAD_ROWS", 5)
    monkeypatch.setattr(sqlite_bm25, "PREFIX", 1)
    monkeypatch.setattr(sqlite_postings, "REFRESH", 30)
    monkeypatch.setattr(sqlite_postings, "DELTA_MAX", 200)
    monkeypatch.setattr(sqlite_postings, "LENGTHS_MIN", 20)


def test_saved_postings_match_fts5_after_adds_deletes_and_updates(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.ensure_index(IndexMeta(model="m", dims=2))
    store.write(_chunks(_texts(1, 400), "a"))
    path = store.path
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    store.close()  # waits for the queued saves
    saved = _saved_terms(path)
    assert {"the", "of", "über", "w1"} <= set(saved), saved
    assert _lengths_generation(path) == saved["the"]
    first = dict(saved)
    # adds, deletes, updates (new text for old ids, and a title-only change): the saved lists stay, the
    # change log brings them up to date
    store = _store(tmp_path)
    store.write(_chunks(_texts(2, 25), "b"), delete_ids=[f"a{i}" for i in range(0, 400, 17)])
    store.write(_chunks(_texts(3, 10), "a"))
    store.write([EmbeddedChunk(dataclasses.replace(c.chunk, title="the of the"), c.embedding)
                 for c in _chunks(_texts(4, 3), "a")[:3]])
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    assert store._saved is not None and store._saved.delta.generation > 0  # read through the change log
    # enough changes for a refresh: the terms are saved again at the newer generation
    store.write(_chunks(_texts(5, 60), "c"))
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    store.close()
    later = _saved_terms(path)
    assert later["the"] > first["the"]
    assert _lengths_generation(path) == later["the"]  # the lengths too, saved again
    # a fresh process's store reads the saved lists (and the log after them) with the same answers
    store = _store(tmp_path)
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    store.close()


def test_lists_saved_in_the_old_format_or_damaged_still_give_fts5s_answer(tmp_path: Path) -> None:
    """A store of schema 5 (lists saved as int64 rowids, no format column) is upgraded and its lists read as
    they are; a damaged list is read from FTS5 instead and saved again."""
    path = _filled(tmp_path)
    with sqlite3.connect(path) as conn:
        saved = conn.execute("SELECT term, rows, freqs, format FROM bm25_postings").fetchall()
        assert {"the", "of", "w1"} <= {t for t, *_ in saved} and all(f != 0 for *_, f in saved)
        for term, rows, freqs, fmt in saved:
            got_rows, got_counts = unpack(rows, freqs, fmt, 2)
            old = (b"\x07" * 13, freqs, fmt) if term == "the" else (
                got_rows.astype("<i8").tobytes(), got_counts.astype("<u2").tobytes(), 0)
            conn.execute("UPDATE bm25_postings SET rows = ?, freqs = ?, format = ? WHERE term = ?", (*old, term))
        for table in ("bm25_postings", "bm25_lengths"):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN format")
        conn.execute("DROP TABLE bm25_heads")
        conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    store = _store(tmp_path)
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
        assert _top(store, q, 3) == _fts5_top(path, q, 3), q
    store.close()
    with sqlite3.connect(path) as conn:
        rows, freqs, fmt = conn.execute("SELECT rows, freqs, format FROM bm25_postings WHERE term = 'the'").fetchone()
        (expected,) = conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'the'").fetchone()
        version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM bm25_heads").fetchone()[0] > 0  # the table is back, in use
    assert len(unpack(rows, freqs, fmt, 2)[0]) == expected  # saved again, readable
    assert version == str(SCHEMA_VERSION)


def test_the_log_is_pruned_and_terms_too_far_behind_are_read_from_fts5_again(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    assert _saved_terms(path)
    store = _store(tmp_path)
    for round_ in range(3):  # 3 x 200 changes: over 2 x DELTA_MAX, so the writer prunes
        store.write(_chunks(_texts(10 + round_, 200), f"p{round_}"))
    with sqlite3.connect(path) as conn:
        logged = conn.execute("SELECT count(*) FROM bm25_changes").fetchone()[0]
        floor = int(conn.execute("SELECT value FROM meta WHERE key = 'bm25_floor'").fetchone()[0])
    assert logged <= 2 * sqlite_postings.DELTA_MAX and floor > 0
    assert all(g >= floor for g in _saved_terms(path).values())
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    store.close()


def test_two_threads_search_while_another_process_and_a_thread_write(tmp_path: Path) -> None:
    path = _filled(tmp_path)
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[2])\n"
            "from tests.integration.test_sqlite_postings import _store, _chunks, _texts\n"
            "from pathlib import Path\n"
            "s = _store(Path(sys.argv[1]))\n"
            "for r in range(15): s.write(_chunks(_texts(100 + r, 20), f'x{r}'), delete_ids=[f'a{r}'])\n"
            "s.close()\n")
    repo = str(Path(__file__).resolve().parents[2])
    writer = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), repo])
    store = _store(tmp_path)
    errors: list[BaseException] = []
    stop = threading.Event()

    def search() -> None:
        try:
            while not stop.is_set():
                for q in QUERIES:
                    hits = store.search(SearchRequest(text=q, vector=None, candidates=50)).bm25
                    assert all(np.isfinite(h.score) and h.score > 0 for h in hits)
                    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        except BaseException as e:  # reported below
            errors.append(e)

    readers = [threading.Thread(target=search) for _ in range(2)]
    for t in readers:
        t.start()
    for r in range(10):
        store.write(_chunks(_texts(200 + r, 20), f"y{r}"))
    assert writer.wait(timeout=120) == 0
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:1]
    for q in QUERIES:
        assert _ours(store, q) == _fts5(path, q), q
    store.close()


_KILLED = """
import sys, threading
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from esrag.stores import sqlite_bm25, sqlite_postings
sqlite_postings.PERSIST_MIN, sqlite_postings.REFRESH = 20, 5
sqlite_bm25.HEAD_MIN, sqlite_bm25.HEAD_ROWS, sqlite_bm25.PREFIX = 40, 5, 1
from esrag.types import SearchRequest
from tests.integration.test_sqlite_postings import QUERIES, _chunks, _store, _texts
s = _store(Path(sys.argv[1]))
print(0, flush=True)
r = 0
while True:  # writes and reads: the reads save terms again and again, in the background
    s.write(_chunks(_texts(1000 + r, 10), f"k{r}"), delete_ids=[f"a{r}"])
    for q in QUERIES:
        s.search(SearchRequest(text=q, vector=None, candidates=3))
    r += 1
"""


def test_a_sigkill_during_saves_and_writes_leaves_postings_that_match_a_clean_rebuild(tmp_path: Path) -> None:
    path = _filled(tmp_path, searched=False)
    repo = Path(__file__).resolve().parents[2]
    for after in (0.3, 1.1):
        sigkill_mid_run(_KILLED, [str(tmp_path), str(repo)], repo, after)
        assert _saved_terms(path)
        store = _store(tmp_path)
        ours = {q: _ours(store, q) for q in QUERIES}
        store.close()
        # a clean rebuild: the same chunks written into a new store, nothing saved
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT id, title, text FROM chunks ORDER BY rowid").fetchall()
        clean = _store(tmp_path / f"clean{after}")
        clean.ensure_index(IndexMeta(model="m", dims=2))
        clean.write([EmbeddedChunk(Chunk(id=i, doc_id=i, source="s", title=ti, text=te, chunk_index=0,
                                         chunk_count=1, start=0, end=1, chunk_sha=i, doc_sha=i),
                                   np.array([1.0, 0.5], dtype=np.float32)) for i, ti, te in rows])
        for q in QUERIES:
            assert ours[q] == pytest.approx(_ours(clean, q), rel=1e-12, abs=0), q
            assert ours[q] == _fts5(path, q), q
        store = _store(tmp_path)  # top 3 from the heads the killed process saved (those that hold)
        for q in QUERIES:
            assert _top(store, q, 3) == _fts5_top(path, q, 3), q
        store.close()
        clean.close()
