"""The pure parts of the index lifecycle: version names compared as numbers, the swap request, what a
reindex must do for each kind of change, and the recovery of a chunk's embedded text from its hash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from esrag.config import Settings
from esrag.embedders import fingerprint
from esrag.errors import ConfigError
from esrag.ingest.context import ContextTemplate
from esrag.lifecycle.reindex import (
    COPY,
    EMBED,
    RECHUNK,
    embedded_text,
    model_changed,
    next_number,
    plan,
    target_settings,
)
from esrag.stores.base import IndexVersion
from esrag.stores.es_versions import swap_actions, version_name, version_of
from esrag.stores.sqlite_files import parse_version, version_file
from esrag.types import Chunk, IndexMeta, sha256_hex

OLD = IndexMeta(model="m", dims=384, chunk_size=256, chunk_overlap=32, embed_template="{text}", analyzer="english")


@pytest.mark.parametrize(("name", "expected"), [
    ("idx-v1", 1), ("idx-v9", 9), ("idx-v10", 10), ("idx-v123", 123),
    ("idx-v0", None), ("idx-v01", None), ("idx-v", None), ("idx-v-1", None), ("idx-v1x", None),
    ("idx", None), ("other-v2", None), ("idx-b-v3", None), ("idx-v１", None),
])
def test_es_version_numbers_are_read_as_integers(name: str, expected: int | None) -> None:
    assert version_of("idx", name) == expected


def test_v10_comes_after_v9_where_text_order_would_not() -> None:
    versions = [IndexVersion(n, version_name("idx", n), live=n == 9) for n in (1, 9, 10, 2)]
    assert "idx-v10" < "idx-v9"  # the trap: text order
    assert next_number(versions) == 11
    assert max(versions, key=lambda v: v.number).name == "idx-v10"
    assert next_number([]) == 1


def test_sqlite_version_files_are_read_as_integers() -> None:
    live = Path("/d/idx.db")
    assert version_file(live, 10) == Path("/d/idx.v10.db")
    assert version_file(live, 3, building=True) == Path("/d/idx.v3.building.db")
    assert parse_version(live, "idx.v10.db") == (10, False)
    assert parse_version(live, "idx.v9.building.db") == (9, True)
    for other in ("idx.db", "idx.v0.db", "idx.v1.db-wal", "idxx.v1.db", "idx.v1.tmp.db", "x.idx.v1.db"):
        assert parse_version(live, other) is None


def test_the_swap_is_one_request_removing_every_current_index_and_adding_the_new() -> None:
    assert swap_actions("idx", ["idx-v1"], "idx-v2") == [
        {"remove": {"index": "idx-v1", "alias": "idx"}}, {"add": {"index": "idx-v2", "alias": "idx"}}]
    assert swap_actions("idx", ["idx-v3", "idx-v1"], "idx-v1") == [{"remove": {"index": "idx-v3", "alias": "idx"}},
                                                                  {"add": {"index": "idx-v1", "alias": "idx"}}]


def test_index_settings_alone_copy_vectors() -> None:
    p = plan(OLD, OLD.__class__(**{**OLD.to_dict(), "analyzer": "standard"}))
    assert p.mode == COPY and p.reasons == ("analyzer: 'english' -> 'standard'",)
    assert plan(OLD, OLD).mode == COPY


def test_a_new_model_or_dims_re_embeds_and_a_new_chunking_needs_the_sources() -> None:
    assert plan(OLD, IndexMeta(**{**OLD.to_dict(), "model": "n"})).mode == EMBED
    assert plan(OLD, IndexMeta(**{**OLD.to_dict(), "dims": 768})).mode == EMBED
    assert model_changed(OLD, IndexMeta(**{**OLD.to_dict(), "dims": 768}))
    assert not model_changed(OLD, IndexMeta(**{**OLD.to_dict(), "analyzer": "standard"}))
    for change in ({"chunk_size": 128}, {"chunk_overlap": 0}, {"embed_template": "{title}\n\n{text}"},
                   {"chunk_size": 128, "model": "n"}):
        assert plan(OLD, IndexMeta(**{**OLD.to_dict(), **change})).mode == RECHUNK, change


def test_fingerprints_of_different_models_under_one_name_re_embed_and_a_missing_one_does_not() -> None:
    one = fingerprint.encode(np.eye(3, 8, dtype=np.float32))
    same = fingerprint.encode(np.eye(3, 8, dtype=np.float32) * 2)  # same directions: the same model
    other = fingerprint.encode(np.eye(3, 8, k=1, dtype=np.float32))
    base = IndexMeta(**{**OLD.to_dict(), "fingerprint": one})
    assert model_changed(base, IndexMeta(**{**OLD.to_dict(), "fingerprint": other}))
    assert not model_changed(base, IndexMeta(**{**OLD.to_dict(), "fingerprint": same}))
    assert not model_changed(base, OLD) and not model_changed(OLD, base)  # an index made before fingerprints


def test_the_target_keeps_the_index_s_settings_and_takes_only_index_settings() -> None:
    s = target_settings(Settings(model="configured", chunk_size=99), OLD, {"index_options": "hnsw", "model": None})
    assert (s.model, s.chunk_size, s.embed_template, s.analyzer, s.index_options) == (
        "m", 256, "{text}", "english", "hnsw")
    with pytest.raises(ConfigError, match="cannot change alpha"):
        target_settings(Settings(), OLD, {"alpha": 0.5})


def _chunk(text: str, embedded: str, title: str = "T", context: str = "") -> Chunk:
    return Chunk(id="c", doc_id="d", source="s", title=title, text=text, chunk_index=0, chunk_count=1, start=0,
                 end=len(text), chunk_sha=sha256_hex(embedded), doc_sha="x", context=context)


def test_the_embedded_text_is_recovered_only_when_its_hash_proves_it() -> None:
    plain, titled = ContextTemplate("{headings}\n\n{text}"), ContextTemplate("{title}\n\n{text}")
    assert embedded_text(_chunk("body", "body"), plain) == "body"
    assert embedded_text(_chunk("body", "My title\n\nbody", "My title"), titled) == "My title\n\nbody"
    assert embedded_text(_chunk("body", "Intro > Setup\n\nbody"), plain) is None  # headings: not stored
    assert embedded_text(_chunk("body\ud800", "body\ud800"), plain) == "body\ud800"  # hashed surrogatepass


def test_a_stored_context_gives_the_embedded_text_when_its_hash_proves_it() -> None:
    plain = ContextTemplate("{headings}\n\n{text}")
    ctx = "Intro > Setup\n\n"
    assert embedded_text(_chunk("body", ctx + "body", context=ctx), plain) == ctx + "body"
    # a context the hash does not prove (tampered, or of another template) is not trusted
    assert embedded_text(_chunk("body", ctx + "body", context="Intro\n\n"), plain) is None
    assert embedded_text(_chunk("body", "body", context=ctx), plain) == "body"  # the hash decides
    surrogate = "H\ud800 > \U0001f680\n\n"
    assert embedded_text(_chunk("b", surrogate + "b", context=surrogate), plain) == surrogate + "b"
