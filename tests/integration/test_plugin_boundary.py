"""The CLI driven end to end through the plugin boundary, the way a third-party package extends esrag:
a distribution (a .dist-info on sys.path) registers a deterministic embedder and generator, and ingest,
search, ask, status and plugins use them with no change to esrag. No model is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from esrag.cli import main

pytestmark = pytest.mark.integration

DOCS = {
    "tower.md": "# Eiffel Tower\n\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris.\n",
    "rust.md": "# Rust\n\nRust guarantees memory safety with ownership and borrowing checked at compile time.\n",
    "bm25.md": "# BM25\n\nBM25 ranks documents by term frequency, inverse document frequency and length.\n",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    root.mkdir()
    for name, text in DOCS.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_plugins_lists_third_party_entries_with_their_package(fake_distribution: Path) -> None:
    code, out = run("plugins", "--json")
    assert code == 0, out
    listing = json.loads(out)
    assert set(listing) == {"stores", "embedders", "generators", "sources"}
    assert {"name": "hashed", "package": "esrag-fakes", "version": "1.2.3"} in listing["embedders"]
    assert {"name": "notes", "package": "esrag-fakes", "version": "1.2.3"} in listing["sources"]
    assert {"name": "echo", "package": "esrag-fakes", "version": "1.2.3"} in listing["generators"]
    builtin = {r["name"]: r["package"] for r in listing["stores"] + listing["embedders"] + listing["generators"]}
    assert builtin["sqlite"] == builtin["elasticsearch"] == builtin["sentence_transformers"] == "esrag"
    assert builtin["openai_compat"] == builtin["transformers_local"] == "esrag"
    sources = {r["name"]: r["package"] for r in listing["sources"]}
    assert sources["files"] == sources["elasticsearch"] == "esrag"  # built-ins register like third parties


def test_a_third_party_source_coexists_with_files_and_each_prunes_only_its_own(
    fake_distribution: Path, corpus: Path, store_name: str, store_settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = store_settings()  # type: ignore[operator]
    where = ["--store", store_name, "--index", settings.index]
    where += ["--es-url", settings.es_url] if store_name == "elasticsearch" else ["--sqlite-dir", settings.sqlite_dir]
    args = [*where, "--embedder", "hashed", "--no-progress", "--json"]
    try:
        monkeypatch.setenv("ESRAG_SOURCE_NOTES_COUNT", "4")
        code, out = run("ingest", "--source", "notes", *args)
        assert code == 0, out
        assert json.loads(out)["source"] == {"source": "notes", "count": 4}
        code, out = run("ingest", str(corpus), *args)
        assert code == 0 and json.loads(out)["documents_new"] == 3, out
        code, out = run("search", "lighthouse keeper number 2", "--json", *where, "--embedder", "hashed")
        assert json.loads(out)["hits"][0]["doc_id"] == "notes:2"

        monkeypatch.setenv("ESRAG_SOURCE_NOTES_COUNT", "2")
        code, out = run("ingest", "--source", "notes", "--prune", *args)
        report = json.loads(out)
        assert code == 0 and (report["documents_unchanged"], report["documents_removed"]) == (2, 2), out
        (corpus / "rust.md").unlink()
        code, out = run("ingest", str(corpus), "--prune", *args)
        report = json.loads(out)
        assert code == 0 and (report["documents_unchanged"], report["documents_removed"]) == (2, 1), out
        code, out = run("status", "--json", *where)
        assert json.loads(out)["documents"] == 4  # 2 notes + 2 files: neither prune touched the other's
    finally:
        run("delete", "--all", "--yes", *where)


def test_ingest_search_ask_status_through_third_party_plugins(
    fake_distribution: Path, corpus: Path, store_name: str, store_settings: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = store_settings()  # type: ignore[operator]
    where = ["--store", store_name, "--index", settings.index]
    where += ["--es-url", settings.es_url] if store_name == "elasticsearch" else ["--sqlite-dir", settings.sqlite_dir]
    args = [*where, "--embedder", "hashed"]
    monkeypatch.setenv("ESRAG_EMBEDDER_HASHED_DIMS", "32")  # the plugin's own setting, from the environment
    try:
        code, out = run("ingest", str(corpus), "--json", "--no-progress", *args)
        assert code == 0, out
        assert json.loads(out)["chunks_written"] == 3

        code, out = run("status", "--json", *where)
        status = json.loads(out)
        assert (status["model"], status["dims"], status["documents"]) == ("hashed-bow-32", 32, 3)

        code, out = run("search", "when was the eiffel tower completed", "--mode", "dense", "--json", *args)
        assert code == 0, out
        assert json.loads(out)["hits"][0]["source"].endswith("tower.md")

        code, out = run("ask", "When was the Eiffel Tower completed?", "--generator", "echo", "--json", *args)
        assert code == 0, out
        answer = json.loads(out)
        assert answer["answer"].startswith("The Eiffel Tower was completed in 1889")
        assert [c["source"].endswith("tower.md") for c in answer["citations"]] == [True]
    finally:
        run("delete", "--all", "--yes", *where)


def test_unknown_plugin_names_are_usage_errors_listing_the_installed(fake_distribution: Path) -> None:
    code, out = run("search", "q", "--embedder", "nosuch")
    assert code == 2 and "no embedder named 'nosuch'" in out and "hashed" in out and "sentence_transformers" in out
    code, out = run("ask", "q", "--generator", "nosuch")
    assert code == 2 and "no generator named 'nosuch'" in out and "echo" in out
    code, out = run("status", "--store", "nosuch")
    assert code == 2 and "no store named 'nosuch'" in out and "sqlite" in out


def test_a_plugins_unknown_or_bad_setting_is_named(fake_distribution: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("[embedder.hashed]\ndims = 16\ncolour = 'blue'\n")
    monkeypatch.setenv("ESRAG_CONFIG", str(cfg))
    code, out = run("init", "--embedder", "hashed", "--sqlite-dir", str(tmp_path / "s"))
    assert code == 2 and "colour" in out and "[embedder.hashed]" in out
    cfg.write_text("[embedder.hashed]\ndims = 'many'\n")
    code, out = run("init", "--embedder", "hashed", "--sqlite-dir", str(tmp_path / "s"))
    assert code == 2 and "dims" in out
    cfg.write_text("[embedder.hashed]\ndims = 16\n")
    code, out = run("init", "--embedder", "hashed", "--sqlite-dir", str(tmp_path / "s"))
    assert code == 0 and "16 dims" in out, out


def test_status_on_elasticsearch_names_the_concrete_index_behind_the_alias(
    fake_distribution: Path, corpus: Path, es_url: str
) -> None:
    where = ["--es-url", es_url, "--index", "concrete-check"]
    try:
        code, out = run("ingest", str(corpus), "--no-progress", "--embedder", "hashed", *where)
        assert code == 0, out
        code, out = run("status", "--json", *where)
        status = json.loads(out)
        assert status["index"] == "concrete-check" and status["concrete_index"] == "concrete-check-v1"
    finally:
        run("delete", "--all", "--yes", *where)
