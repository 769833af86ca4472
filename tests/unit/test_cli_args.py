"""Argument errors are one-line messages with exit code 2, before anything heavy is loaded."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from esrag.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in ("init", "ingest", "search", "ask", "status", "delete", "eval", "tune"):
        assert f"  {cmd}" in result.output


def test_help_does_not_import_torch() -> None:
    code = ("import sys; from click.testing import CliRunner; from esrag.cli import main; "
            "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0; "
            "print('torch' in sys.modules, 'elasticsearch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("weight", ["-0.1", "1.01", "nan"])
def test_doc_weight_outside_unit_interval_is_a_usage_error(runner: CliRunner, weight: str) -> None:
    result = runner.invoke(main, ["search", "q", "--doc-weight", weight])
    assert result.exit_code == 2
    assert "--doc-weight" in result.output and "between 0 and 1" in result.output
    tune = runner.invoke(main, ["tune", ".", "--doc-weights", f"0,{weight}"])
    assert tune.exit_code == 2 and "--doc-weights" in tune.output


@pytest.mark.parametrize("alpha", ["-0.1", "1.01", "2"])
def test_alpha_outside_unit_interval_is_a_usage_error(runner: CliRunner, alpha: str) -> None:
    result = runner.invoke(main, ["search", "q", "--alpha", alpha])
    assert result.exit_code == 2
    assert "--alpha" in result.output and "between 0 and 1" in result.output


def test_filter_without_equals_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["search", "q", "--filter", "team"])
    assert result.exit_code == 2
    assert "KEY=VALUE" in result.output


def test_missing_ingest_path_is_a_usage_error_naming_it(runner: CliRunner, tmp_path: object) -> None:
    result = runner.invoke(main, ["ingest", "/no/such/dir-xyz"])
    assert result.exit_code == 2
    assert "/no/such/dir-xyz" in result.output and "does not exist" in result.output


def test_bad_index_name_is_a_usage_error(runner: CliRunner) -> None:
    result = runner.invoke(main, ["status", "--index", "Bad Name"])
    assert result.exit_code == 2
    assert "invalid index name" in result.output
    assert "Traceback" not in result.output


def test_bad_env_value_names_the_variable(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESRAG_ALPHA", "lots")
    result = runner.invoke(main, ["status"])
    assert result.exit_code == 2
    assert "ESRAG_ALPHA" in result.output


def test_unknown_choice_is_rejected(runner: CliRunner) -> None:
    result = runner.invoke(main, ["search", "q", "--fusion", "magic"])
    assert result.exit_code == 2


def test_delete_needs_a_target(runner: CliRunner) -> None:
    result = runner.invoke(main, ["delete"])
    assert result.exit_code == 2
    assert "--doc" in result.output


def test_exact_flag_sets_exact_knn_on_search_ask_and_eval(runner: CliRunner) -> None:
    import json

    for cmd in ("search", "ask", "eval"):
        help_text = runner.invoke(main, [cmd, "--help"]).output
        assert "--exact" in help_text, cmd
    shown = json.loads(runner.invoke(main, ["config", "show", "--json", "--exact"]).output)["settings"]
    assert shown["exact_knn"] == {"value": True, "source": "--exact"}
    shown = json.loads(runner.invoke(main, ["config", "show", "--json", "--no-exact"]).output)["settings"]
    assert shown["exact_knn"]["value"] is False
