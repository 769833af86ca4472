"""Settings are validated on every path, and every error names the key, where it came from and what was
expected (the cases a new user ran into), and the project's store is found the way git finds a repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from esrag.cli import main
from esrag.config import Settings, find_project
from esrag.errors import ConfigError


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('alpha = "high"\n', ["alpha", "'high'", "esrag.toml", "a number"]),
        ('es_verify_certs = "no"\n', ["es_verify_certs", "'no'", "true or false"]),
        ("alpha = 1.5\n", ["alpha", "between 0 and 1"]),
        ("k = 0\n", ["k must be at least 1"]),
        ('mode = "semantic"\n', ["mode", "hybrid", "bm25", "dense"]),
        ("alpah = 0.3\n", ["unknown setting 'alpah'", "alpha"]),
        ("chunk_size = 64\nchunk_overlap = 64\n", ["chunk_overlap must be smaller than chunk_size", "esrag.toml"]),
    ],
)
def test_config_file_errors_name_key_source_and_type(tmp_path: Path, toml: str, expected: list[str]) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        Settings.load(env={"ESRAG_CONFIG": str(cfg)}, cwd=tmp_path)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ESRAG_ALPHA": "abc"}, ["alpha", "ESRAG_ALPHA", "'abc'", "number"]),
        ({"ESRAG_ALPHA": "nan"}, ["ESRAG_ALPHA", "between 0 and 1"]),
        ({"ESRAG_K": "2.5"}, ["ESRAG_K", "integer"]),
        ({"ESRAG_ES_VERIFY_CERTS": "perhaps"}, ["ESRAG_ES_VERIFY_CERTS", "boolean"]),
        ({"ESRAG_CONFIG": "/nope.toml"}, ["/nope.toml", "ESRAG_CONFIG", "does not exist"]),
    ],
)
def test_environment_errors_name_the_variable(tmp_path: Path, env: dict[str, str], expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env=env, cwd=tmp_path)
    for part in expected:
        assert part in str(info.value)


def test_boolean_words_in_the_environment_mean_what_they_say(tmp_path: Path) -> None:
    for word, value in (("no", False), ("off", False), ("0", False), ("yes", True), ("true", True)):
        assert Settings.load(env={"ESRAG_ES_VERIFY_CERTS": word}, cwd=tmp_path).es_verify_certs is value


def test_sources_record_where_each_value_came_from(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("alpha = 0.2\nk = 7\n")
    s = Settings.load({"k": 3}, env={"ESRAG_CONFIG": str(cfg), "ESRAG_MODE": "bm25"}, cwd=tmp_path,
                      override_source={"k": "-k"})
    assert (s.alpha, s.k, s.mode) == (0.2, 3, "bm25")
    assert s.sources["alpha"] == str(cfg) and s.sources["mode"] == "ESRAG_MODE" and s.sources["k"] == "-k"
    assert s.resolved()["fusion"] == {"value": "linear", "source": "default"}


def test_secrets_are_not_in_repr_and_are_masked_when_shown() -> None:
    s = Settings(es_password="pa#ss/w?rd", es_api_key="QUtJRDprZXk=", llm_api_key="sk-secret")  # noqa: S106
    text = repr(s) + str(s)
    for secret in ("pa#ss/w?rd", "QUtJRDprZXk=", "sk-secret"):
        assert secret not in text
    shown = s.resolved()
    assert shown["es_password"]["value"] == shown["es_api_key"]["value"] == shown["llm_api_key"]["value"] == "****"


def test_config_show_json_masks_secrets_and_names_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ESRAG_ES_PASSWORD", "hunter2-distinctive")
    result = CliRunner().invoke(main, ["config", "show", "--json", "--alpha", "0.25"])
    assert result.exit_code == 0, result.output
    assert "hunter2-distinctive" not in result.output
    out = json.loads(result.output)["settings"]
    assert out["alpha"] == {"value": 0.25, "source": "--alpha"}
    assert out["es_password"] == {"value": "****", "source": "ESRAG_ES_PASSWORD"}


def test_the_project_store_is_found_from_a_subdirectory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".esrag").mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_project(deep) == tmp_path
    assert Settings.load(env={}, cwd=deep).sqlite_dir == str(tmp_path / ".esrag")
    # without a project, the working directory's .esrag (absolute, so messages say where)
    other = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    other.mkdir()
    assert Settings.load(env={}, cwd=other).sqlite_dir == str(other / ".esrag")


def test_a_relative_sqlite_dir_in_the_file_is_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "esrag.toml").write_text('sqlite_dir = "data/store"\n')
    deep = tmp_path / "src"
    deep.mkdir()
    s = Settings.load(env={}, cwd=deep)
    assert s.sqlite_dir == str(tmp_path / "data" / "store")


def test_missing_index_error_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["search", "anything", "--mode", "bm25"])
    assert result.exit_code == 1
    assert str(tmp_path / ".esrag" / "esrag.db") in result.output
    assert not (tmp_path / ".esrag").exists()  # a search creates no store


def test_search_has_a_flag_for_every_retrieval_setting() -> None:
    result = CliRunner().invoke(main, ["search", "--help"])
    for flag in ("--rrf-k", "--alpha", "--fusion", "--normalization", "--candidates", "--mode", "--embedder",
                 "--model", "-k"):
        assert flag in result.output


def test_secrets_come_from_a_file_or_a_prompt_and_are_never_shown(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    key = tmp_path / "es.key"
    key.write_text("QUtJRDprZXktZnJvbS1maWxl\n")
    result = CliRunner().invoke(main, ["config", "show", "--json", "--es-api-key-file", str(key),
                                       "--es-password-prompt"], input="typed-pass-distinctive\n")
    assert result.exit_code == 0, result.output
    assert "QUtJRDprZXktZnJvbS1maWxl" not in result.output and "typed-pass-distinctive" not in result.output
    out = json.loads(result.output[result.output.index("{"):])["settings"]
    assert out["es_api_key"] == {"value": "****", "source": "--es-api-key-file"}
    assert out["es_password"] == {"value": "****", "source": "--es-password-prompt"}
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    bad = CliRunner().invoke(main, ["status", "--es-api-key-file", str(empty)])
    assert bad.exit_code == 2 and "empty" in bad.output
