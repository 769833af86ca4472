"""The Elasticsearch store under injected faults: the ES test server behind a real fault-injecting proxy
(tests/fixtures/fault_proxy.py). Writes: every chunk is written or reported failed with its source file and
reason, a re-run after the faults writes the rest with nothing duplicated. Searches: a clear error naming
the URL and the side, within the timeout."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from esrag.config import Settings
from esrag.errors import StoreConnectionError, StoreError
from esrag.stores.elasticsearch import ElasticsearchStore
from esrag.types import EmbeddedChunk, SearchRequest
from tests.fixtures.fault_proxy import FaultProxy
from tests.integration.test_store_contract import META, make_chunk, unit_vectors

pytestmark = pytest.mark.integration
MakeES = Callable[..., ElasticsearchStore]
N = 60


@pytest.fixture
def store_name() -> str:  # ES only
    return "elasticsearch"


@pytest.fixture
def behind(fault_proxy: FaultProxy, make_store: Callable[..., Any]) -> MakeES:
    """Factory of stores that talk to the test server through the proxy (index created, record cleared),
    with a short retry budget and timeout unless overridden."""

    def make(**overrides: Any) -> ElasticsearchStore:
        opts: dict[str, Any] = {"es_url": fault_proxy.url, "es_retry_seconds": 20.0, "es_timeout": 2.0}
        opts.update(overrides)
        store: ElasticsearchStore = make_store(**opts)
        store.ensure_index(META)
        store.retry.initial_s, store.retry.max_s = 0.05, 0.5  # fast backoff: the tests wait less
        fault_proxy.forget()
        return store

    return make


def corpus(n: int = N) -> list[EmbeddedChunk]:
    vecs = unit_vectors(n, seed=5)
    return [make_chunk(f"doc{i // 3}", i % 3, f"text number {i}", vecs[i], chunk_count=3) for i in range(n)]


def stored_ids(store: ElasticsearchStore) -> list[str]:
    """Every chunk id in the index (each once per stored copy), after a refresh."""
    store.refresh()
    resp = store.client.search(index=store.alias, size=1000, query={"match_all": {}}, source=False)
    return sorted(h["_id"] for h in resp["hits"]["hits"])


def test_per_item_429s_are_retried_until_every_chunk_is_written(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind()
    fault_proxy.bulk_items(429, every=2, times=3)
    chunks = corpus()
    result = store.write(chunks)
    assert (result.written, result.errors) == (N, ())
    assert fault_proxy.items_rejected > N // 2 and store.bulk_stats.retried_items == fault_proxy.items_rejected
    assert stored_ids(store) == sorted(c.chunk.id for c in chunks)


@pytest.mark.parametrize("code", [429, 502, 503])
def test_whole_request_failures_are_retried(fault_proxy: FaultProxy, behind: MakeES, code: int) -> None:
    store = behind()
    fault_proxy.status(code, path="/_bulk", times=3)
    result = store.write(corpus())
    assert (result.written, result.errors) == (N, ())
    assert fault_proxy.paths().count("/_bulk") == 4 and store.bulk_stats.retried_requests == 3


def test_retry_after_is_honoured(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind()
    fault_proxy.status(429, path="/_bulk", times=1, retry_after=1.0)
    start = time.monotonic()
    assert store.write(corpus()).written == N
    assert time.monotonic() - start >= 1.0


def test_a_connection_reset_mid_response_is_retried_without_duplicates(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind()
    fault_proxy.reset(path="/_bulk", times=2)
    chunks = corpus()
    result = store.write(chunks)
    assert (result.written, result.errors) == (N, ())
    assert stored_ids(store) == sorted(c.chunk.id for c in chunks)  # the reset request was applied: no dups


def test_a_response_slower_than_the_timeout_is_retried(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind(es_timeout=1.0)
    fault_proxy.delay(2.5, path="/_bulk", times=1)
    chunks = corpus()
    result = store.write(chunks)
    assert (result.written, result.errors) == (N, ())
    assert stored_ids(store) == sorted(c.chunk.id for c in chunks)


def test_a_429_storm_slows_the_write_down_instead_of_failing_it(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind(es_retry_seconds=30.0)
    fault_proxy.bulk_items(429, every=1, times=6)  # every item of six requests in a row rejected
    result = store.write(corpus())
    assert (result.written, result.errors) == (N, ())
    assert store.bulk_stats.retried_requests == 6 and store.bulk_stats.wait_s > 0


def test_items_still_rejected_when_the_budget_runs_out_are_reported_then_a_rerun_completes(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind(es_retry_seconds=1.0)
    fault_proxy.bulk_items(503, every=3, times=None)  # the first item of every request, retries included
    chunks = corpus()
    start = time.monotonic()
    result = store.write(chunks)
    assert time.monotonic() - start < 10
    failed = {e.chunk_id for e in result.errors}
    assert result.written + len(failed) == N and 1 <= len(failed) < N // 3
    by_id = {c.chunk.id: c.chunk for c in chunks}
    for err in result.errors:
        assert err.source == by_id[err.chunk_id].source and err.status == 503
        assert "503" in err.reason and "es_retry_seconds" in err.reason
    assert set(stored_ids(store)) == set(by_id) - failed  # what is reported failed is not in the index
    fault_proxy.clear()
    again = store.write(chunks)
    assert (again.written, again.errors) == (N, ())
    assert stored_ids(store) == sorted(by_id)  # nothing duplicated


def test_a_cluster_that_stays_down_fails_every_chunk_once_the_budget_is_spent(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind(es_retry_seconds=1.0)
    fault_proxy.status(503, path="/_bulk", times=None)
    first = store.write(corpus(30))
    assert first.written == 0 and len(first.errors) == 30
    assert all("HTTP 503" in e.reason and e.source.startswith("src/doc") for e in first.errors)
    start = time.monotonic()
    second = store.write(corpus(30))  # budget already spent: one try, no waiting
    assert len(second.errors) == 30 and time.monotonic() - start < 1.0


def test_index_and_delete_actions_share_one_bulk_request_and_no_refresh_is_sent(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind()
    chunks = corpus(9)
    store.write(chunks[:6])
    fault_proxy.forget()
    result = store.write(chunks[6:], delete_ids=[c.chunk.id for c in chunks[:3]] + ["never-existed"])
    assert (result.written, result.deleted, result.errors) == (3, 3, ())
    assert fault_proxy.paths() == ["/_bulk"]
    assert stored_ids(store) == sorted(c.chunk.id for c in chunks[3:])


def test_reads_of_own_writes_need_no_refresh_unless_they_touch_written_documents(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind()
    chunks = corpus(9)  # doc0..doc2
    store.write(chunks[:3])
    store.refresh()
    store.write(chunks[3:6], delete_ids=[chunks[0].chunk.id])
    fault_proxy.forget()
    refs = store.list_chunks(["doc0"])  # doc0 was not written since the refresh: no refresh needed
    assert [r.id for r in refs["doc0"]] == [c.chunk.id for c in chunks[1:3]]  # the deleted one left out
    assert "/_refresh" not in " ".join(fault_proxy.paths())
    refs = store.list_chunks(["doc1"])  # written since: refreshed first, then seen
    assert [r.id for r in refs["doc1"]] == [c.chunk.id for c in chunks[3:6]]
    assert fault_proxy.paths().count(f"/{store.alias}/_refresh") == 1
    assert set(store.get_embeddings([c.chunk.id for c in chunks[3:6]])) == {c.chunk.id for c in chunks[3:6]}


def test_the_reads_of_an_ingest_are_retried_under_back_pressure(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind()
    chunks = corpus(9)
    store.write(chunks)
    store.refresh()
    fault_proxy.status(429, path="/_search", times=2)
    fault_proxy.status(503, path="/_mget", times=2)
    fault_proxy.status(502, path="/_refresh", times=1)
    assert len(store.list_chunks(["doc0", "doc1", "doc2"])) == 3
    assert len(store.get_embeddings([c.chunk.id for c in chunks])) == 9
    store.write(chunks[:1])
    store.refresh()
    assert sum(1 for r in fault_proxy.requests if r.fault) == 5  # every injected failure was met and survived


def test_a_read_that_keeps_failing_gives_up_within_the_budget_naming_the_url(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    store = behind(es_retry_seconds=1.0)
    fault_proxy.status(503, path="/_mget", times=None)
    start = time.monotonic()
    with pytest.raises(StoreError, match="HTTP 503") as exc:
        store.get_embeddings(["x"])
    assert time.monotonic() - start < 3 and fault_proxy.url in str(exc.value)


# -- searches ------------------------------------------------------------------------------------------------


def ready_for_search(behind: MakeES, **overrides: Any) -> ElasticsearchStore:
    store = behind(**overrides)
    store.write(corpus(6))
    store.refresh()
    return store


def test_a_search_answered_503_names_the_url_and_both_sides(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = ready_for_search(behind)
    fault_proxy.status(503, path="/_msearch", times=None)
    with pytest.raises(StoreError) as exc:
        store.search(SearchRequest(text="text", vector=unit_vectors(1)[0], candidates=3))
    msg = str(exc.value)
    assert fault_proxy.url in msg and "HTTP 503" in msg and "BM25 and kNN sides" in msg


def test_a_search_slower_than_the_timeout_fails_within_it(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = ready_for_search(behind, es_timeout=1.0)
    fault_proxy.delay(5, path="/_msearch", times=None)
    start = time.monotonic()
    with pytest.raises(StoreConnectionError, match="did not answer within 1 s") as exc:
        store.search(SearchRequest(text=None, vector=unit_vectors(1)[0], candidates=3))
    assert time.monotonic() - start < 2.5
    assert fault_proxy.url in str(exc.value) and "kNN side" in str(exc.value)


def test_a_search_whose_connection_is_reset_fails_clearly(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = ready_for_search(behind)
    fault_proxy.reset(path="/_msearch", times=None)
    with pytest.raises(StoreConnectionError) as exc:
        store.search(SearchRequest(text="text", vector=None, candidates=3))
    assert fault_proxy.url in str(exc.value) and "BM25 side" in str(exc.value)


def test_one_failing_side_is_named(behind: MakeES) -> None:
    store = ready_for_search(behind)
    with pytest.raises(StoreError, match="the kNN side failed") as exc:
        store.search(SearchRequest(text="text", vector=unit_vectors(1, dims=3)[0], candidates=3))
    assert "dimensions" in str(exc.value) or "dims" in str(exc.value)


# -- credentials on the wire ----------------------------------------------------------------------------------


def test_url_credentials_with_delimiters_are_sent_as_basic_auth_and_never_shown(
    fault_proxy: FaultProxy, behind: MakeES
) -> None:
    password = "pa#s/s?w@r:d"  # noqa: S105 - a test secret
    url = fault_proxy.url.replace("http://", f"http://elastic:{password}@")
    store = behind(es_url=url)
    assert store.location == fault_proxy.url and password not in repr(store)
    store.write(corpus(3))
    sent = {r.header("authorization") for r in fault_proxy.requests}
    assert sent == {"Basic " + base64.b64encode(f"elastic:{password}".encode()).decode()}
    fault_proxy.status(503, path="/_msearch", times=None)
    with pytest.raises(StoreError) as exc:
        store.search(SearchRequest(text="text", vector=None, candidates=3))
    assert password not in str(exc.value) and "pa#s" not in str(exc.value)


# -- the real CLI under faults, and two CLI writers at once ------------------------------------------------------

TOPICS = ["kafka partitions consumer groups", "postgres vacuum dead tuples", "tomatoes sunlight watering",
          "rust borrow checker ownership", "glaciers carve valleys", "espresso pressure grounds"]


def write_corpus(root: Path, n: int = 24) -> Path:
    """``n`` small markdown files, a few chunks each at chunk_size 32."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        paras = [f"Paragraph {j} of note {i} about {topic}. " * 3 for j in range(3)]
        (root / f"note{i:03d}.md").write_text(f"# Note {i}: {topic}\n\n" + "\n\n".join(paras) + "\n")
    return root


