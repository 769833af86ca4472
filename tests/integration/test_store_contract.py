"""The Store contract (esrag/stores/base.py), checked against every store through ``make_store``.

Vectors are seeded random unit vectors of ``DIMS`` dimensions and the index meta names a fake model, so
no embedding model is needed. Run one store with ``-k elasticsearch`` or ``-k sqlite``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

from esrag.errors import IndexNotFoundError, ModelMismatchError
from esrag.stores.base import Store
from esrag.types import (
    Chunk,
    ChunkRef,
    Counts,
    DocRef,
    EmbeddedChunk,
    IndexMeta,
    MetadataValue,
    SearchRequest,
    WriteResult,
    sha256_hex,
)

pytestmark = pytest.mark.integration

DIMS = 8
META = IndexMeta(model="test-model", dims=DIMS)
MakeStore = Callable[..., Store]


def unit_vectors(n: int, seed: int = 0, dims: int = DIMS) -> np.ndarray:
    """``n`` random L2-normalised float32 vectors, shape (n, dims), reproducible from ``seed``."""
    v = np.random.default_rng(seed).normal(size=(n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_chunk(
    doc_id: str,
    idx: int,
    text: str,
    vector: np.ndarray,
    metadata: Mapping[str, MetadataValue] | None = None,
    title: str = "",
    chunk_count: int = 1,
    doc_sha: str | None = None,
    section: int = 0,
) -> EmbeddedChunk:
    """An EmbeddedChunk with a content-addressed id, source ``src/<doc_id>.md``."""
    doc_sha = doc_sha or sha256_hex("doc", doc_id)
    chunk_sha = sha256_hex(text)
    chunk = Chunk(
        id=Chunk.make_id(doc_id, doc_sha, idx, chunk_sha), doc_id=doc_id, source=f"src/{doc_id}.md",
        title=title, text=text, chunk_index=idx, chunk_count=chunk_count, start=0, end=len(text),
        chunk_sha=chunk_sha, doc_sha=doc_sha, metadata=dict(metadata or {}), section=section,
    )
    return EmbeddedChunk(chunk=chunk, embedding=np.asarray(vector, dtype=np.float32))


def ready(make_store: MakeStore, **overrides: Any) -> Store:
    store = make_store(**overrides)
    assert store.ensure_index(META) is True
    return store


def written(store: Store, chunks: list[EmbeddedChunk]) -> WriteResult:
    """Write ``chunks``, check all were written, and refresh (search and count may lag until then)."""
    result = store.write(chunks)
    assert result.errors == ()
    assert result.written == len(chunks)
    store.refresh()
    return result


def ids(hits: list[Any]) -> list[str]:
    return [h.id for h in hits]


# -- index lifecycle ---------------------------------------------------------------------------------------


def test_new_store_has_no_index(make_store: MakeStore) -> None:
    store = make_store()
    assert store.exists() is False
    assert store.read_meta() is None
    assert store.drop() is False
    desc = store.describe()
    assert desc["store"] == store.name and desc["index"] and desc["location"]


def test_ensure_index_creates_records_meta_and_is_idempotent(make_store: MakeStore) -> None:
    store = make_store()
    assert store.ensure_index(META) is True
    assert store.exists() is True
    meta = store.read_meta()
    assert meta is not None and (meta.model, meta.dims) == ("test-model", DIMS)
    assert store.ensure_index(META) is False
    assert store.count() == Counts(documents=0, chunks=0)


@pytest.mark.parametrize("other", [IndexMeta("other-model", dims=DIMS), IndexMeta("test-model", dims=16)])
def test_ensure_index_with_another_model_raises_naming_both(make_store: MakeStore, other: IndexMeta) -> None:
    store = ready(make_store)
    with pytest.raises(ModelMismatchError) as exc:
        store.ensure_index(other)
    message = str(exc.value)
    assert "test-model" in message and other.model in message
    assert str(DIMS) in message and str(other.dims) in message


def test_drop_deletes_the_index(make_store: MakeStore) -> None:
    store = ready(make_store)
    written(store, [make_chunk("d", 0, "some text", unit_vectors(1)[0])])
    assert store.drop() is True
    assert store.exists() is False
    assert store.drop() is False
    assert store.ensure_index(META) is True
    assert store.count() == Counts(documents=0, chunks=0)


# -- writes ------------------------------------------------------------------------------------------------


def test_write_is_upsert_by_id_and_visible_on_return(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(3)
    chunks = [make_chunk("d", i, f"chunk number {i}", vecs[i], chunk_count=3) for i in range(3)]
    written(store, chunks)
    assert store.count() == Counts(documents=1, chunks=3)
    written(store, chunks)
    assert store.count() == Counts(documents=1, chunks=3)


def test_rewriting_an_id_replaces_its_content(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(2)
    first = make_chunk("d", 0, "original wording", v[0])
    written(store, [first])
    replaced = EmbeddedChunk(dataclasses.replace(first.chunk, text="replacement wording"), embedding=v[1])
    written(store, [replaced])
    assert store.count().chunks == 1
    hits = store.search(SearchRequest(text="replacement", vector=None, candidates=5)).bm25
    assert ids(hits) == [first.chunk.id] and hits[0].text == "replacement wording"
    np.testing.assert_allclose(store.get_embeddings([first.chunk.id])[first.chunk.id], v[1], atol=1e-6)


def test_write_nothing(make_store: MakeStore) -> None:
    store = ready(make_store)
    assert store.write([]) == WriteResult(written=0)
    assert store.count() == Counts(documents=0, chunks=0)


def test_count_distinct_documents_and_chunks(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(6)
    sizes = {"a": 2, "b": 3, "c": 1}
    chunks, k = [], 0
    for doc, n in sizes.items():
        for i in range(n):
            chunks.append(make_chunk(doc, i, f"{doc} text {i}", vecs[k], chunk_count=n))
            k += 1
    written(store, chunks)
    assert store.count() == Counts(documents=3, chunks=6)


# -- list_chunks / get_embeddings --------------------------------------------------------------------------


def test_list_chunks_returns_every_chunk_of_a_large_document(make_store: MakeStore) -> None:
    store = ready(make_store)
    n = 1200
    vecs = unit_vectors(n + 2, seed=1)
    big = [make_chunk("big", i, f"piece {i}", vecs[i], chunk_count=n) for i in range(n)]
    small = [make_chunk("small", i, f"small {i}", vecs[n + i], chunk_count=2) for i in range(2)]
    written(store, big + small)

    refs = store.list_chunks(["big", "small", "absent"])
    assert set(refs) == {"big", "small"}
    assert {r.id for r in refs["big"]} == {c.chunk.id for c in big}
    assert len(refs["big"]) == n
    c = small[1].chunk
    assert ChunkRef(id=c.id, doc_id="small", doc_sha=c.doc_sha, chunk_sha=c.chunk_sha, chunk_count=2) in refs[
        "small"
    ]
    assert store.list_chunks(["absent"]) == {}
    assert store.list_chunks([]) == {}


def test_list_chunks_reports_every_version_of_a_document(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(2)
    old = make_chunk("d", 0, "old text", v[0], doc_sha="sha-old")
    new = make_chunk("d", 0, "new text", v[1], doc_sha="sha-new")
    written(store, [old, new])
    refs = store.list_chunks(["d"])["d"]
    assert {(r.id, r.doc_sha) for r in refs} == {(old.chunk.id, "sha-old"), (new.chunk.id, "sha-new")}


def test_get_embeddings_round_trip_as_float32(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(4, seed=2)
    chunks = [make_chunk("d", i, f"t{i}", vecs[i], chunk_count=4) for i in range(4)]
    written(store, chunks)
    wanted = [chunks[0].chunk.id, chunks[3].chunk.id, "missing-id"]
    got = store.get_embeddings(wanted)
    assert set(got) == {chunks[0].chunk.id, chunks[3].chunk.id}
    for i in (0, 3):
        arr = got[chunks[i].chunk.id]
        assert arr.dtype == np.float32 and arr.shape == (DIMS,)
        np.testing.assert_allclose(arr, vecs[i], atol=1e-6)
    assert store.get_embeddings([]) == {}


# -- deletes -----------------------------------------------------------------------------------------------


def test_delete_chunks_returns_how_many_existed(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(4)
    chunks = [make_chunk("d", i, f"removable text {i}", vecs[i], chunk_count=4) for i in range(4)]
    written(store, chunks)
    gone = [chunks[0].chunk.id, chunks[1].chunk.id]
    assert store.delete_chunks([*gone, "no-such-id"]) == 2
    store.refresh()  # count and search may lag until then
    assert store.count() == Counts(documents=1, chunks=2)
    assert store.delete_chunks(gone) == 0
    assert store.delete_chunks([]) == 0
    hits = store.search(SearchRequest(text="removable", vector=vecs[0], candidates=10))
    assert not set(gone) & set(ids(hits.bm25) + ids(hits.dense))
    assert set(store.get_embeddings(gone)) == set()


def test_delete_documents_returns_chunks_deleted(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(6)
    chunks = [make_chunk(d, i, f"{d} {i}", vecs[3 * j + i], chunk_count=3)
              for j, d in enumerate(["a", "b"]) for i in range(3)]
    written(store, chunks)
    assert store.delete_documents(["a", "absent"]) == 3
    assert store.count() == Counts(documents=1, chunks=3)
    assert store.list_chunks(["a"]) == {}
    assert store.delete_documents(["a"]) == 0
    assert store.delete_documents([]) == 0


# -- search ------------------------------------------------------------------------------------------------

TEXTS = {
    "fox": ("Animals", "the quick brown fox jumps over the lazy dog"),
    "hybrid": ("Search", "hybrid search combines bm25 keyword scores with dense vectors"),
    "pasta": ("Cooking", "boil the pasta and add tomato sauce"),
    "photo": ("Photosynthesis basics", "plants turn light into chemical energy"),
}


def corpus(store: Store) -> dict[str, EmbeddedChunk]:
    vecs = unit_vectors(len(TEXTS), seed=3)
    chunks = {
        d: make_chunk(d, 0, text, vecs[i], title=title) for i, (d, (title, text)) in enumerate(TEXTS.items())
    }
    written(store, list(chunks.values()))
    return chunks


def test_bm25_ranks_the_chunk_with_the_query_terms_first(make_store: MakeStore) -> None:
    store = ready(make_store)
    chunks = corpus(store)
    resp = store.search(SearchRequest(text="dense vectors hybrid", vector=None, candidates=10))
    assert resp.dense == []
    assert resp.bm25[0].id == chunks["hybrid"].chunk.id
    scores = [h.score for h in resp.bm25]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    top = resp.bm25[0]
    c = chunks["hybrid"].chunk
    assert (top.doc_id, top.source, top.title, top.text, top.chunk_index) == (
        c.doc_id, c.source, c.title, c.text, c.chunk_index
    )


def test_bm25_searches_the_title(make_store: MakeStore) -> None:
    store = ready(make_store)
    chunks = corpus(store)
    resp = store.search(SearchRequest(text="photosynthesis", vector=None, candidates=10))
    assert ids(resp.bm25) == [chunks["photo"].chunk.id]


def test_dense_returns_nearest_first_with_cosine_scores(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(30, seed=4)
    written(store, [make_chunk(f"d{i}", 0, f"text {i}", vecs[i]) for i in range(30)])
    query = vecs[7] + 0.05 * unit_vectors(1, seed=5)[0]
    query = (query / np.linalg.norm(query)).astype(np.float32)
    resp = store.search(SearchRequest(text=None, vector=query, candidates=10, num_candidates=60))
    assert resp.bm25 == []
    assert len(resp.dense) == 10
    assert resp.dense[0].doc_id == "d7"
    exact = sorted(((1 + float(vecs[i] @ query)) / 2, f"d{i}") for i in range(30))[::-1][:10]
    assert [h.doc_id for h in resp.dense] == [d for _, d in exact]
    for hit, (score, _) in zip(resp.dense, exact, strict=True):
        assert hit.score == pytest.approx(score, abs=1e-4)
        assert 0.0 <= hit.score <= 1.0


def test_both_sides_return_each_chunks_index_and_section(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(3, seed=8)
    written(store, [make_chunk("doc", i, f"sections {i}", vecs[i], chunk_count=3, section=min(i, 1))
                    for i in range(3)])
    resp = store.search(SearchRequest(text="sections", vector=vecs[2], candidates=5, num_candidates=10))
    for side in (resp.bm25, resp.dense):
        assert sorted((h.chunk_index, h.section) for h in side) == [(0, 0), (1, 1), (2, 1)]


def test_candidates_limits_each_side(make_store: MakeStore) -> None:
    store = ready(make_store)
    vecs = unit_vectors(20, seed=6)
    written(store, [make_chunk(f"d{i}", 0, f"shared words number {i}", vecs[i]) for i in range(20)])
    resp = store.search(SearchRequest(text="shared words", vector=vecs[0], candidates=5))
    assert len(resp.bm25) == 5 and len(resp.dense) == 5


def test_neither_side_returns_nothing(make_store: MakeStore) -> None:
    store = ready(make_store)
    corpus(store)
    resp = store.search(SearchRequest(text=None, vector=None, candidates=5))
    assert resp.bm25 == [] and resp.dense == []


FILTERED = (3, 17, 41)


@pytest.fixture
def fifty(make_store: MakeStore) -> tuple[Store, np.ndarray]:
    """50 one-chunk docs sharing the words "common filler"; docs 3, 17, 41 have lang=de, the rest en."""
    store = ready(make_store)
    vecs = unit_vectors(50, seed=7)
    meta = [
        {"lang": "de" if i in FILTERED else "en", "year": 2000 + i % 3, "even": i % 2 == 0} for i in range(50)
    ]
    written(store, [
        make_chunk(f"doc-{i}", 0, f"common filler text {i}", vecs[i], title=f"Title {i}", metadata=meta[i])
        for i in range(50)
    ])
    return store, vecs


def both_sides(
    store: Store, vecs: np.ndarray, filters: Mapping[str, tuple[str, ...]], candidates: int = 5
) -> tuple[set[str], set[str]]:
    """Doc ids of the BM25 and kNN hits for "common filler" / doc 0's vector under ``filters``."""
    resp = store.search(
        SearchRequest(text="common filler", vector=vecs[0], candidates=candidates, filters=dict(filters),
                      num_candidates=4 * candidates)
    )
    return {h.doc_id for h in resp.bm25}, {h.doc_id for h in resp.dense}


