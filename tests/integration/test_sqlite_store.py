"""SQLite-specific behaviour of the embedded store: query sanitising, analyzer parity, file errors, WAL,
crash consistency under SIGKILL and visibility of other processes' writes. The Store contract itself is
checked for both stores by test_store_contract.py."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from esrag.config import Settings
from esrag.errors import CorruptStoreError, IndexNotFoundError, ModelMismatchError, StoreError
from esrag.stores import sqlite_bm25
from esrag.stores.sqlite import SCHEMA_VERSION, SQLiteStore, match_expression, query_terms
from esrag.stores.sqlite import bm25_sql as bm25_store_sql
from esrag.stores.sqlite_bm25 import Bm25Index
from esrag.types import Chunk, EmbeddedChunk, IndexMeta, SearchRequest
from tests.fixtures.processes import sigkill_mid_run

pytestmark = pytest.mark.integration

DIMS = 8
META = IndexMeta(model="test-model", dims=DIMS)
REPO = Path(__file__).resolve().parents[2]

# Shared by the subprocesses below: builds chunks like the tests do.
CHUNK_HELPERS = textwrap.dedent("""
    import sys
    import numpy as np
    from esrag.config import Settings
    from esrag.stores.sqlite import SQLiteStore
    from esrag.types import Chunk, EmbeddedChunk, IndexMeta

    def chunk(cid, text, vector, doc="doc"):
        c = Chunk(id=cid, doc_id=doc, source=doc + ".txt", title="", text=text, chunk_index=0, chunk_count=1,
                  start=0, end=len(text), chunk_sha="s", doc_sha="d")
        return EmbeddedChunk(c, np.asarray(vector, dtype=np.float32))
""")


def vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIMS).astype(np.float32)
    return v / np.linalg.norm(v)


def chunk(cid: str, text: str, title: str = "", doc_id: str = "doc", seed: int | None = None,
          metadata: dict[str, Any] | None = None, embedding: Any = None) -> EmbeddedChunk:
    c = Chunk(id=cid, doc_id=doc_id, source=f"{doc_id}.txt", title=title, text=text, chunk_index=0,
              chunk_count=1, start=0, end=len(text), chunk_sha=f"s-{cid}", doc_sha=f"d-{doc_id}",
              metadata=metadata or {})
    return EmbeddedChunk(c, vec(zlib.crc32(cid.encode()) if seed is None else seed) if embedding is None else embedding)


def settings(directory: Path | str, index: str = "t") -> Settings:
    return Settings(sqlite_dir=str(directory), index=index)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(settings(tmp_path / "store"))
    s.ensure_index(META)
    yield s
    s.close()


def bm25_ids(store: SQLiteStore, text: str, **kw: Any) -> list[str]:
    return [h.id for h in store.search(SearchRequest(text=text, vector=None, candidates=10, **kw)).bm25]


def fts_consistent(path: Path) -> tuple[int, int]:
    """(chunk rows, FTS rows) after SQLite's and FTS5's own integrity checks passed."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # rank=1: also compare the FTS index with the external content table (raises if they differ)
        conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        fts = conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]
        return int(chunks), int(fts)
    finally:
        conn.close()


