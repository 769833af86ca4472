"""A fixture that installs tests/plugins/fake_plugins.py as a third-party distribution (a .dist-info with
entry points on sys.path), exactly as `pip install esrag-fakes` would make it visible to esrag."""

from __future__ import annotations

from pathlib import Path

import pytest

ENTRY_POINTS = """\
[esrag.embedders]
hashed = tests.plugins.fake_plugins:HashedBagOfWords

[esrag.generators]
echo = tests.plugins.fake_plugins:EchoCiter
echo_serial = tests.plugins.fake_plugins:SerialEchoCiter
slow = tests.plugins.fake_plugins:SlowCounter

[esrag.sources]
notes = tests.plugins.fake_plugins:NotesSource
"""


def write_distribution(site: Path) -> Path:
    dist = site / "esrag_fakes-1.2.3.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: esrag-fakes\nVersion: 1.2.3\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture
def fake_distribution(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = write_distribution(tmp_path_factory.mktemp("site"))
    monkeypatch.syspath_prepend(str(site))
    return site
