"""Pure rules of the remote embedders: the fingerprint's encoding and tolerance, Retry-After, text
sanitising, and the in-flight window (order kept, a failed request fails only its own texts)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from esrag.embedders import fingerprint, inflight
from esrag.embedders.remote import RemoteSettings, retry_after_seconds, sendable
from esrag.errors import ConfigError, EmbeddingError
from esrag.types import IndexMeta


def unit_rows(seed: int, rows: int = 3, dims: int = 384) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_fingerprint_round_trips_through_float16() -> None:
    v = unit_rows(1)
    fp = fingerprint.encode(v)
    assert fp.startswith("v1:3x384:")
    back = fingerprint.decode(fp)
    assert back is not None and back.shape == (3, 384) and np.max(np.abs(back - v)) < 1e-3


def test_the_same_model_within_tolerance_matches_and_another_does_not() -> None:
    v = unit_rows(1)
    drift = v + np.random.default_rng(2).normal(scale=0.002, size=v.shape).astype(np.float32)  # fp16, backends
    assert fingerprint.same_model(fingerprint.encode(v), fingerprint.encode(drift))
    assert not fingerprint.same_model(fingerprint.encode(v), fingerprint.encode(unit_rows(3)))
    # one probe off is enough to refuse
    one_off = v.copy()
    one_off[2] = unit_rows(4)[0]
    assert not fingerprint.same_model(fingerprint.encode(v), fingerprint.encode(one_off))


@pytest.mark.parametrize("damaged", ["", "v1", "v2:3x384:AAAA", "v1:3x384:not base64!", "v1:2x2:AAAA",
                                     "v1:axb:AAAA", "\ud800"])
def test_a_damaged_fingerprint_never_matches(damaged: str) -> None:
    assert fingerprint.decode(damaged) is None
    assert fingerprint.similarity(damaged, fingerprint.encode(unit_rows(1))) == -1.0


def test_index_meta_carries_the_fingerprint_and_old_metas_have_none() -> None:
    meta = IndexMeta(model="m", dims=384, fingerprint="v1:1x1:AAA=")
    assert IndexMeta.from_dict(meta.to_dict()) == meta
    assert IndexMeta.from_dict({"model": "m", "dims": 384}).fingerprint == ""
    assert meta.build_params()["fingerprint"] == "v1:1x1:AAA="


@pytest.mark.parametrize(("value", "seconds"), [("2", 2.0), ("0.5", 0.5), (None, None), ("soon", None),
                                                ("-1", None), ("nan", None), ("inf", None)])
def test_retry_after(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


def test_lone_surrogates_become_replacement_characters() -> None:
    assert sendable("a\ud800b") == "a\ufffdb"
    assert sendable("plain é 🙂") == "plain é 🙂"


@pytest.mark.parametrize("url", ["ftp://host", "localhost:8080", "", "http://"])
def test_the_url_must_be_http(url: str) -> None:
    with pytest.raises(ValueError, match="http"):
        RemoteSettings(url=url)


def test_settings_hide_the_api_key() -> None:
    s = RemoteSettings(url="http://h:1/", api_key="sk-abcdef")  # type: ignore[arg-type]
    assert "sk-abcdef" not in repr(s) and s.url == "http://h:1"


def test_reading_a_missing_key_file_names_the_file() -> None:
    from esrag.embedders.remote import read_api_key

    with pytest.raises(ConfigError, match="/nonexistent/key"):
        read_api_key(RemoteSettings(url="http://h", api_key_file="/nonexistent/key"), "tei")


def fake_embed(fail_on: str | None = None, delay: float = 0.0):  # type: ignore[no-untyped-def]
    active = [0, 0]  # now, most at once
    lock = threading.Lock()

    def embed(texts: list[str]) -> np.ndarray:
        with lock:
            active[0] += 1
            active[1] = max(active[1], active[0])
        try:
            time.sleep(delay)
            if fail_on is not None and fail_on in texts:
                raise EmbeddingError("server down")
            return np.array([[float(len(t)), 1.0] for t in texts], dtype=np.float32)
        finally:
            with lock:
                active[0] -= 1

    return embed, active


@pytest.mark.parametrize("in_flight", [1, 4])
def test_the_window_keeps_positions_and_fails_only_the_failed_request(in_flight: int) -> None:
    texts = ["x" * n for n in range(1, 21)]
    embed, active = fake_embed(fail_on="x" * 20, delay=0.02)
    result = inflight.embed_window(embed, texts, batch=3, in_flight=in_flight, stop=threading.Event())
    assert len(result.failed) == 1
    failed_idx, err = result.failed[0]
    assert sorted(failed_idx) == [17, 18, 19]  # longest first: the first request holds the 3 longest
    assert "server down" in str(err)
    for i, v in enumerate(result.vectors):
        assert (v is None) == (i in failed_idx)
        assert v is None or v[0] == len(texts[i])
    assert result.embedded == 17
    assert active[1] == in_flight


def test_a_set_stop_cancels_the_requests_not_started() -> None:
    stop = threading.Event()
    stop.set()
    embed, _ = fake_embed()
    assert inflight.embed_window(embed, ["a", "b", "c"], batch=1, in_flight=2, stop=stop).embedded <= 2


def test_windows_from_two_threads_at_once_do_not_mix() -> None:
    embed, _ = fake_embed(delay=0.005)
    results: dict[int, inflight.WindowResult] = {}

    def run(k: int) -> None:
        results[k] = inflight.embed_window(embed, ["y" * (k * 10 + n) for n in range(1, 9)], 2, 3,
                                           threading.Event())

    threads = [threading.Thread(target=run, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, res in results.items():
        assert [v[0] for v in res.vectors if v is not None] == [k * 10 + n for n in range(1, 9)]


def test_embedders_without_in_flight_get_one_request_at_a_time() -> None:
    class Local:
        batch_size = 64

    class Remote:
        batch_size = 32
        in_flight = 4

    assert inflight.requests_in_flight(Local()) == 1 and inflight.request_size(Local(), 16) == 16
    assert inflight.requests_in_flight(Remote()) == 4 and inflight.request_size(Remote(), 16) == 32


def test_a_missing_tokenizer_is_a_clear_error_naming_it_and_the_setting(tmp_path: object) -> None:
    from esrag.embedders.tokenizer import load_tokenizer

    with pytest.raises(ConfigError, match=r"cannot load the tokenizer '/nonexistent/model' locally.*\[embedder.tei\]"):
        load_tokenizer("/nonexistent/model", where="[embedder.tei] tokenizer")
    with pytest.raises(ConfigError, match="locally"):
        load_tokenizer("some-org/not-in-the-cache")  # a hub id is never downloaded