def cli_env(es_url: str, index: str, tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESRAG_") or k.startswith("ESRAG_TEST_")}
    cfg = tmp / "esrag.toml"
    cfg.write_text("")
    env.update({"ESRAG_ES_URL": es_url, "ESRAG_INDEX": index, "ESRAG_CONFIG": str(cfg), "ESRAG_CHUNK_SIZE": "32",
                "ESRAG_CHUNK_OVERLAP": "4", "ESRAG_ES_TIMEOUT": "3", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **extra})
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "esrag.cli", *args], env=env, capture_output=True, text=True, timeout=600,
        check=False,
    )


def index_state(es_url: str, index: str) -> list[tuple[str, str, str]]:
    """Every stored chunk as (chunk id, doc_sha, source), sorted: duplicates would show twice."""
    store = ElasticsearchStore(Settings(es_url=es_url, index=index))
    try:
        store.refresh()
        resp = store.client.search(index=index, size=10_000, query={"match_all": {}},
                                   source=["doc_sha", "source"])
        return sorted((h["_id"], h["_source"]["doc_sha"], h["_source"]["source"]) for h in resp["hits"]["hits"])
    finally:
        store.close()


@pytest.fixture(scope="module")
def clean_run(es_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, str]]]:
    """One clean ingest of the corpus (no proxy): the state every other run must end in."""
    tmp = tmp_path_factory.mktemp("clean")
    corpus = write_corpus(tmp / "corpus")
    index = f"clean{os.getpid()}"
    done = cli(cli_env(es_url, index, tmp), "ingest", str(corpus), "--json")
    assert done.returncode == 0, done.stderr
    state = index_state(es_url, index)
    cli(cli_env(es_url, index, tmp), "delete", "--all", "--yes")
    return corpus, [(i, sha, Path(src).name) for i, sha, src in state]


