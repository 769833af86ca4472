"""Settings precedence: defaults < esrag.toml < ESRAG_* environment < explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from esrag.config import Settings, save_settings
from esrag.errors import ConfigError


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text('alpha = 0.2\nindex = "fromfile"\nk = 7\n')
    env = {"ESRAG_ALPHA": "0.4", "ESRAG_K": "3"}
    s = Settings.load({"alpha": 0.9, "candidates": None}, env=env, config_file=cfg)
    assert (s.alpha, s.k, s.index, s.candidates) == (0.9, 3, "fromfile", 100)


def test_store_defaults_to_sqlite_without_an_es_url() -> None:
    assert Settings().store_name == "sqlite"
    assert Settings(es_url="http://x:9200").store_name == "elasticsearch"
    assert Settings(es_url="http://x:9200", store="sqlite").store_name == "sqlite"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [("alpha", 1.5, "alpha"), ("doc_weight", -0.5, "doc_weight"), ("doc_weight", float("nan"), "doc_weight"),
     ("fusion", "magic", "fusion"), ("chunk_overlap", 300, "chunk_overlap"),
     ("index", "UPPER", "invalid index name"), ("k", 0, "k must be")],
)
def test_invalid_values_raise_config_error(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


def test_unknown_key_in_config_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text("alpah = 0.3\n")
    with pytest.raises(ConfigError, match="alpah"):
        Settings.load(env={}, config_file=cfg)


def test_save_settings_merges_and_round_trips(tmp_path: Path) -> None:
    cfg = tmp_path / "esrag.toml"
    cfg.write_text('index = "kept"\n')
    save_settings({"alpha": 0.35, "normalization": "zscore"}, cfg)
    s = Settings.load(env={}, config_file=cfg)
    assert (s.index, s.alpha, s.normalization) == ("kept", 0.35, "zscore")
    assert not (tmp_path / "esrag.toml.tmp").exists()
