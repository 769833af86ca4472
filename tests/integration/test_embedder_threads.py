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
