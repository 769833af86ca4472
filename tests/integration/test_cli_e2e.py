"""End to end through the CLI, on both stores, with the packaged MiniLM model:
ingest -> search -> re-ingest (unchanged) -> edit -> search -> delete."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from esrag.cli import main
from esrag.config import Settings

pytestmark = pytest.mark.integration

DOCS = {
    "kafka.md": "# Kafka consumers\n\nA consumer group shares the partitions of a topic. Each partition is read by "
                "exactly one consumer of the group, so adding consumers beyond the partition count adds no "
                "throughput.\n",
    "postgres.md": "# Vacuum in PostgreSQL\n\nVACUUM reclaims storage occupied by dead tuples. Autovacuum runs it "
                   "in the background; tune autovacuum_vacuum_scale_factor for large tables.\n",
    "gardening.txt": "Tomatoes need six to eight hours of direct sunlight a day and deep, infrequent watering.\n",
}


def _store_args(settings: Settings) -> list[str]:
    args = ["--index", settings.index, "--store", settings.store_name]
    if settings.store_name == "elasticsearch":
        assert settings.es_url
        args += ["--es-url", settings.es_url]
    else:
        args += ["--sqlite-dir", settings.sqlite_dir]
    return args


def _run(args: list[str]) -> Result:
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    return result


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text)
    (root / "blob.txt").write_bytes(b"\x00\x01\x02binary")
    return root


def test_ingest_search_reingest_edit_delete(corpus: Path, store_settings: Callable[..., Settings]) -> None:
    args = _store_args(store_settings())

    first = _json(_run(["ingest", str(corpus), "--json", *args]))
    assert first["documents_new"] == 3 and first["chunks_written"] == 3 and first["chunks_embedded"] == 3
    assert [s["reason"] for s in first["skipped"]] == ["binary file"]

    doc = _json(_run(["search", "which consumer reads a partition", "--json", "-k", "3", *args]))
    assert doc["query"] == "which consumer reads a partition" and doc["explain"] is None
    assert doc["parameters"]["k"] == 3 and len(doc["hits"]) == 3
    hits = doc["hits"]
    assert hits[0]["source"].endswith("kafka.md")
    assert {"id", "doc_id", "source", "score", "bm25_score", "dense_score", "text"} <= set(hits[0])

    again = _json(_run(["ingest", str(corpus), "--json", *args]))
    assert (again["documents_unchanged"], again["chunks_written"], again["chunks_embedded"]) == (3, 0, 0)

    (corpus / "postgres.md").write_text(DOCS["postgres.md"] + "\nHOT updates avoid index writes when no indexed "
                                        "column changes.\n")
    edited = _json(_run(["ingest", str(corpus), "--json", *args]))
    assert edited["documents_changed"] == 1 and edited["documents_unchanged"] == 2
    assert edited["chunks_embedded"] == 1 and edited["chunks_deleted"] == 1

    hits = _json(_run(["search", "HOT updates", "--mode", "bm25", "--json", *args]))["hits"]
    assert hits[0]["source"].endswith("postgres.md") and "HOT updates" in hits[0]["text"]

    status = _json(_run(["status", "--json", *args]))
    assert (status["documents"], status["chunks"]) == (3, 3)
    assert status["model"] == "sentence-transformers/all-MiniLM-L6-v2" and status["dims"] == 384

    deleted = _run(["delete", "--doc", str(corpus / "kafka.md"), *args])
    assert deleted.exit_code == 0, deleted.output
    status = _json(_run(["status", "--json", *args]))
    assert (status["documents"], status["chunks"]) == (2, 2)
    hits = _json(_run(["search", "consumer group partitions", "--json", *args]))["hits"]
    assert all(not h["source"].endswith("kafka.md") for h in hits)


def test_alpha_extremes_equal_single_mode_orders(corpus: Path, store_settings: Callable[..., Settings]) -> None:
    args = _store_args(store_settings())
    assert _run(["ingest", str(corpus), *args]).exit_code == 0
    q = "storage of dead rows in a database"

    def ids(*extra: str) -> list[str]:
        return [h["id"] for h in _json(_run(["search", q, "--json", *extra, *args]))["hits"]]

    assert ids("--alpha", "0") [: len(ids("--mode", "bm25"))] == ids("--mode", "bm25")
    assert ids("--alpha", "1") == ids("--mode", "dense")


def test_filters_and_explain(corpus: Path, store_settings: Callable[..., Settings]) -> None:
    args = _store_args(store_settings())
    assert _run(["ingest", str(corpus / "kafka.md"), "--metadata", "team=streams", *args]).exit_code == 0
    assert _run(["ingest", str(corpus / "postgres.md"), "--metadata", "team=db", *args]).exit_code == 0
    plain = _json(_run(["search", "consumer partitions", "--filter", "team=db", "--json", *args]))
    hits = plain["hits"]
    assert hits and all(h["metadata"]["team"] == "db" for h in hits)
    assert plain["parameters"]["filters"] == {"team": ["db"]}
    explained = _json(_run(["search", "consumer partitions", "--filter", "team=db", "--json", "--explain", *args]))
    assert set(explained) == set(plain) and explained["explain"]["request"]  # the same document, explain filled
    assert [h["id"] for h in explained["hits"]] == [h["id"] for h in hits]
    out = _run(["search", "consumer partitions", "--explain", *args])
    assert out.exit_code == 0
    defaults = Settings()  # the default alpha and normalisation
    assert f"hybrid = {1 - defaults.alpha:.2f} * " in out.output and defaults.normalization in out.output, out.output
    assert "section's opening chunk" in out.output  # the section weight is said to be in the normalised scores
    if "elasticsearch" in args:
        assert "_msearch" in out.output and '"knn"' in out.output


def test_model_mismatch_is_a_clear_error(corpus: Path, store_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = store_settings()
    args = _store_args(settings)
    assert _run(["ingest", str(corpus / "kafka.md"), *args]).exit_code == 0
    # A model directory that is a different (copied, renamed) model: same weights, different name is enough
    from esrag.embedders.sentence_transformers import resolve_model_path

    other = tmp_path / "other-model"
    import shutil

    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), other)
    result = _run(["search", "x", "--model", str(other), *args])
    assert result.exit_code == 1
    assert "all-MiniLM-L6-v2" in result.output and str(other) in result.output
    result = _run(["ingest", str(corpus / "postgres.md"), "--model", str(other), *args])
    assert result.exit_code == 1 and str(other) in result.output


def test_missing_index_is_a_one_line_error(store_settings: Callable[..., Settings]) -> None:
    result = _run(["search", "anything", *_store_args(store_settings())])
    assert result.exit_code == 1
    assert "not found" in result.output and "Traceback" not in result.output


def test_unreachable_elasticsearch_fails_fast_naming_the_url() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    result = _run(["status", "--es-url", url])
    assert result.exit_code == 1
    assert url in result.output
    assert time.monotonic() - t0 < 10