def test_filters_apply_before_the_top_k_cut_on_both_sides(fifty: tuple[Store, np.ndarray]) -> None:
    store, vecs = fifty
    expected = {f"doc-{i}" for i in FILTERED}
    bm25, dense = both_sides(store, vecs, {"lang": ("de",)})
    assert bm25 == expected and dense == expected
    resp = store.search(SearchRequest(text="common filler", vector=vecs[0], candidates=5,
                                      filters={"lang": ("de",)}))
    assert all(h.metadata["lang"] == "de" for h in resp.bm25 + resp.dense)


def test_filters_on_doc_id_source_and_title(fifty: tuple[Store, np.ndarray]) -> None:
    store, vecs = fifty
    assert both_sides(store, vecs, {"doc_id": ("doc-3", "doc-30")}) == ({"doc-3", "doc-30"},) * 2
    assert both_sides(store, vecs, {"source": ("src/doc-41.md",)}) == ({"doc-41"},) * 2
    assert both_sides(store, vecs, {"title": ("Title 12",)}) == ({"doc-12"},) * 2


def test_filter_values_are_ored_and_keys_anded(fifty: tuple[Store, np.ndarray]) -> None:
    store, vecs = fifty
    assert both_sides(store, vecs, {"lang": ("de",), "doc_id": ("doc-3", "doc-4", "doc-17")}) == (
        {"doc-3", "doc-17"},
    ) * 2
    assert both_sides(store, vecs, {"doc_id": ("doc-1", "doc-2", "doc-3")}, candidates=10) == (
        {"doc-1", "doc-2", "doc-3"},
    ) * 2
    assert both_sides(store, vecs, {"lang": ("fr",)}) == (set(), set())


