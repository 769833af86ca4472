"""The engine from many threads at once, as the HTTP API calls it: parts are built once, searches run
concurrently, and an in-process generator answers one question at a time (the others wait, none fails)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from esrag.config import Settings
from esrag.engine import Engine
from esrag.types import Document

pytestmark = pytest.mark.integration

DOCS = [Document(doc_id=f"d{i}", source=f"d{i}.md", title=f"Doc {i}",
                 text=f"Document number {i} talks about topic {i % 5}. It has a second sentence about {i}.")
        for i in range(40)]


@pytest.fixture
def engine(fake_distribution: Path, store_settings: Callable[..., Settings]) -> Iterator[Engine]:
    settings = store_settings(embedder="hashed", generator="echo_serial")
    eng = Engine(settings)
    report = eng.ingest_documents(DOCS)
    assert report.ok and report.chunks_written == len(DOCS)
    yield eng
    eng.drop()
    eng.close()


def test_parts_are_built_once_when_threads_race_for_them(fake_distribution: Path, tmp_path: Path) -> None:
    eng = Engine(Settings(embedder="hashed", sqlite_dir=str(tmp_path)))
    barrier = threading.Barrier(8)

    def grab(_: int) -> tuple[int, int, int]:
        barrier.wait()
        return id(eng.store), id(eng.embedder.get()), id(eng.searcher)

    with ThreadPoolExecutor(8) as pool:
        got = set(pool.map(grab, range(8)))
    assert len(got) == 1
    eng.close()


def test_concurrent_searches_all_succeed_and_agree(engine: Engine) -> None:
    expected = [h.id for h in engine.search("topic 3", k=5).hits]
    assert expected

    def one(_: int) -> list[str]:
        return [h.id for h in engine.search("topic 3", k=5).hits]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(64)))
    assert all(r == expected for r in results)


def test_in_process_answers_queue_instead_of_overlapping(engine: Engine) -> None:
    from tests.plugins.fake_plugins import SerialEchoCiter

    SerialEchoCiter.overlaps = 0

    def ask(i: int) -> str:
        return engine.ask(f"what does document {i} talk about?").text

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(12)))
    assert all(a.endswith("[1]. ") for a in answers)
    assert SerialEchoCiter.overlaps == 0


def test_a_closed_stream_releases_the_generator_for_the_next_question(engine: Engine) -> None:
    stream = engine.ask_stream("what does document 1 talk about?")
    next(iter(stream))
    stream.close()  # a client that went away mid-answer
    done = threading.Event()

    def second() -> None:
        engine.ask("what does document 2 talk about?")
        done.set()

    t = threading.Thread(target=second)
    t.start()
    t.join(timeout=20)
    assert done.is_set()


def test_a_filter_value_given_as_a_bare_string_is_one_value(engine: Engine) -> None:
    """``{"source": "d3.md"}`` means that one source, as ``("d3.md",)`` does, never its characters."""
    as_tuple = [h.id for h in engine.search("topic", filters={"source": ("d3.md",)}).hits]
    as_str = [h.id for h in engine.search("topic", filters={"source": "d3.md"}).hits]
    assert as_str == as_tuple and {h.source for h in engine.search("topic", filters={"source": "d3.md"}).hits} == {
        "d3.md"}
    answer = engine.ask("topic", generator="none", filters={"source": "d3.md"})
    assert {p.hit.source for p in answer.passages} == {"d3.md"}
