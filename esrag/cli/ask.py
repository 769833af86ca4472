"""``esrag ask``: answer a question from the retrieved passages, with numbered citations."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from esrag.cli.common import (
    build_settings,
    check_alpha,
    load_embedder,
    open_store,
    parse_filters,
    retrieval_options,
    store_options,
)
from esrag.config import GENERATORS, Settings


def resolve_generator(choice: str | None, settings: Settings) -> str:
    """The generator to use: ``--generator`` if given; else ``settings.generator_name`` (ESRAG_GENERATOR, or
    ``openai_compat`` when an LLM URL is configured, else ``transformers_local``)."""
    return choice or settings.generator_name


@click.command()
@click.argument("question")
@click.option("--generator", "generator_name", type=click.Choice(GENERATORS),
              help="openai_compat (a TGI/vLLM/SGLang/llama.cpp server), transformers_local (in-process), or "
                   "none (print the retrieved passages only). [default: openai_compat when an LLM URL is "
                   "set, else transformers_local; env ESRAG_GENERATOR]")
@click.option("--llm-url", metavar="URL",
              help="OpenAI-compatible server, e.g. http://localhost:8080 (implies --generator openai_compat). "
                   "API key from ESRAG_LLM_API_KEY. [env ESRAG_LLM_URL]")
@click.option("--model", "llm_model", metavar="NAME_OR_PATH",
              help="The LLM: a hub id (HuggingFaceH4/zephyr-7b-beta), a directory or a .gguf file for "
                   "transformers_local; the served model name for openai_compat. [default: packaged "
                   "SmolLM2-135M-Instruct locally, the server's model remotely; env ESRAG_LLM_MODEL]")
@click.option("--embed-model", "model", metavar="NAME_OR_PATH",
              help="The embedding model used for retrieval (what `esrag search --model` calls --model). "
                   "[default: all-MiniLM-L6-v2; env ESRAG_MODEL]")
@click.option("--device", metavar="DEVICE", help="cpu, cuda, cuda:1... for both models. [default: cuda if "
                                                 "available]")
@click.option("--quantize", type=click.Choice(["auto", "4bit", "none"]),
              help="transformers_local precision: auto = 4-bit NF4 on CUDA, float32 on CPU. [env "
                   "ESRAG_QUANTIZE]")
@click.option("--max-new-tokens", type=click.IntRange(min=1), metavar="N",
              help="Longest answer, in tokens. [default: 512]")
@click.option("--temperature", type=click.FloatRange(min=0.0), metavar="T",
              help="Sampling temperature; 0 is greedy. [default: 0]")
@click.option("--force-citations/--no-force-citations", default=None,
              help="transformers_local: make every sentence of the answer cite a source, by constraining "
                   "decoding where the model would end a sentence (the model picks the source). Small models "
                   "rarely cite otherwise. Servers (openai_compat) only get the instruction to cite. "
                   "[default: on; env ESRAG_FORCE_CITATIONS]")
@click.option("--llm-timeout", type=click.FloatRange(min=0.0, min_open=True), metavar="SECONDS",
              help="openai_compat: seconds to wait for the server (connect, and between streamed pieces). "
                   "[default: 300]")
@click.option("--min-score", type=float, metavar="S",
              help="Answer \"nothing relevant\" without calling the LLM when the best fused score is below S. "
                   "[default: 0]")
@click.option("-k", "rag_k", type=click.IntRange(min=1), metavar="N",
              help="Passages retrieved for the prompt (fewer if they do not fit). [default: 5]")
@retrieval_options
@click.option("--stream/--no-stream", default=True, help="Print the answer as it is generated. [default: stream]")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: answer, citations (doc_id, source, chunk_id), passages, timings.")
@store_options
def ask(question: str, generator_name: str | None, filters: tuple[str, ...], stream: bool, as_json: bool,
        **opts: Any) -> None:
    """Answer QUESTION from the indexed documents, citing them as [n].

    Retrieves the top -k passages (hybrid search, same options as `esrag search`), fits as many as the
    model's context allows (best first), and asks the LLM to answer only from them. Cited sources are listed
    after the answer. When nothing relevant is found the LLM is not called.

    \b
    Examples:
      esrag ask "how do I rotate the API keys?"
      esrag ask "what is BM25?" --llm-url http://localhost:8080      # TGI / vLLM / llama.cpp
      esrag ask "what is BM25?" --model HuggingFaceH4/zephyr-7b-beta  # local, 4-bit on a GPU
      esrag ask "error 137" --generator none -k 8                     # just show the passages
      esrag ask "..." --json | jq .citations
    """
    from esrag import plugins
    from esrag.errors import GeneratorError, IndexNotFoundError
    from esrag.rag import RagPipeline
    from esrag.search import HybridSearcher

    check_alpha(opts.get("alpha"))
    parsed_filters = parse_filters(filters)
    settings = build_settings(**opts)
    name = resolve_generator(generator_name, settings)
    store = open_store(settings)
    if not store.exists():
        where = store.describe()
        raise IndexNotFoundError(f"index {where['index']!r} not found ({where['store']}: {where['location']}); "
                                 "run `esrag ingest PATH` first")
    embedder = load_embedder(settings) if settings.mode != "bm25" else None
    searcher = HybridSearcher(store, embedder, settings)
    generator = None if name == "none" else plugins.load(plugins.GENERATORS, name)(settings)
    try:
        pipeline = RagPipeline(searcher, generator, settings)
        answer_stream = pipeline.stream(question, filters=parsed_filters)
        if generator is None:
            answer = _consume(answer_stream)
            click.echo(json.dumps(answer.to_dict(), indent=2) if as_json else _passages_text(answer))
            return
        printed = False
        try:
            for piece in answer_stream:
                if stream and not as_json:
                    click.echo(piece, nl=False)
                    printed = True
        except GeneratorError:
            if printed:
                click.echo()
            raise
        answer = answer_stream.answer
        if as_json:
            click.echo(json.dumps(answer.to_dict(), indent=2))
            return
        if not printed:
            click.echo(answer.text, nl=False)
        click.echo()
        _print_footer(answer)
    finally:
        if generator is not None:
            generator.close()
        store.close()


def _consume(answer_stream: Any) -> Any:
    for _ in answer_stream:
        pass
    return answer_stream.answer


def _passages_text(answer: Any) -> str:
    if not answer.passages:
        return "No relevant passages found."
    blocks = []
    for p in answer.passages:
        h = p.hit
        title = f" — {h.title}" if h.title and h.title != h.source else ""
        head = click.style(f"[{p.n}] {h.source}{title}", bold=True)
        blocks.append(f"{head}  (score {h.score:.4f}, chunk {h.chunk_index})\n"
                      + textwrap.indent(h.text.strip(), "    "))
    return "\n\n".join(blocks)


def _print_footer(answer: Any) -> None:
    from esrag.rag import format_sources

    if answer.no_context:
        return
    sources = format_sources(answer.citations)
    if sources:
        click.echo()
        click.echo(sources)
    elif answer.passages:
        click.echo()
        click.echo("The answer cites no source. Passages given to the model:")
        for p in answer.passages:
            click.echo(f"[{p.n}] {p.hit.source}")
    if answer.invalid_citations:
        numbers = ", ".join(f"[{n}]" for n in answer.invalid_citations)
        click.secho(f"note: the answer cites {numbers}, which match none of the {len(answer.passages)} "
                    "sources given", err=True, fg="yellow")
    t = answer.timings
    parts = [f"retrieval {t.retrieval_ms:.0f} ms"]
    if t.ttft_ms is not None:
        parts.append(f"first token {t.ttft_ms:.0f} ms")
    if t.tokens:
        rate = f" at {t.tokens_per_s:.1f} tokens/s" if t.tokens_per_s else ""
        parts.append(f"{t.tokens} tokens{rate}")
    parts.append(f"total {t.total_ms / 1e3:.1f} s")
    click.secho(" · ".join(parts), err=True, dim=True)