def test_filters_match_numbers_and_booleans_by_their_json_text(fifty: tuple[Store, np.ndarray]) -> None:
    store, vecs = fifty
    odd = {f"doc-{i}" for i in range(50) if i % 2}
    bm25, dense = both_sides(store, vecs, {"year": ("2002",), "lang": ("de",)})
    assert bm25 == dense == {"doc-17", "doc-41"}
    bm25, dense = both_sides(store, vecs, {"even": ("false",)}, candidates=50)
    assert bm25 == dense == odd


# -- write with deletes, refresh, list_documents, get_embeddings_by_sha -------------------------------------


def test_write_with_delete_ids_writes_then_deletes_and_counts_what_existed(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(4)
    old = [make_chunk("d", i, f"old wording {i}", v[i], chunk_count=2, doc_sha="sha-old") for i in range(2)]
    written(store, old)
    new = make_chunk("d", 0, "new wording", v[2], doc_sha="sha-new")
    result = store.write([new], delete_ids=[old[0].chunk.id, old[1].chunk.id, "no-such-id"])
    assert result == WriteResult(written=1, deleted=2)
    store.refresh()
    assert store.count() == Counts(documents=1, chunks=1)
    assert {r.id for r in store.list_chunks(["d"])["d"]} == {new.chunk.id}
    hits = store.search(SearchRequest(text="wording", vector=None, candidates=10)).bm25
    assert ids(hits) == [new.chunk.id]


def test_write_only_deletes(make_store: MakeStore) -> None:
    store = ready(make_store)
    chunk = make_chunk("d", 0, "doomed", unit_vectors(1)[0])
    written(store, [chunk])
    assert store.write([], delete_ids=[chunk.chunk.id]) == WriteResult(written=0, deleted=1)
    store.refresh()
    assert store.count() == Counts(documents=0, chunks=0)


def test_list_documents_reports_sha_and_chunk_count_under_a_prefix(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(6)
    chunks = [make_chunk("docs/a.md", i, f"a {i}", v[i], chunk_count=2, doc_sha="sha-a") for i in range(2)]
    chunks += [make_chunk("docs/sub/b.md", 0, "b", v[2], doc_sha="sha-b"),
               make_chunk("docsother/c.md", 0, "c", v[3], doc_sha="sha-c"),
               make_chunk("notes/\u00e9t\u00e9.md", 0, "d", v[4], doc_sha="sha-d")]
    written(store, chunks)
    assert store.list_documents("docs/") == {
        "docs/a.md": DocRef("docs/a.md", "sha-a", 2),
        "docs/sub/b.md": DocRef("docs/sub/b.md", "sha-b", 1),
    }
    everything = store.list_documents()
    assert set(everything) == {"docs/a.md", "docs/sub/b.md", "docsother/c.md", "notes/\u00e9t\u00e9.md"}
    accented = "notes/\u00e9t\u00e9.md"
    assert store.list_documents("notes/\u00e9") == {accented: DocRef(accented, "sha-d", 1)}
    assert store.list_documents("absent/") == {}


def test_list_documents_hides_the_sha_of_a_document_with_two_versions(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(3)
    # two versions side by side: an interrupted update
    written(store, [make_chunk("mixed", 0, "old", v[0], doc_sha="sha-old"),
                    make_chunk("mixed", 0, "new", v[1], doc_sha="sha-new"),
                    make_chunk("single", 0, "one", v[2], doc_sha="sha-one")])
    docs = store.list_documents()
    assert docs == {"mixed": DocRef("mixed", "", 2), "single": DocRef("single", "sha-one", 1)}


def test_get_embeddings_by_sha_finds_vectors_across_documents(make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(3, seed=5)
    a = make_chunk("a", 0, "shared paragraph", v[0])
    b = make_chunk("b", 0, "only in b", v[1])
    written(store, [a, b])
    got = store.get_embeddings_by_sha([a.chunk.chunk_sha, b.chunk.chunk_sha, sha256_hex("never stored")])
    assert set(got) == {a.chunk.chunk_sha, b.chunk.chunk_sha}
    assert got[a.chunk.chunk_sha].dtype == np.float32 and got[a.chunk.chunk_sha].shape == (DIMS,)
    np.testing.assert_allclose(got[a.chunk.chunk_sha], v[0], atol=1e-6)
    np.testing.assert_allclose(got[b.chunk.chunk_sha], v[1], atol=1e-6)
    assert store.get_embeddings_by_sha([]) == {}


def test_iter_chunks_streams_every_chunk_with_its_fields_context_and_vector_from_one_snapshot(
        make_store: MakeStore) -> None:
    store = ready(make_store)
    v = unit_vectors(8, seed=9)
    contexts = ["", "Guide > Setup\n\n", "Ünïcode — 🚀 > \"quoted\" <b>\n\n", "H" * 20_000 + "\n\n"]
    chunks = []
    for i in range(7):
        ec = make_chunk(f"d{i % 3}", i, f"text {i}", v[i], metadata={"n": i, "ok": i % 2 == 0}, title=f"T{i}",
                        section=i % 2)
        context = contexts[i % len(contexts)]
        chunks.append(EmbeddedChunk(dataclasses.replace(ec.chunk, context=context,
                                                        chunk_sha=sha256_hex(context + ec.chunk.text)), v[i]))
    written(store, chunks)
    stream = store.iter_chunks(3)
    first = next(stream)
    written(store, [make_chunk("late", 0, "written after the snapshot", v[7])])
    batches = [first, *stream]
    assert [len(b) for b in batches] == [3, 3, 1]
    got = {ec.chunk.id: ec for b in batches for ec in b}
    assert set(got) == {ec.chunk.id for ec in chunks}  # not "late": the snapshot predates it
    for ec in chunks:
        assert got[ec.chunk.id].chunk == ec.chunk  # every field, the context included
        np.testing.assert_allclose(got[ec.chunk.id].embedding, ec.embedding, atol=1e-6)
    early = store.iter_chunks(2)
    assert len(next(early)) == 2
    early.close()  # releases the snapshot: the store goes on
    assert sum(len(b) for b in store.iter_chunks(100)) == 8


# -- missing index, explain --------------------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Store], object]] = {
    "write": lambda s: s.write([make_chunk("d", 0, "x", unit_vectors(1)[0])]),
    "list_chunks": lambda s: s.list_chunks(["d"]),
    "get_embeddings": lambda s: s.get_embeddings(["x"]),
    "delete_chunks": lambda s: s.delete_chunks(["x"]),
    "delete_documents": lambda s: s.delete_documents(["d"]),
    "search_text": lambda s: s.search(SearchRequest(text="x", vector=None, candidates=3)),
    "search_vector": lambda s: s.search(SearchRequest(text=None, vector=unit_vectors(1)[0], candidates=3)),
    "count": lambda s: s.count(),
    "refresh": lambda s: s.refresh(),
    "list_documents": lambda s: s.list_documents(),
    "get_embeddings_by_sha": lambda s: s.get_embeddings_by_sha(["x"]),
    "write_with_deletes": lambda s: s.write([], delete_ids=["x"]),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_operations_on_a_missing_index_raise_index_not_found(make_store: MakeStore, operation: str) -> None:
    store = make_store()
    with pytest.raises(IndexNotFoundError):
        OPERATIONS[operation](store)
    assert store.exists() is False  # and nothing was created on the way


def test_operations_after_drop_raise_index_not_found(make_store: MakeStore) -> None:
    store = ready(make_store)
    corpus(store)
    store.drop()
    with pytest.raises(IndexNotFoundError):
        store.search(SearchRequest(text="fox", vector=None, candidates=3))
    with pytest.raises(IndexNotFoundError):
        store.count()


def test_explain_request_is_json_and_needs_no_index(make_store: MakeStore) -> None:
    store = make_store()
    request = SearchRequest(text="fox", vector=unit_vectors(1)[0], candidates=3, filters={"lang": ("en",)})
    explained = store.explain_request(request)
    text = json.dumps(explained)
    assert "fox" in text
    assert store.exists() is False