def run_python(code: str, *args: str, unprivileged: bool = False, timeout: float = 60) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it prints one JSON line, returned parsed. ``unprivileged``: as
    root, drop the capabilities that let root ignore file permissions (with util-linux ``setpriv``)."""
    prefix = []
    if unprivileged and os.geteuid() == 0:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    proc = subprocess.run([*prefix, sys.executable, "-c", CHUNK_HELPERS + textwrap.dedent(code), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# --- construction and files ---------------------------------------------------------------------------


def test_construction_does_no_io_and_reads_on_a_missing_file_name_it(tmp_path: Path) -> None:
    s = SQLiteStore(settings(tmp_path / "nowhere", index="idx"))
    assert s.describe() == {"store": "sqlite", "location": str(tmp_path / "nowhere" / "idx.db"), "index": "idx"}
    assert not s.exists() and s.read_meta() is None
    with pytest.raises(IndexNotFoundError, match="esrag ingest") as e:
        s.count()
    assert str(tmp_path / "nowhere" / "idx.db") in str(e.value)
    assert not (tmp_path / "nowhere").exists()  # only ensure_index creates the directory


def test_default_location_is_dot_esrag_slash_esrag_db() -> None:
    assert SQLiteStore(Settings()).describe()["location"] == str(Path(".esrag") / "esrag.db")


def test_store_is_in_wal_mode(store: SQLiteStore) -> None:
    store.write([chunk("a", "hello")])
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_file_that_is_not_sqlite_is_a_corrupt_store_named_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    path.write_bytes(b"definitely not an SQLite database\n" * 200)
    s = SQLiteStore(settings(tmp_path))
    for op in (lambda: s.ensure_index(META), s.count, s.exists, s.drop):
        with pytest.raises(CorruptStoreError, match=str(path)):
            op()
    assert path.read_bytes().startswith(b"definitely")  # drop refuses to delete a file that is not ours


def test_foreign_sqlite_database_is_rejected_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE accounts (name TEXT)")
    conn.commit()
    conn.close()
    s = SQLiteStore(settings(tmp_path))
    with pytest.raises(CorruptStoreError, match="not an esrag store") as e:
        s.ensure_index(META)
    assert str(path) in str(e.value)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    conn.close()


def test_damaged_store_pages_raise_corrupt_store_error(tmp_path: Path) -> None:
    s = SQLiteStore(settings(tmp_path))
    s.ensure_index(META)
    s.write([chunk(f"c{i}", f"text number {i} " * 20) for i in range(300)])
    s.close()
    data = bytearray((tmp_path / "t.db").read_bytes())
    page = 4096
    data[page:] = bytes(range(256)) * ((len(data) - page) // 256) + bytes((len(data) - page) % 256)
    (tmp_path / "t.db").write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=str(tmp_path / "t.db")):
        SQLiteStore(settings(tmp_path)).count()


def test_empty_file_from_an_interrupted_creation_is_completed(tmp_path: Path) -> None:
    (tmp_path / "t.db").write_bytes(b"")
    s = SQLiteStore(settings(tmp_path))
    with pytest.raises(IndexNotFoundError):
        s.count()
    assert s.ensure_index(META) is True
    assert s.write([chunk("a", "hello")]).written == 1
    s.close()


def test_store_from_a_newer_schema_version_is_a_clear_error(store: SQLiteStore) -> None:
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="newer esrag"):
        SQLiteStore(store.settings).count()


def test_model_or_dims_mismatch_names_both_and_the_file(store: SQLiteStore) -> None:
    assert store.ensure_index(META) is False
    fresh = SQLiteStore(store.settings)
    for other in (IndexMeta(model="other-model", dims=DIMS), IndexMeta(model="test-model", dims=DIMS * 2)):
        with pytest.raises(ModelMismatchError) as e:
            fresh.ensure_index(other)
        assert "test-model" in str(e.value) and other.model in str(e.value) and str(store.path) in str(e.value)
    assert fresh.read_meta() == META
    fresh.close()


def test_unwritable_locations_raise_store_errors_naming_the_path(tmp_path: Path) -> None:
    root = tmp_path
    (root / "ro").mkdir(mode=0o555)
    existing = SQLiteStore(settings(root / "rw"))
    existing.ensure_index(META)
    existing.write([chunk("a", "hello world")])
    existing.close()
    (root / "rw" / "t.db").chmod(0o444)
    out = run_python("""
        import json
        from esrag.errors import StoreError
        def attempt(directory, op):
            s = SQLiteStore(Settings(sqlite_dir=directory, index="t"))
            try:
                return ["ok", op(s)]
            except StoreError as e:
                return [type(e).__name__, str(e)]
        print(json.dumps({
            "ro_dir": attempt(sys.argv[1], lambda s: s.ensure_index(IndexMeta(model="test-model", dims=8))),
            "ro_parent": attempt(sys.argv[1] + "/sub", lambda s: s.ensure_index(IndexMeta(model="m", dims=8))),
            "ro_file_count": attempt(sys.argv[2], lambda s: s.count().chunks),
            "ro_file_search": attempt(sys.argv[2], lambda s: [h.id for h in s.search(__import__(
                "esrag.types").types.SearchRequest(text="hello", vector=[1.0] * 8, candidates=3)).bm25]),
            "ro_file_write": attempt(sys.argv[2], lambda s: s.write([chunk("b", "x", [1.0] * 8)]).written),
        }))
    """, str(root / "ro"), str(root / "rw"), unprivileged=True)
    assert out["ro_dir"][0] == "StoreError" and str(root / "ro" / "t.db") in out["ro_dir"][1]
    assert "not writable" in out["ro_dir"][1]
    assert out["ro_parent"][0] == "StoreError" and str(root / "ro" / "sub") in out["ro_parent"][1]
    assert out["ro_file_count"] == ["ok", 1]  # a read-only store can still be read and searched
    assert out["ro_file_search"] == ["ok", ["a"]]
    assert out["ro_file_write"][0] == "StoreError" and "read-only" in out["ro_file_write"][1]
    assert str(root / "rw" / "t.db") in out["ro_file_write"][1]


def test_drop_removes_the_file_and_its_wal_and_shm(store: SQLiteStore) -> None:
    store.write([chunk("a", "hello")])
    assert Path(f"{store.path}-wal").exists()
    assert store.drop() is True
    assert not any(Path(f"{store.path}{s}").exists() for s in ("", "-wal", "-shm"))
    assert store.drop() is False


# --- BM25 ---------------------------------------------------------------------------------------------


@pytest.fixture
def fts_store(store: SQLiteStore) -> SQLiteStore:
    store.write([
        chunk("greet", "Hello, WORLD!", title="Greeting"),
        chunk("ops", "and or not near"),
        chunk("cols", "text title column"),
        chunk("accents", "héllo wörld 日本語"),
        chunk("prefix", "hellothere"),
        chunk("other", "nothing relevant here"),
    ])
    return store


@pytest.mark.parametrize(("query", "expected"), [
    ('"', set()),
    ('"unbalanced', set()),
    ("*", set()),
    ("hello*", {"greet"}),  # no prefix query: "hellothere" does not match
    ("-hello", {"greet"}),
    ("hello AND world", {"greet", "ops"}),  # AND is a word, ORed like ES match
    ("NOT hello", {"greet", "ops"}),
    ("(hello OR", {"greet", "ops"}),
    ("NEAR(hello world)", {"greet", "ops"}),
    ("text: hello", {"cols", "greet"}),  # not a column filter
    ("title:nothing", {"cols", "other"}),
    ("{title text}: relevant", {"cols", "other"}),
    ("^hello + world", {"greet"}),
    ("HÉLLO", {"accents"}),  # case folded, diacritics kept (like ES standard)
    ("hello\x00world", {"greet"}),
    ("日本語", {"accents"}),
    ("", set()),
    ("  !!! ... ", set()),
])
def test_user_text_is_never_parsed_as_fts5_syntax(fts_store: SQLiteStore, query: str, expected: set[str]) -> None:
    assert set(bm25_ids(fts_store, query)) == expected


def test_query_terms_split_like_unicode61() -> None:
    assert query_terms("Hello, WORLD! don't e\u0301te a_b 3.14") == ["Hello", "WORLD", "don", "t", "e\u0301te",
                                                                     "a", "b", "3", "14"]
    assert match_expression('a "b" NEAR(c)') == '"a" OR "b" OR "NEAR" OR "c"'
    assert match_expression(" - ") is None


def test_long_queries_work(fts_store: SQLiteStore) -> None:
    assert "greet" in bm25_ids(fts_store, " ".join(["filler"] * 2000 + ["hello"]))


def test_bm25_tokenizes_like_the_standard_analyzer(fts_store: SQLiteStore) -> None:
    hits = fts_store.search(SearchRequest(text="hello world", vector=None, candidates=10)).bm25
    assert hits[0].id == "greet" and hits[0].score > 0
    assert bm25_ids(fts_store, "WORLD.")[0] == "greet"
    assert bm25_ids(fts_store, "hello-world")[0] == "greet"
    assert bm25_ids(fts_store, "greeting")[0] == "greet"  # the title is searched too
    assert "accents" not in bm25_ids(fts_store, "hello world")  # no diacritic folding


def test_upsert_reindexes_changed_text_and_keeps_fts_in_sync(store: SQLiteStore) -> None:
    store.write([chunk("a", "old words"), chunk("b", "other")])
    store.write([chunk("a", "new words")])
    assert bm25_ids(store, "old") == []
    assert bm25_ids(store, "new") == ["a"]
    store.delete_chunks(["b"])
    store.close()
    assert fts_consistent(store.path) == (1, 1)


# --- writes, filters, dense -------------------------------------------------------------------------


def test_bad_items_are_reported_with_their_source_and_the_rest_written(store: SQLiteStore) -> None:
    result = store.write([
        chunk("good1", "fine"),
        chunk("dims", "x", doc_id="wrongdims", embedding=np.ones(DIMS + 1, dtype=np.float32)),
        chunk("dtype", "x", doc_id="strings", embedding=np.array(["a"] * DIMS)),
        chunk("nan", "x", doc_id="nan", embedding=np.full(DIMS, np.nan, dtype=np.float32)),
        chunk("zero", "x", doc_id="zero", embedding=np.zeros(DIMS, dtype=np.float32)),
        chunk("good2", "fine"),
    ])
    assert result.written == 2
    assert {(e.chunk_id, e.source) for e in result.errors} == {
        ("dims", "wrongdims.txt"), ("dtype", "strings.txt"), ("nan", "nan.txt"), ("zero", "zero.txt")}
    assert store.count().chunks == 2


@pytest.mark.parametrize("bad_at", [0, 5, 255, 256, 299])
def test_a_row_sqlite_refuses_inside_a_many_row_statement_fails_alone(store: SQLiteStore, bad_at: int) -> None:
    """Rows go ROWS_PER_STATEMENT (256) to a statement; a row SQLite itself refuses (a lone surrogate cannot be
    encoded when it is bound) fails only itself: the other rows of its statement and the next ones are written,
    and the FTS index holds exactly the rows written."""
    chunks = [chunk(f"c{i}", f"word{i} common", seed=i) for i in range(300)]
    chunks[bad_at] = chunk(f"c{bad_at}", "broken \ud800 text", seed=bad_at)
    result = store.write(chunks)
    assert result.written == 299
    assert [(e.chunk_id, e.reason.split(":")[0]) for e in result.errors] == [(f"c{bad_at}", "UnicodeEncodeError")]
    assert store.count().chunks == 299
    assert len(store.search(SearchRequest(text="common", vector=None, candidates=1000)).bm25) == 299
    assert bm25_ids(store, f"word{bad_at}") == []
    assert bm25_ids(store, f"word{(bad_at + 1) % 300}") == [f"c{(bad_at + 1) % 300}"]
    store.close()
    assert fts_consistent(store.path) == (299, 299)


def test_metadata_filters_compare_as_strings_on_both_sides(store: SQLiteStore) -> None:
    store.write([chunk(f"c{i}", "same words", metadata={"n": i, "even": i % 2 == 0, "lang": "en"}, seed=i)
                 for i in range(6)])
    for filters, expected in (({"n": ("3",)}, {"c3"}), ({"even": ("true",), "n": ("1", "2", "4")}, {"c2", "c4"}),
                              ({"lang": ("de",)}, set()), ({"missing": ("x",)}, set()),
                              ({"doc_id": ("doc",), "n": ("5",)}, {"c5"})):
        resp = store.search(SearchRequest(text="words", vector=vec(0), candidates=10, filters=filters))
        assert {h.id for h in resp.bm25} == expected, filters
        assert {h.id for h in resp.dense} == expected, filters


def test_dense_scores_follow_es_cosine_and_ties_are_deterministic(store: SQLiteStore) -> None:
    store.write([chunk("same", "x", embedding=vec(1)), chunk("opposite", "y", embedding=-vec(1) * 3)])
    dense = store.search(SearchRequest(text=None, vector=vec(1) * 5, candidates=5)).dense
    assert [h.id for h in dense] == ["same", "opposite"]
    assert dense[0].score == pytest.approx(1.0, abs=1e-6) and dense[1].score == pytest.approx(0.0, abs=1e-6)
    assert store.get_embeddings(["opposite"])["opposite"] == pytest.approx(-vec(1) * 3)  # stored as given


def test_explain_request_is_pure_and_hides_the_vector(tmp_path: Path) -> None:
    s = SQLiteStore(settings(tmp_path / "none"))
    out = s.explain_request(SearchRequest(text='say "hi"', vector=vec(0), candidates=7, filters={"k": ("v",)}))
    assert out["bm25"]["params"][0] == '"say" OR "hi"' and out["bm25"]["params"][-1] == 7
    assert "MATCH ?" in out["bm25"]["sql"] and "json_extract" in out["bm25"]["sql"]
    assert out["dense"]["vector"] == f"<{DIMS} floats>" and out["dense"]["filter_params"][-1] == "v"
    assert not (tmp_path / "none").exists()


def test_writer_thread_and_reader_threads_share_the_store(store: SQLiteStore) -> None:
    failures: list[BaseException] = []

    def writer() -> None:
        try:
            for b in range(10):
                store.write([chunk(f"w{b}-{i}", f"batch {b} item {i}", doc_id=f"d{b}") for i in range(50)])
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    t = threading.Thread(target=writer)
    t.start()
    while t.is_alive():
        store.list_chunks(["d0", "d1"])
        store.get_embeddings(["w0-0"])
        store.search(SearchRequest(text="batch", vector=vec(0), candidates=5))
    t.join()
    assert not failures
    assert store.count().chunks == 500


def test_searches_in_many_threads_run_while_another_thread_writes(store: SQLiteStore) -> None:
    """Readers do not queue behind each other or behind the writer, never see "database is locked", and
    every search sees whole transactions: each write is one 50-chunk document."""
    failures: list[BaseException] = []
    seen: list[int] = []
    writing = threading.Event()
    done = threading.Event()

    def writer() -> None:
        try:
            for b in range(20):
                store.write([chunk(f"w{b}-{i}", f"batch {b} item {i}", doc_id=f"d{b}") for i in range(50)])
                writing.set()
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)
        finally:
            writing.set()
            done.set()

    def reader() -> None:
        try:
            writing.wait()
            while not done.is_set():
                hits = store.search(SearchRequest(text="batch", vector=vec(0), candidates=5000))
                assert len(hits.dense) % 50 == 0 and len(hits.bm25) % 50 == 0
                seen.append(len(hits.dense))
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert store.count().chunks == 1000
    assert len(set(seen)) > 1  # the readers saw the index grow while it was written


def test_each_thread_reads_through_its_own_connection_and_shares_the_matrix(store: SQLiteStore) -> None:
    store.write([chunk(f"c{i}", f"text {i}", seed=i) for i in range(10)])
    conns: list[object] = []
    matrices: list[object] = []

    def search() -> None:
        store.search(SearchRequest(text=None, vector=vec(1), candidates=3))
        conns.append(store._reader())
        assert store._dense is not None and store._dense._view is not None
        matrices.append(store._dense._view.matrix)

    for _ in range(3):
        t = threading.Thread(target=search)
        t.start()
        t.join()
    assert len({id(c) for c in conns}) == 3
    assert len({id(m) for m in matrices}) == 1  # loaded once, by the first search


# --- other processes ------------------------------------------------------------------------------------


def test_writes_by_another_process_are_visible_to_an_open_stores_searches(store: SQLiteStore) -> None:
    store.write([chunk(f"c{i}", f"text {i} common", seed=i) for i in range(20)])
    target = vec(999)
    before = store.search(SearchRequest(text="fresh common", vector=target, candidates=3))  # loads both caches
    assert "new" not in [h.id for h in before.dense + before.bm25]
    old_score = before.bm25[0].score
    run_python("""
        import json
        s = SQLiteStore(Settings(sqlite_dir=sys.argv[1], index="t"))
        s.write([chunk("new", "fresh", np.frombuffer(bytes.fromhex(sys.argv[2]), dtype=np.float32))])
        s.delete_chunks(["c0"])
        s.close()
        print(json.dumps({}))
    """, str(store.path.parent), target.tobytes().hex())
    after = store.search(SearchRequest(text="fresh common", vector=target, candidates=3))
    assert after.dense[0].id == "new" and after.dense[0].score == pytest.approx(1.0, abs=1e-6)
    assert after.bm25[0].id == "new"  # BM25 postings were reloaded: "fresh" is new
    assert after.bm25[1].score != old_score  # and "common"'s idf and avgdl changed
    assert "c0" not in [h.id for h in store.search(SearchRequest(text=None, vector=vec(0), candidates=25)).dense]
    assert "c0" not in [h.id for h in store.search(SearchRequest(text="common", vector=None, candidates=25)).bm25]
    assert store.count().chunks == 20


@pytest.mark.slow
@pytest.mark.parametrize("kill_after_s", [0.4, 1.1])
def test_sigkill_during_writes_leaves_a_consistent_store(tmp_path: Path, kill_after_s: float) -> None:
    code = CHUNK_HELPERS + textwrap.dedent("""
        s = SQLiteStore(Settings(sqlite_dir=sys.argv[1], index="t"))
        s.ensure_index(IndexMeta(model="test-model", dims=8))
        rng = np.random.default_rng(0)
        b = 0
        while True:
            # new chunks, re-written chunks with new text (FTS update trigger) and deletions
            s.write([chunk(f"c{b}-{i}", f"batch {b} word{i % 7} " * 30, rng.standard_normal(8), doc=f"d{b}")
                     for i in range(300)])
            if b:
                s.write([chunk(f"c{b - 1}-{i}", f"rewritten {b} " * 20, rng.standard_normal(8), doc=f"d{b - 1}")
                         for i in range(0, 300, 3)])
                s.delete_documents([f"d{b - 1}"]) if b % 5 == 0 else s.delete_chunks([f"c{b - 1}-1"])
            print(b, flush=True)
            b += 1
    """)
    sigkill_mid_run(code, [str(tmp_path)], REPO, kill_after_s)
    path = tmp_path / "t.db"
    chunks, fts = fts_consistent(path)
    assert chunks == fts and chunks > 0
    s = SQLiteStore(settings(tmp_path))
    assert s.count().chunks == chunks
    assert bm25_ids(s, "batch")
    assert s.write([chunk("after", "after the crash")]).written == 1
    assert s.search(SearchRequest(text="crash", vector=vec(0), candidates=5)).bm25[0].id == "after"
    s.close()
    assert fts_consistent(path) == (chunks + 1, chunks + 1)


@pytest.mark.parametrize("analyzer", ["standard", "english"])
def test_numpy_bm25_equals_fts5_bm25(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, analyzer: str) -> None:
    """Bm25Index (FTS5's formula over FTS5's postings, in numpy) returns what the plain FTS5 query returns:
    same chunks, same order (ties by rowid, also at the cut), same scores, with and without filters, with
    repeated, inflected and non-ASCII query terms, for both analyzers (english: Porter stemming); and it
    answers every query itself."""
    answered = []
    real = Bm25Index.top

    def spy(self: Bm25Index, *args: Any) -> Any:
        out = real(self, *args)
        answered.append(out is not None)
        return out

    monkeypatch.setattr(Bm25Index, "top", spy)
    rng = np.random.default_rng(3)
    stop = ["the", "The", "OF", "and,", "a", "to", "in", "is", "naïve", "café", "ΟΔΟΣ", "οδος", "İstanbul"]
    inflected = ["connect", "Connecting", "connected", "connections", "running", "runs", "ran", "generalization",
                 "generalizations", "ponies", "pony", "relational", "CARESSES", "happily", "agreed", "feed"]
    vocab = (stop + inflected + [f"w{i}" for i in range(400)]
             + ["Straße", "STRASSE", "e\u0301te", "日本語", "x_y", "ǅemal"])
    common = len(stop) + len(inflected)
    weights = np.array([0.6] * common + [1.0 / (i + 1) for i in range(len(vocab) - common)])
    weights /= weights.sum()

    def text(n: int) -> str:
        return " ".join(vocab[i] for i in rng.choice(len(vocab), size=n, p=weights))

    s = SQLiteStore(settings(tmp_path))
    s.ensure_index(dataclasses.replace(META, analyzer=analyzer))
    texts = [text(int(rng.integers(1, 60))) for _ in range(1200)]
    texts += texts[:300]  # identical rows: ties in score, broken by rowid
    texts += [text(200), text(20_000)]  # row sizes that take 2- and 3-byte varints in FTS5's _docsize
    s.write([chunk(f"c{i}", t, title=text(int(rng.integers(0, 3))), doc_id=f"d{i % 50}",
                   metadata={"part": str(i % 3)}) for i, t in enumerate(texts)])
    conn = sqlite3.connect(s.path)
    queries = [text(int(rng.integers(1, 6))) for _ in range(60)] + [
        "the the of", "ΟΔΟΣ οδος", "istanbul İSTANBUL", "STRASSE straße", "ǆemal Ǆemal", "nothing",
        "CONNECTION connects", "generalize generalized", "caress ponies'", "agree feeding"]
    for query in queries:
        for filters, candidates in (({}, 20), ({"part": ("1",)}, 20), ({}, 2000), ({"part": ("2", "0")}, 7)):
            got = s.search(SearchRequest(text=query, vector=None, candidates=candidates, filters=filters)).bm25
            built = bm25_store_sql(query, filters, candidates)
            assert built is not None
            want = conn.execute(*built).fetchall()
            assert [h.id for h in got] == [r[1] for r in want], (query, filters)
            assert [h.score for h in got] == pytest.approx([r[9] for r in want], rel=1e-12, abs=0), (query, filters)
    conn.close()
    if analyzer == "english":  # the stemmer is at work: inflections of one word match one another
        assert bm25_ids(s, "connects") == bm25_ids(s, "CONNECTION") != []
    else:
        assert bm25_ids(s, "connects") == []
    s.close()
    assert all(answered), (sum(answered), len(answered))  # folding (and stemming) is reproduced exactly


def test_terms_fts5_reads_differently_go_to_fts5(fts_store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net: a term whose folded form does not give FTS5's MATCH count is answered by FTS5."""
    monkeypatch.setattr(sqlite_bm25, "fold", lambda term: term)  # a wrong fold: no case folding
    answered = []
    real = Bm25Index.top
    monkeypatch.setattr(Bm25Index, "top", lambda self, *a: answered.append(out := real(self, *a)) or out)
    assert bm25_ids(fts_store, "WORLD") == ["greet"]
    assert answered[-1] is None
    assert bm25_ids(fts_store, "hello") == ["greet"] and answered[-1] is not None


