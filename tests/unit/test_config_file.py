"""save_settings keeps the config file's permissions, its other tables and its comments."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

import pytest

from esrag.config_file import save_settings
from esrag.errors import ConfigError

ORIGINAL = """\
# project settings: keep this comment
[esrag]
es_url = "https://es.example:9243"  # the production cluster
alpha = 0.5

[esrag.store]
shards = 2

[tool.other]
name = "kept"  # another tool's table
"""


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_updates_the_esrag_table_and_keeps_everything_else_verbatim(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text(ORIGINAL)
    os.chmod(cfg, 0o600)
    save_settings({"alpha": 0.7, "fusion": "rrf"}, cfg)
    text = cfg.read_text()
    assert mode(cfg) == 0o600
    assert text.replace("alpha = 0.7", "alpha = 0.5").replace('fusion = "rrf"\n', "") == ORIGINAL
    data = tomllib.loads(text)
    assert data["esrag"]["alpha"] == 0.7 and data["esrag"]["fusion"] == "rrf"
    assert data["tool"]["other"]["name"] == "kept" and data["esrag"]["store"]["shards"] == 2


def test_a_group_readable_file_keeps_its_mode(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("[esrag]\nk = 1\n")
    os.chmod(cfg, 0o640)
    save_settings({"k": 2}, cfg)
    assert mode(cfg) == 0o640


def test_a_new_file_is_private(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    save_settings({"alpha": 0.3}, cfg)
    assert mode(cfg) == 0o600
    assert tomllib.loads(cfg.read_text()) == {"alpha": 0.3}


def test_a_file_with_only_other_tables_gets_an_esrag_table(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("[tool.other]\nname = 'kept'\n")
    save_settings({"alpha": 0.3}, cfg)
    assert tomllib.loads(cfg.read_text()) == {"tool": {"other": {"name": "kept"}}, "esrag": {"alpha": 0.3}}


def test_a_flat_file_is_edited_at_the_top_level(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("# flat\nalpha = 0.5\n")
    save_settings({"alpha": 0.9}, cfg)
    assert cfg.read_text() == "# flat\nalpha = 0.9\n"


def test_none_removes_a_key(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("[esrag]\nalpha = 0.5\nk = 3\n")
    save_settings({"alpha": None}, cfg)
    assert tomllib.loads(cfg.read_text()) == {"esrag": {"k": 3}}


def test_a_symlinked_file_is_written_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text("[esrag]\nk = 1\n")
    link = tmp_path / "esrag.toml"
    link.symlink_to(real)
    save_settings({"k": 5}, link)
    assert link.is_symlink() and tomllib.loads(real.read_text())["esrag"]["k"] == 5


def test_invalid_toml_is_an_error_naming_the_file_and_is_left_alone(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("[esrag\nbroken")
    with pytest.raises(ConfigError, match="esrag.toml"):
        save_settings({"k": 1}, cfg)
    assert cfg.read_text() == "[esrag\nbroken"
    assert [p.name for p in tmp_path.iterdir()] == ["esrag.toml"]  # no temporary file left behind
