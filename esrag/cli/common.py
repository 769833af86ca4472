"""Options and helpers shared by the commands.

Every option that sets a setting is made by ``setting_option``: its value is validated by the same pydantic
definition as the config file and the environment (one definition of "alpha is a number in [0, 1]"), and
``engine_from`` records which flag gave it, for error messages and ``esrag config show``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from esrag.config import FUSIONS, INDEX_OPTIONS, MODES, NORMALIZATIONS, QUANTIZE, SIMILARITIES, Settings
from esrag.errors import ConfigError
from esrag.types import Filters
from esrag.validation import printable, surrogate_problem

F = TypeVar("F", bound=Callable[..., Any])

#: option parameter name -> the flag a user typed, for "where did this value come from"
FLAGS: dict[str, str] = {}


def quiet_libraries() -> None:
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


def stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


class SettingType(click.ParamType):
    """A click type that validates a flag's value with the Settings field of the same name."""

    def __init__(self, setting: str) -> None:
        self.setting = setting
        self.name = setting

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from esrag.config import _validate_one

        flag = param.opts[0] if param is not None and param.opts else self.setting
        try:
            return _validate_one(self.setting, value, flag, strict=False)
        except ConfigError as e:
            self.fail(str(e).split(": ", 1)[-1], param, ctx)


def flag_of(setting: str) -> str:
    """How the CLI names a setting in an error message (``esrag.errors.setting``): its flag, or for a
    setting without one its environment variable."""
    return FLAGS.get(setting) or f"ESRAG_{setting.upper()}"


def setting_option(setting: str, *flags: str, help: str, **kwargs: Any) -> Callable[[F], F]:  # noqa: A002
    """An option that overrides the setting ``setting`` (validated like the config file and ESRAG_*)."""
    flags = flags or (f"--{setting.replace('_', '-')}",)
    long_flag = next((f for f in flags if f.startswith("--")), flags[0]).split("/")[0]
    FLAGS[setting] = long_flag
    env = f"ESRAG_{setting.upper()}"
    if "type" not in kwargs and not kwargs.get("is_flag") and not any("/" in f for f in flags):
        kwargs["type"] = SettingType(setting)
    if "[env" not in help:
        help = f"{help} [env {env}]"  # noqa: A001
    return click.option(*flags, setting, help=help, **kwargs)


def choice_option(setting: str, choices: Iterable[str], *flags: str, help: str) -> Callable[[F], F]:  # noqa: A002
    return setting_option(setting, *flags, type=click.Choice(list(choices)), help=help)