def test_porter_terms_from_many_threads_at_once_match_the_single_threaded_ones() -> None:
    """``porter_term`` shares one in-memory FTS5 connection between every thread that searches: 8 threads
    stemming the same words at once (the cache cleared first) get what one thread gets."""
    words = [f"{stem}{suffix}" for stem in ("connect", "generaliz", "run", "pony", "relat", "agree", "feed")
             for suffix in ("", "s", "ing", "ed", "ation", "ations", "ies", "ional")]
    expected = [sqlite_bm25.porter_term(w) for w in words]
    assert sqlite_bm25.porter_term("Connecting") == "connect"
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def stem() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                sqlite_bm25.porter_term.cache_clear()
                results.append([sqlite_bm25.porter_term(w) for w in words])
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=stem) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 160
    assert all(r == expected for r in results)


def test_searches_during_an_analyzer_rebuild_never_fail(tmp_path: Path) -> None:
    """A new analyzer rebuilds the FTS5 index in one transaction while other threads search: every search
    answers (before the rebuild, by the old analyzer; after, by the new one), none raises."""
    s = SQLiteStore(settings(tmp_path, index="rebuild"))
    s.ensure_index(dataclasses.replace(META, analyzer="standard"))
    s.write([chunk(f"c{i}", f"connecting cluster number {i}") for i in range(300)]
            + [chunk("target", "connect to the cluster")])
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def search() -> None:
        try:
            while not stop.is_set():
                seen.append(len(s.search(SearchRequest(text="connect", vector=None, candidates=500)).bm25))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        assert s.ensure_index(dataclasses.replace(META, analyzer="english")) is False
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert set(seen) == {1, 301} and seen[-1] == 301  # standard: "connect" alone; english: every chunk
    assert s.read_meta().analyzer == "english"
    s.close()


