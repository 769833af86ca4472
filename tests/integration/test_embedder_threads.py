"""The embedder from several threads at once: token counting (the ingest's producer, API writes) racing
embedding (the ingest's consumer, API searches) must never fail or change a result."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration

TEXTS = [("word " * n + "end.").strip() for n in (3, 40, 120, 300, 700)]


def test_count_tokens_and_embed_concurrently(embedder: Any) -> None:
    """Before the fix, counting in one thread while another embedded failed most embed calls with
    'Unable to create tensor, you should probably activate truncation and/or padding'."""
    expected_counts = embedder.count_tokens(TEXTS)
    expected_vectors = embedder.embed_documents(TEXTS)
    errors: list[BaseException] = []
    stop = threading.Event()
    rounds = {"count": 0, "embed": 0}

    def count() -> None:
        try:
            while not stop.is_set():
                assert embedder.count_tokens(TEXTS) == expected_counts
                rounds["count"] += 1
        except BaseException as e:
            errors.append(e)

    def embed() -> None:
        try:
            while not stop.is_set():
                got = embedder.embed_documents(TEXTS)
                np.testing.assert_allclose(got, expected_vectors, atol=1e-5)
                rounds["embed"] += 1
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=count), threading.Thread(target=count),
               threading.Thread(target=embed), threading.Thread(target=embed)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not errors and rounds["embed"] < 30:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert rounds["embed"] >= 10 and rounds["count"] >= 10


def test_count_tokens_matches_the_models_tokenizer(embedder: Any) -> None:
    """The private counting copy counts exactly what the model's own tokenizer would (special tokens
    excluded), also for text longer than the model's limit, which it must not truncate."""
    tok = embedder._model.tokenizer
    texts = [*TEXTS, "Ünïcödé, CJK 漢字 and emoji 🙂", ""]
    want = [len(tok(t, add_special_tokens=False, verbose=False)["input_ids"]) for t in texts]
    assert embedder.count_tokens(texts) == want
    assert want[4] > embedder.max_tokens


SENTENCES = [f"Sentence {i} says the keys are rotated every {i} days." * (1 + i % 4) for i in range(240)]


def test_sliced_bulk_and_queries_from_many_threads_give_the_models_own_vectors(embedder: Any) -> None:
    """Bulk calls are cut into slices and queries jump the queue, but every row is what one plain
    ``encode`` of the whole list gives, in the caller's order, whichever threads run at once."""
    want = np.asarray(embedder._model.encode(SENTENCES, batch_size=32, normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False))
    want_query = embedder.embed_query("how often are the keys rotated?")
    errors: list[BaseException] = []

    def bulk() -> None:
        try:
            np.testing.assert_allclose(embedder.embed_documents(SENTENCES), want, atol=1e-5)
        except BaseException as e:
            errors.append(e)

    def queries() -> None:
        try:
            for _ in range(10):
                np.testing.assert_allclose(embedder.embed_query("how often are the keys rotated?"), want_query,
                                           atol=1e-5)
                np.testing.assert_allclose(embedder.embed_queries(SENTENCES[:3]), want[:3], atol=1e-5)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=bulk), threading.Thread(target=bulk),
               threading.Thread(target=queries), threading.Thread(target=queries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[0]


def test_a_query_waits_for_one_slice_of_a_large_bulk_call_not_for_all_of_it(embedder: Any) -> None:
    """The extractive answerer's sentences, an ingest's chunks: a search arriving meanwhile is served after
    the running slice, so its query waits a small part of the bulk call."""
    embedder.embed_query("a search has been served: bulk work is sliced from now on")
    embedder.embed_documents(SENTENCES[:64])  # the pacer has timed a few slices
    waits: list[float] = []
    bulk_s = [0.0]

    def bulk() -> None:
        t0 = time.perf_counter()
        embedder.embed_documents(SENTENCES)
        bulk_s[0] = time.perf_counter() - t0

    worker = threading.Thread(target=bulk)
    worker.start()
    time.sleep(0.05)
    while worker.is_alive():
        t0 = time.perf_counter()
        embedder.embed_query("how often are the keys rotated?")
        waits.append(time.perf_counter() - t0)
    worker.join()
    assert len(waits) >= 5, (waits, bulk_s)
    assert max(waits[:-1]) < bulk_s[0] / 5, (max(waits), bulk_s[0])
