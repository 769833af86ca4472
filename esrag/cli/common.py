"""Options and helpers shared by the commands: settings resolution, store and embedder construction."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import click

from esrag import plugins
from esrag.config import FUSIONS, MODES, NORMALIZATIONS, Settings
from esrag.stores.base import Store
from esrag.types import Filters

F = TypeVar("F", bound=Callable[..., Any])


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


store_options = _stack(
    click.option("--index", "index", metavar="NAME",
                 help="Index name (an ES alias, or the SQLite file name). [default: esrag; env ESRAG_INDEX]"),
    click.option("--store", metavar="NAME",
                 help="Store plugin: elasticsearch, sqlite, or one a package registers under the 'esrag.stores' "
                      "entry point. [default: elasticsearch when --es-url is set, else sqlite; env ESRAG_STORE]"),
    click.option("--es-url", metavar="URL", help="Elasticsearch URL, e.g. http://localhost:9200 [env ESRAG_ES_URL]"),
    click.option("--es-api-key", metavar="KEY", help="Elasticsearch API key (base64 id:key). [env ESRAG_ES_API_KEY]"),
    click.option("--es-username", metavar="USER", help="Basic auth user. [env ESRAG_ES_USERNAME]"),
    click.option("--es-password", metavar="PASS", help="Basic auth password. [env ESRAG_ES_PASSWORD]"),
    click.option("--es-ca-certs", metavar="FILE", type=click.Path(dir_okay=False),
                 help="CA certificate bundle for TLS. [env ESRAG_ES_CA_CERTS]"),
    click.option("--sqlite-dir", metavar="DIR", help="Where the embedded store's files live. [default: .esrag]"),
)

model_options = _stack(
    click.option("--model", metavar="NAME_OR_PATH",
                 help="sentence-transformers model. [default: all-MiniLM-L6-v2, packaged; env ESRAG_MODEL]"),
    click.option("--device", metavar="DEVICE", help="cpu, cuda, cuda:1, mps... [default: cuda if available]"),
    click.option("--batch-size", type=click.IntRange(min=1), help="Embedding batch size. [default: 64]"),
)


def filter_option(f: F) -> F:
    return click.option(
        "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Only chunks whose metadata KEY equals VALUE (also doc_id, source, title). Repeatable: "
             "different keys must all match, repeated keys match any value.",
    )(f)


retrieval_options = _stack(
    click.option("--mode", type=click.Choice(MODES), help="Retrieval mode. [default: hybrid]"),
    click.option("--alpha", type=float, metavar="A",
                 help="Dense weight in [0,1]: 0 = pure BM25, 1 = pure kNN. [default: 0.5]"),
    click.option("--fusion", type=click.Choice(FUSIONS), help="linear (alpha-weighted) or rrf. [default: linear]"),
    click.option("--normalization", type=click.Choice(NORMALIZATIONS),
                 help="Per-list score normalisation for linear fusion. [default: minmax]"),
    click.option("--candidates", type=click.IntRange(min=1), metavar="N",
                 help="Candidates fetched per side before fusion. [default: 100]"),
    filter_option,
)


def parse_pairs(values: Iterable[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {v!r}", param_hint=option)
        pairs.append((key.strip(), value.strip()))
    return pairs


def parse_filters(values: Iterable[str]) -> Filters:
    out: dict[str, tuple[str, ...]] = {}
    for key, value in parse_pairs(values, "--filter"):
        out[key] = (*out.get(key, ()), value)
    return out


def check_alpha(alpha: float | None) -> None:
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise click.BadParameter(f"must be between 0 and 1, got {alpha}", param_hint="--alpha")


def build_settings(**values: Any) -> Settings:
    """Settings from config file and environment, overridden by the non-None CLI values given."""
    _quiet_libraries()
    from dataclasses import fields

    names = {f.name for f in fields(Settings)}
    return Settings.load({k: v for k, v in values.items() if k in names and v is not None})


def open_store(settings: Settings) -> Store:
    store: Store = plugins.load(plugins.STORES, settings.store_name)(settings)
    return store


def load_embedder(settings: Settings):  # type: ignore[no-untyped-def]
    from esrag.embedders.sentence_transformers import load_embedder as _load

    return _load(settings)


def settings_command(f: F) -> F:
    """Pass the resolved Settings as the first argument instead of the raw option values."""

    @functools.wraps(f)
    def wrapper(**kwargs: Any) -> Any:
        return f(build_settings(**kwargs), **kwargs)

    return wrapper  # type: ignore[return-value]