def names(state: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [(i, sha, Path(src).name) for i, sha, src in state]


@pytest.mark.slow
def test_cli_ingest_under_persistent_item_failures_exits_1_listing_files_then_a_rerun_completes(
    fault_proxy: FaultProxy, es_url: str, clean_run: tuple[Path, list[tuple[str, str, str]]], tmp_path: Path
) -> None:
    corpus, expected = clean_run
    index = f"itemfail{os.getpid()}"
    env = cli_env(fault_proxy.url, index, tmp_path, ESRAG_ES_RETRY_SECONDS="1")
    fault_proxy.bulk_items(503, every=4, times=None)
    first = cli(env, "ingest", str(corpus), "--json")
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    failed = report["errors"]
    assert failed and all(Path(e["source"]).parent == corpus and "503" in e["reason"] for e in failed)
    stored = index_state(es_url, index)
    assert len(stored) + len(failed) == len(expected)  # every chunk written or reported failed
    assert {e["chunk_id"] for e in failed}.isdisjoint(i for i, _, _ in stored)
    fault_proxy.clear()
    second = cli(env, "ingest", str(corpus), "--json")
    assert second.returncode == 0, second.stderr
    assert names(index_state(es_url, index)) == expected  # complete, nothing duplicated
    cli(env, "delete", "--all", "--yes")


@pytest.mark.slow
def test_two_cli_ingests_at_once_end_like_one_clean_run(
    es_url: str, clean_run: tuple[Path, list[tuple[str, str, str]]], tmp_path: Path
) -> None:
    corpus, expected = clean_run
    index = f"twowriters{os.getpid()}"
    env = cli_env(es_url, index, tmp_path)
    procs = [subprocess.Popen(  # noqa: S603 - our own CLI
        [sys.executable, "-m", "esrag.cli", "ingest", str(corpus)], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert names(index_state(es_url, index)) == expected
    cli(env, "delete", "--all", "--yes")


def test_vectors_by_sha_see_own_writes_and_refresh_only_when_needed(fault_proxy: FaultProxy, behind: MakeES) -> None:
    store = behind()
    chunks = corpus(6)
    store.write(chunks[:3])
    store.refresh()
    store.write(chunks[3:])
    fault_proxy.forget()
    assert set(store.get_embeddings_by_sha([chunks[0].chunk.chunk_sha])) == {chunks[0].chunk.chunk_sha}
    assert "/_refresh" not in " ".join(fault_proxy.paths())  # nothing unrefreshed was asked for
    assert set(store.get_embeddings_by_sha([chunks[4].chunk.chunk_sha])) == {chunks[4].chunk.chunk_sha}
    assert fault_proxy.paths().count(f"/{store.alias}/_refresh") == 1
