"""What ``import esrag`` offers and costs, and what an adapter says without its framework."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import esrag

ROOT = Path(__file__).resolve().parents[2]


def python(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with this checkout's esrag first on the path."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_all_lists_every_public_name_and_each_resolves_to_its_defining_module() -> None:
    from esrag import _EXPORTS

    assert esrag.__all__ == ["__version__", *_EXPORTS]
    for name, module in _EXPORTS.items():
        value = getattr(esrag, name)
        assert value is getattr(sys.modules[module], name)
    assert esrag.Engine.__module__ == "esrag.engine" and esrag.Hit.__module__ == "esrag.types"
    assert set(_EXPORTS) <= set(dir(esrag))
    with pytest.raises(AttributeError, match="no attribute 'HybridSearcher'"):
        esrag.HybridSearcher  # noqa: B018 - internal names are not offered at the top level


def test_import_esrag_imports_no_submodule_no_numpy_no_pydantic_and_no_framework() -> None:
    out = python("import sys, esrag; print(sorted(m for m in sys.modules if m.split('.')[0] in "
                 "{'esrag', 'numpy', 'pydantic', 'torch', 'typing', 'langchain_core', 'llama_index', 'haystack'}))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['esrag']"


def test_a_public_name_imports_its_module_on_first_use() -> None:
    out = python("import sys, esrag; esrag.Hit; print('esrag.types' in sys.modules, 'esrag.engine' in sys.modules)")
    assert out.stdout.split() == ["True", "False"], out.stderr


@pytest.mark.parametrize(("module", "blocked", "extra", "package"), [
    ("esrag.integrations.langchain", "langchain_core", "langchain", "langchain-core"),
    ("esrag.integrations.llamaindex", "llama_index", "llamaindex", "llama-index-core"),
    ("esrag.integrations.haystack", "haystack", "haystack", "haystack-ai"),
])
def test_an_adapter_without_its_framework_names_the_extra_to_install(module: str, blocked: str, extra: str,
                                                                    package: str) -> None:
    # sys.modules[name] = None is how Python marks a module as not importable: as if it were not installed
    out = python(f"import sys; sys.modules[{blocked!r}] = None\n"
                 f"import esrag.integrations\n"
                 f"try:\n    import {module}\n"
                 f"except esrag.MissingDependencyError as e:\n    print(type(e.__cause__).__name__, e.extra, e)\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"ModuleNotFoundError {extra} {module} (esrag's {extra} adapter) needs the "
                                 f"'{package}' package (the esrag[{extra}] extra)")