def schema_1_store(tmp_path: Path) -> Path:
    """A store file with one chunk, as esrag wrote it before chunks recorded their section."""
    first = SQLiteStore(settings(tmp_path / "store"))
    first.ensure_index(META)
    first.write([chunk("old", "sections of old")])
    first.close()
    path = next((tmp_path / "store").glob("*.db"))
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE chunks DROP COLUMN section")
        conn.execute("ALTER TABLE chunks DROP COLUMN context")  # schema 4's
        for trigger in ("chunks_vi", "chunks_vd", "chunks_vu"):  # schema 3's vector change log
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE vector_changes")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()
    return path


def test_a_store_of_schema_1_gains_the_section_column_and_its_old_chunks_read_as_unknown(tmp_path: Path) -> None:
    path = schema_1_store(tmp_path)
    store = SQLiteStore(settings(tmp_path / "store"))
    try:
        new = dataclasses.replace(chunk("new", "sections of new", doc_id="new").chunk, chunk_index=3, section=2)
        store.write([EmbeddedChunk(new, vec(3))])
        hits = store.search(SearchRequest(text="sections", vector=vec(3), candidates=5, num_candidates=10))
        for side in (hits.bm25, hits.dense):
            assert {h.id: h.section for h in side} == {"old": -1, new.id: 2}
        assert {c.chunk.id: c.chunk.context for b in store.iter_chunks() for c in b} == {"old": "", new.id: ""}
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("SELECT count(*) FROM vector_changes").fetchone() == (1,)  # "new" is logged
    conn.close()


def test_two_threads_opening_a_schema_1_store_at_once_both_upgrade_it_safely(tmp_path: Path) -> None:
    path = schema_1_store(tmp_path)
    barrier = threading.Barrier(2)
    found: list[list[int]] = []
    errors: list[BaseException] = []

    def open_and_search() -> None:
        store = SQLiteStore(settings(tmp_path / "store"))  # a store object each, as two processes would have
        try:
            barrier.wait()
            hits = store.search(SearchRequest(text="sections", vector=None, candidates=5)).bm25
            found.append([h.section for h in hits])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            store.close()

    threads = [threading.Thread(target=open_and_search) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and found == [[-1], [-1]]
    with sqlite3.connect(path) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(chunks)")]
    conn.close()
    assert columns.count("section") == 1
