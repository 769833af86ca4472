"""Stores are plugins: a third-party package registers one through the ``esrag.stores`` entry point and
esrag uses it without any change. The default store is chosen from the configuration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from esrag import plugins
from esrag.cli import main
from esrag.errors import PluginNotFoundError

pytestmark = pytest.mark.integration

PLUGIN = '''
from esrag.stores.sqlite import SQLiteStore


class ThirdPartyStore(SQLiteStore):
    name = "thirdparty"

    def describe(self):
        return {**super().describe(), "store": "thirdparty"}
'''


@pytest.fixture
def third_party_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking distribution (a .dist-info with entry points) on sys.path."""
    (tmp_path / "esrag_thirdparty.py").write_text(PLUGIN)
    dist = tmp_path / "esrag_thirdparty-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: esrag-thirdparty\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[esrag.stores]\nthirdparty = esrag_thirdparty:ThirdPartyStore\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_stores_and_generators_are_registered_as_plugins() -> None:
    assert {"elasticsearch", "sqlite"} <= set(plugins.available(plugins.STORES))
    assert {"openai_compat", "transformers_local"} <= set(plugins.available(plugins.GENERATORS))


def test_a_third_party_store_is_found_and_used(third_party_package: Path, tmp_path: Path) -> None:
    assert "thirdparty" in plugins.available(plugins.STORES)
    result = CliRunner().invoke(main, ["status", "--json", "--store", "thirdparty", "--sqlite-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["store"] == "thirdparty"


def test_unknown_store_is_a_usage_error_listing_the_available_ones() -> None:
    with pytest.raises(PluginNotFoundError, match="elasticsearch, sqlite"):
        plugins.load(plugins.STORES, "nosuch")
    result = CliRunner().invoke(main, ["status", "--store", "nosuch"])
    assert result.exit_code == 2 and "no store named 'nosuch'" in result.output


def test_default_store_is_sqlite_without_es_url_and_elasticsearch_with_it(
    es_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert out["store"] == "sqlite" and out["location"].endswith(".esrag/esrag.db")
    monkeypatch.setenv("ESRAG_ES_URL", es_url)
    out = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)
    assert out["store"] == "elasticsearch" and out["location"] == es_url
