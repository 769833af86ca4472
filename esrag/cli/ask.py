"""``esrag ask``: answer a question from the retrieved passages, with numbered citations."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from esrag.cli.common import (
    engine_from,
    generation_options,
    model_options,
    parse_filters,
    retrieval_options,
    setting_option,
    store_options,
    valid_text,
)


@click.command()
@click.argument("question", callback=valid_text)
@generation_options
@setting_option("rag_k", "-k", metavar="N",
                help="Passages retrieved for the prompt (fewer if they do not fit). [default: 5]")
@setting_option("no_repeat_ngram_size", "--no-repeat-ngram", metavar="N",
                help="transformers_local: never repeat a run of N of the answer's own tokens; 0 is off. [default: 4]")
@setting_option("repetition_penalty", "--repetition-penalty", metavar="P",
                help="transformers_local: penalty on tokens the answer already used; 1.0 is off. [default: 1.1]")
@setting_option("stop_on_loop", "--stop-on-loop/--no-stop-on-loop", default=None,
                help="Cut the answer where it starts repeating itself, and say so. [default: on]")
@setting_option("support_threshold", "--support-threshold", metavar="S",
                help="A sentence is supported when the passage it cites scores at least S (0..1); unsupported "
                     "ones are marked [unsupported]. [default: 0.5]")
@retrieval_options
@click.option("--stream/--no-stream", default=True, help="Print the answer as it is generated. [default: stream]")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: answer, citations (doc_id, source, chunk_id), sentences (cited "
                   "source, support score, supported), cut, notes, passages, timings (model load, retrieval, "
                   "first token, generation).")
@store_options
@model_options
def ask(question: str, filters: tuple[str, ...], stream: bool, as_json: bool, **opts: Any) -> None:
    """Answer QUESTION from the indexed documents, citing them as [n].

    Retrieves the top -k passages (hybrid search, same options as `esrag search`), fits as many as the
    model's context allows (best first), and asks the LLM to answer only from them. Each sentence is checked
    against the passage it cites: one that passage does not support is marked [unsupported], and a note
    after the answer says how many. An answer that starts repeating itself is cut there, and says so. Cited
    sources are listed after the answer, then the timings (model load, retrieval, first token,
    generation). When nothing relevant is found the LLM is not called.

    \b
    Examples:
      esrag ask "how do I rotate the API keys?"
      esrag ask "what is BM25?" --llm-url http://localhost:8080          # TGI / vLLM / llama.cpp
      esrag ask "what is BM25?" --llm-model HuggingFaceH4/zephyr-7b-beta  # local, 4-bit on a GPU
      esrag ask "error 137" --generator none -k 8                         # just show the passages
      esrag ask "which privileges?" --generator extractive                # no LLM: quote the passages
      esrag ask "..." --json | jq .citations
    """
    from esrag.answering.rag import finish
    from esrag.errors import GeneratorError

    parsed_filters = parse_filters(filters)
    with engine_from(need_generator=True, **opts) as engine:
        answer_stream = engine.ask_stream(question, filters=parsed_filters)
        if answer_stream.generator is None:
            answer = finish(answer_stream)
            click.echo(_json(answer) if as_json else _passages_text(answer))
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
        finally:
            answer_stream.close()
        answer = answer_stream.answer
        if as_json:
            click.echo(_json(answer))
            return
        if not printed:
            click.echo(answer.display_text, nl=False)
        click.echo()
        _print_footer(answer)


def _json(answer: Any) -> str:
    from esrag.schemas import AskResponse

    return json.dumps(AskResponse.of(answer).model_dump(mode="json"), indent=2)


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
    from esrag.answering.rag import format_sources

    if answer.no_context:
        return
    for note in answer.notes:
        click.echo()
        click.secho(f"Note: {note}", fg="yellow")
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
    parts = []
    if t.model_load_ms:
        converted = " (first use: converted the model once)" if t.model_converted else ""
        parts.append(f"model load {t.model_load_ms / 1e3:.1f} s{converted}")
    if t.embedder_load_ms:
        parts.append(f"embedder load {t.embedder_load_ms / 1e3:.1f} s")
    parts.append(f"retrieval {t.retrieval_ms:.0f} ms")
    if t.ttft_ms is not None:
        parts.append(f"first token {t.ttft_ms:.0f} ms")
    if t.generation_ms:
        parts.append(f"generation {t.generation_ms / 1e3:.1f} s")
    if t.tokens:
        rate = f" at {t.tokens_per_s:.1f} tokens/s" if t.tokens_per_s else ""
        parts.append(f"{t.tokens} tokens{rate}")
    loads = t.model_load_ms + t.embedder_load_ms
    parts.append(f"total {(t.total_ms + loads) / 1e3:.1f} s")
    click.secho(" · ".join(parts), err=True, dim=True)
