"""``esrag search``."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click

from esrag.cli.common import (
    engine_from,
    model_options,
    parse_filters,
    retrieval_options,
    setting_option,
    store_options,
    valid_text,
)
from esrag.retrieval.search import normalization_meaning


@click.command()
@click.argument("query", callback=valid_text)
@setting_option("k", "-k", metavar="N", help="Number of results. [default: 10]")
@retrieval_options
@click.option("--explain", is_flag=True,
              help="Show the per-hit fusion arithmetic and the exact store request (for ES: paste into Kibana "
                   "Dev Tools).")
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object: query, hits, parameters, timings_ms (and explain with --explain); "
                   "the document POST /v1/search returns (docs/api.md).")
@store_options
@model_options
def search(query: str, filters: tuple[str, ...], explain: bool, as_json: bool, **opts: Any) -> None:
    """Hybrid search: BM25 and kNN in one round trip, fused in the client.

    \b
    hybrid = (1 - alpha) * norm(bm25) + alpha * norm(knn)    (--fusion linear)
    hybrid = sum_i w_i / (rrf_k + rank_i)                      (--fusion rrf)

    \b
    Before fusing, each side's score of a chunk is weighed with the score of
    its section's opening chunk: (1 - W) * own + W * opening (--doc-weight W;
    a section is the part of a document under one heading, or the whole
    document when it has none). Long sections then no longer win by having
    many chunks to match with.

    \b
    Examples:
      esrag search "reset a forgotten password"
      esrag search "error 137" --mode bm25 -k 5
      esrag search "scaling shards" --alpha 0.7 --filter team=search --explain
    """
    parsed_filters = parse_filters(filters)
    with engine_from(**opts) as engine:
        result = engine.search(query, filters=parsed_filters)
        info = engine.explain(result) if explain else None
    if as_json:
        from esrag.schemas import SearchResponse

        doc = SearchResponse.of(query, result, k=engine.settings.k, rrf_k=engine.settings.rrf_k, explain=info)
        click.echo(json.dumps(doc.model_dump(mode="json"), indent=2))
        return
    if not result.hits:
        click.echo("No results.")
    for rank, hit in enumerate(result.hits, 1):
        title = f" — {hit.title}" if hit.title else ""
        click.secho(f"{rank:>2}. [{hit.score:.4f}] {hit.source}{title}  (chunk {hit.chunk_index})", bold=True)
        click.echo(textwrap.indent(textwrap.shorten(" ".join(hit.text.split()), 300), "    "))
        if explain:
            click.echo(_arithmetic(hit, result))
            if "source_index" in hit.metadata:  # a record of an Elasticsearch source: where it lives
                click.echo(f"    record: {hit.source} (source_index {hit.metadata['source_index']}, source_id "
                           f"{hit.metadata.get('source_id')})")
    if explain and result.hits:
        click.echo("\n" + textwrap.fill(normalization_meaning(result), 110))
        if result.lookup:
            click.echo(f"the query is a lookup (one identifier or a quoted phrase): alpha {result.alpha:g}, the "
                       "lookup_alpha setting (--lookup-alpha)")
    if explain and result.doc_weight:
        click.echo(f"\nraw scores and ranks are the store's; the normalised ones (rrf: the ranks) are of "
                   f"(1 - {result.doc_weight:g}) * own + {result.doc_weight:g} * the section's opening chunk's")
    if info is not None:
        click.secho("\nRequest sent to the store:", bold=True)
        req = info["request"]
        click.echo(req.get("kibana") if isinstance(req, dict) and "kibana" in req else json.dumps(req, indent=2))
        t = result.timings_ms
        click.echo(f"\nembed {t['embed_ms']:.1f} ms, store {t['store_ms']:.1f} ms, fuse {t['fuse_ms']:.2f} ms")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _arithmetic(hit: Any, result: Any) -> str:
    a = result.alpha
    if result.fusion == "rrf":
        return (f"    rrf: bm25 rank {hit.bm25_rank or '—'} -> {hit.bm25_norm:.5f}, "
                f"knn rank {hit.dense_rank or '—'} -> {hit.dense_norm:.5f}; sum {hit.score:.5f}")
    return (f"    bm25 {_fmt(hit.bm25_score)} (rank {hit.bm25_rank or '—'}) -> {result.normalization} "
            f"{hit.bm25_norm:.4f}; knn {_fmt(hit.dense_score)} (rank {hit.dense_rank or '—'}) -> "
            f"{hit.dense_norm:.4f}\n    hybrid = {1 - a:.2f} * {hit.bm25_norm:.4f} + {a:.2f} * "
            f"{hit.dense_norm:.4f} = {hit.score:.4f}")