def _read_secret_file(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        secret = Path(value).expanduser().read_text(encoding="utf-8").strip()
    except OSError as e:
        raise click.BadParameter(f"cannot read {value}: {e.strerror}", ctx, param) from None
    if not secret:
        raise click.BadParameter(f"{value} is empty", ctx, param)
    return secret


store_options = stack(
    setting_option("index", "--index", metavar="NAME",
                   help="Index name (an ES alias, or the SQLite file name). [default: esrag]"),
    setting_option("store", "--store", metavar="NAME",
                   help="Store plugin: elasticsearch, sqlite, or one a package registers (see `esrag plugins`). "
                        "[default: elasticsearch when --es-url is set, else sqlite]"),
    setting_option("es_url", "--es-url", metavar="URL", help="Elasticsearch URL, e.g. http://localhost:9200."),
    setting_option("es_api_key", "--es-api-key", metavar="KEY",
                   help="Elasticsearch API key (base64 id:key). Prefer ESRAG_ES_API_KEY or --es-api-key-file: "
                        "a flag is visible to other users in `ps`."),
    click.option("--es-api-key-file", "es_api_key_file", metavar="FILE", callback=_read_secret_file,
                 help="Read the Elasticsearch API key from FILE."),
    setting_option("es_username", "--es-username", metavar="USER", help="Basic auth user."),
    setting_option("es_password", "--es-password", metavar="PASS",
                   help="Basic auth password. Prefer ESRAG_ES_PASSWORD or --es-password-file (flags show in "
                        "`ps`)."),
    click.option("--es-password-file", "es_password_file", metavar="FILE", callback=_read_secret_file,
                 help="Read the Basic auth password from FILE."),
    click.option("--es-password-prompt", "es_password_prompt", is_flag=True,
                 help="Ask for the Basic auth password on the terminal (not echoed)."),
    setting_option("es_ca_certs", "--es-ca-certs", metavar="FILE", help="CA certificate bundle for TLS."),
    setting_option("es_verify_certs", "--es-verify-certs/--no-es-verify-certs", default=None,
                   help="Verify the cluster's TLS certificate. Turning it off warns every time. [default: on]"),
    setting_option("es_timeout", "--es-timeout", metavar="SECONDS",
                   help="Seconds to wait for an Elasticsearch response. [default: 30]"),
    setting_option("sqlite_dir", "--sqlite-dir", metavar="DIR",
                   help="Where the embedded store's files live. [default: the project's .esrag/: the nearest "
                        "directory upwards holding esrag.toml or .esrag/, else ./.esrag]"),
    setting_option("exact_knn", "--exact/--no-exact", default=None,
                   help="Embedded store: answer kNN exactly over every vector (loaded into memory) instead of "
                        "through its HNSW index, e.g. to measure the index's recall. [default: off; the index "
                        "serves from 50,000 chunks]"),
)

model_options = stack(
    setting_option("embedder", "--embedder", metavar="NAME",
                   help="Embedder plugin (see `esrag plugins`). [default: sentence_transformers]"),
    setting_option("model", "--model", metavar="NAME_OR_PATH",
                   help="The embedding model, in every command. [default: all-MiniLM-L6-v2, packaged]"),
    setting_option("device", "--device", metavar="DEVICE",
                   help="cpu, cuda, cuda:1, mps... for the models. [default: cuda if available]"),
    setting_option("batch_size", "--batch-size", metavar="N", help="Embedding batch size. [default: 64]"),
    setting_option("query_prefix", "--query-prefix", metavar="TEXT",
                   help="Prepended to queries before embedding (e5: 'query: '). [default: none]"),
    setting_option("passage_prefix", "--passage-prefix", metavar="TEXT",
                   help="Prepended to chunks before embedding (e5: 'passage: '). [default: none]"),
)

index_settings_options = stack(
    choice_option("index_options", INDEX_OPTIONS, "--index-options",
                  help="ES dense_vector index type. [default: int8_hnsw]"),
    choice_option("similarity", SIMILARITIES, "--similarity", help="Vector similarity. [default: cosine]"),
)

chunk_options = stack(
    setting_option("chunk_size", "--chunk-size", metavar="TOKENS",
                   help="Max chunk length in model tokens, context included. [default: 256]"),
    setting_option("chunk_overlap", "--chunk-overlap", metavar="TOKENS", help="Overlap in model tokens. [default: 32]"),
    setting_option("embed_template", "--embed-template", metavar="TEMPLATE",
                   help="What is embedded for each chunk: {title}, {headings} (the section path) and {text} "
                        "(the chunk, last); '{text}' embeds the chunk alone. The stored text is the chunk. "
                        "[default: '{headings}\\n\\n{text}']"),
    setting_option("analyzer", "--analyzer", metavar="NAME",
                   help="Text analysis of the BM25 side: standard, or english (Porter stemming) on both stores; "
                        "on Elasticsearch any analyzer the cluster has. [default: english]"),
)


def filter_option(f: F) -> F:
    return click.option(
        "--filter", "filters", multiple=True, metavar="KEY=VALUE",
        help="Only chunks whose metadata KEY equals VALUE (also doc_id, source, title). Repeatable: "
             "different keys must all match, repeated keys match any value.",
    )(f)


fusion_options = stack(
    setting_option("alpha", "--alpha", metavar="A",
                   help="Dense weight in [0,1]: 0 = pure BM25, 1 = pure kNN. [default: 0.65]"),
    choice_option("normalization", NORMALIZATIONS, "--normalization",
                  help="Per-list score normalisation for linear fusion. [default: zscore]"),
    setting_option("rrf_k", "--rrf-k", metavar="K", help="k of reciprocal rank fusion. [default: 60]"),
    setting_option("doc_weight", "--doc-weight", metavar="W",
                   help="Section evidence in [0,1]: each chunk's score on each side becomes (1-W) * its own + "
                        "W * the score of its section's opening chunk (a section: the part of a document under "
                        "one heading, or all of it without headings; the lowest candidate's score if that chunk "
                        "was not retrieved); 0 ranks chunks alone. [default: 0.75]"),
)

retrieval_options = stack(
    choice_option("mode", MODES, "--mode", help="Retrieval mode. [default: hybrid]"),
    choice_option("fusion", FUSIONS, "--fusion", help="linear (alpha-weighted) or rrf. [default: linear]"),
    fusion_options,
    setting_option("lookup_alpha", "--lookup-alpha", metavar="A",
                   help="The alpha of a query that is one identifier (E1234, PyErr_SetString, os.path.join, "
                        "utf-8) or a \"quoted phrase\", when --alpha is not given; set it to alpha to treat "
                        "lookups like any query. [default: 0.2]"),
    setting_option("candidates", "--candidates", metavar="N",
                   help="Candidates fetched per side before fusion. [default: 100]"),
    filter_option,
)

generation_options = stack(
    setting_option("generator", "--generator", metavar="NAME",
                   help="Generator plugin (see `esrag plugins`): openai_compat (a TGI/vLLM/SGLang/llama.cpp "
                        "server), transformers_local (in-process), extractive (no LLM: the best sentences of "
                        "the passages), none (the passages only). [default: openai_compat when an LLM URL is "
                        "set, else extractive]"),
    setting_option("llm_url", "--llm-url", metavar="URL",
                   help="OpenAI-compatible server, e.g. http://localhost:8080 (implies --generator openai_compat). "
                        "API key from ESRAG_LLM_API_KEY."),
    setting_option("llm_model", "--llm-model", metavar="NAME_OR_PATH",
                   help="The LLM: a hub id (HuggingFaceH4/zephyr-7b-beta), a directory or a .gguf file for "
                        "transformers_local; the served model name for openai_compat. [default: packaged "
                        "SmolLM2-135M-Instruct locally, the server's model remotely]"),
    choice_option("quantize", QUANTIZE, "--quantize",
                  help="transformers_local precision: auto = 4-bit NF4 on CUDA, float32 on CPU."),
    setting_option("max_new_tokens", "--max-new-tokens", metavar="N", help="Longest answer, in tokens. [default: 512]"),
    setting_option("temperature", "--temperature", metavar="T", help="Sampling temperature; 0 is greedy. [default: 0]"),
    setting_option("force_citations", "--force-citations/--no-force-citations", default=None,
                   help="transformers_local: make every sentence of the answer cite a source, by constraining "
                        "decoding where the model would end a sentence (the model picks the source). Servers "
                        "(openai_compat) only get the instruction to cite. [default: on]"),
    setting_option("llm_timeout", "--llm-timeout", metavar="SECONDS",
                   help="openai_compat: seconds to wait for the server (connect, and between streamed pieces). "
                        "[default: 300]"),
    setting_option("llm_context_tokens", "--llm-context-tokens", metavar="N",
                   help="The LLM's context window, when the server or model config does not say. [default: "
                        "asked]"),
    setting_option("cache_dir", "--cache-dir", metavar="DIR",
                   help="Where converted local models are cached. [default: ~/.cache/esrag]"),
    setting_option("min_score", "--min-score", metavar="S",
                   help="Answer \"nothing relevant\" without calling the LLM when the best fused score is below "
                        "S. [default: 0]"),
)


def _check_unicode(value: str, hint: str) -> None:
    """A usage error for text that is not valid Unicode: bytes the shell passed that are not UTF-8, or a
    lone surrogate (``$'\\ud800'``), which no store or model can take."""
    if (problem := surrogate_problem(value)) is not None:
        raise click.BadParameter(f"'{printable(value)}' {problem} (give UTF-8 text)", param_hint=hint)


def valid_text(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback for free-text arguments (a query, a question): see ``_check_unicode``."""
    _check_unicode(value, param.human_readable_name)
    return value


def parse_pairs(values: Iterable[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for v in values:
        _check_unicode(v, option)
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


def build_settings(**values: Any) -> Settings:
    """Settings from the config file and environment, overridden by the non-None option values given
    (options that are not settings are ignored)."""
    quiet_libraries()
    if values.get("es_api_key_file"):
        values["es_api_key"] = values["es_api_key_file"]
    if values.get("es_password_file"):
        values["es_password"] = values["es_password_file"]
    if values.get("es_password_prompt"):
        values["es_password"] = click.prompt("Elasticsearch password", hide_input=True, err=True)
    names = set(Settings.model_fields) - {"plugin_options", "sources"}
    overrides = {k: v for k, v in values.items() if k in names and v is not None}
    sources = {k: FLAGS.get(k, k) for k in overrides}
    for secret, how in (("es_api_key", "es_api_key_file"), ("es_password", "es_password_file"),
                        ("es_password", "es_password_prompt")):
        if values.get(how):
            sources[secret] = "--" + how.replace("_", "-")
    return Settings.load(overrides, override_source=sources)


def engine_from(need_generator: bool = False, **values: Any) -> Any:
    """The Engine for these option values, with every configured plugin name (the generator's too, with
    ``need_generator``) checked first: exit 2 and the installed names for an unknown one, before any model
    loads."""
    from esrag.engine import Engine

    engine = Engine(build_settings(**values))
    engine.check_plugins(need_generator=need_generator)
    return engine


def progress_flag(flag: bool | None) -> bool:
    import sys

    return sys.stderr.isatty() if flag is None else flag
