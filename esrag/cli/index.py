"""Index lifecycle commands: init, ingest, status, delete. Each parses, calls the engine and prints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

from esrag import plugins
from esrag.cli.common import (
    chunk_options,
    engine_from,
    index_settings_options,
    model_options,
    parse_pairs,
    progress_flag,
    store_options,
)


@click.command()
@store_options
@model_options
@index_settings_options
def init(**opts: Any) -> None:
    """Create the index (mapping from mappings/chunks.json, dims from the model) if it does not exist.

    `esrag ingest` does this too; run init to create an empty index up front, for example to look at
    the mapping in Kibana before loading data.
    """
    with engine_from(**opts) as engine:
        created, where = engine.init_index()
        verb = "Created" if created else "Index already exists:"
        click.echo(f"{verb} {where['index']} ({where['store']} at {where['location']}), model "
                   f"{engine.embedder.model_name}, {engine.embedder.dims} dims")


class _Size(click.ParamType):
    """A byte size: 1000, 512KB, 100MB, 2GB (powers of 1024)."""

    name = "size"
    _UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper().replace(" ", "")
        number = text.rstrip("KMGB")
        unit = text[len(number):]
        try:
            size = float(number) * self._UNITS[unit]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a size such as 100MB, 512KB or 1000", param, ctx)
        if size < 1:
            self.fail(f"{value!r} must be at least 1 byte", param, ctx)
        return int(size)


def source_options(f: Any) -> Any:
    """The options of ``--from-index`` (the elasticsearch source) and ``--source``: ``ingest``, ``reindex``."""
    for option in reversed([
        click.option("--source", "source_name", metavar="NAME",
                     help="Ingest from a source plugin (see `esrag plugins`) configured by its [source.NAME] table "
                          "in esrag.toml. [default: files for PATHS, elasticsearch for --from-index]"),
        click.option("--from-index", "from_index", metavar="NAME",
                     help="Read the records of this Elasticsearch index (or alias) as the documents."),
        click.option("--text-field", "text_fields", multiple=True, metavar="FIELD",
                     help="Field holding text to search (dotted path). Repeatable: the fields are joined, each "
                          "under its own heading."),
        click.option("--title-field", metavar="FIELD", help="Field holding the record's title."),
        click.option("--metadata-field", "metadata_fields", multiple=True, metavar="FIELD",
                     help="Field copied onto the chunks, for search --filter FIELD=VALUE. Repeatable."),
        click.option("--id-field", metavar="FIELD",
                     help="Field holding the record id (a keyword or integer). [default: _id]"),
        click.option("--query", metavar="JSON", help="Only records matching this query (a JSON query object)."),
        click.option("--source-es-url", metavar="URL",
                     help="The source cluster, if not the store's (--es-url). Its credentials are separate."),
        click.option("--source-es-api-key", metavar="KEY",
                     help="API key for the source cluster. Prefer --source-es-api-key-file or "
                          "ESRAG_SOURCE_ELASTICSEARCH_ES_API_KEY (flags show in `ps`)."),
        click.option("--source-es-api-key-file", metavar="FILE", help="Read the source's API key from FILE."),
        click.option("--slice", "slice_", metavar="I/N",
                     help="Read only slice I (0 to N-1) of N: N processes split the index between them."),
        click.option("--source-keep-alive", metavar="DURATION",
                     help="How long the source's point in time stays open between two pages. [default: 5m]"),
    ]):
        f = option(f)
    return f


def file_options(f: Any) -> Any:
    """The options that choose and label files (the files source): ``ingest``, ``reindex``."""
    for option in reversed([
        click.option("--glob", "globs", multiple=True, metavar="PATTERN",
                     help="Only files matching PATTERN (relative to the directory given, '**' ok). Repeatable."),
        click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
                     help="Skip files matching. Repeatable."),
        click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
                     help="Metadata added to every chunk, usable with search --filter. Repeatable."),
        click.option("--follow-symlinks", is_flag=True,
                     help="Follow symlinks that lead outside PATHS (by default they are skipped and listed)."),
        click.option("--max-file-size", type=_Size(), default="100MB", show_default=True, metavar="SIZE",
                     help="Skip larger files, with a reason (a JSONL file: larger lines). Units: B, KB, MB, GB."),
        click.option("--doc-prefix", default="", metavar="PREFIX",
                     help="Put PREFIX before every doc id (ids are relative: 'docs/a.md' for docs/ given as PATH)."),
    ]):
        f = option(f)
    return f


#: the parameters ``file_options`` and ``source_options`` add to a command
SOURCE_PARAMS = ("globs", "excludes", "metadata", "follow_symlinks", "max_file_size", "doc_prefix", "source_name",
                 "from_index", "text_fields", "title_field", "metadata_fields", "id_field", "query", "source_es_url",
                 "source_es_api_key", "source_es_api_key_file", "slice_", "source_keep_alive")


def make_source(engine: Any, paths: Sequence[str], o: dict[str, Any], paths_flag: str = "PATHS") -> Any:
    """The source that ``paths`` and the options of ``file_options``/``source_options`` (``o``, by
    parameter name) name: files for paths, the elasticsearch source for --from-index and its options, the
    ``--source`` plugin; None when they name none. UsageError for options that do not go together."""
    es_options = {"index": o["from_index"], "text_fields": o["text_fields"], "title_field": o["title_field"],
                  "metadata_fields": o["metadata_fields"], "id_field": o["id_field"], "query": o["query"],
                  "es_url": o["source_es_url"], "es_api_key": o["source_es_api_key"],
                  "es_api_key_file": o["source_es_api_key_file"], "slice": o["slice_"],
                  "keep_alive": o["source_keep_alive"]}
    from_es = any(v not in (None, ()) for v in es_options.values())
    source_name = o["source_name"]
    if paths and (from_es or source_name not in (None, "files")):
        raise click.UsageError(f"give {paths_flag}, or --from-index or --source (and their options), not both")
    if from_es and source_name not in (None, "elasticsearch"):
        raise click.UsageError(f"--from-index and its options belong to the elasticsearch source, not {source_name!r}")
    file_flags = o["globs"] or o["excludes"] or o["metadata"] or o["doc_prefix"] or o["follow_symlinks"]
    if from_es and file_flags:
        raise click.UsageError("--glob, --exclude, --metadata, --doc-prefix and --follow-symlinks are for files; "
                               "with --from-index use --metadata-field and --query")
    if paths:
        meta = dict(parse_pairs(o["metadata"], "--metadata"))
        return engine.source("files", paths=list(paths), glob=o["globs"], exclude=o["excludes"], metadata=meta,
                             follow_symlinks=o["follow_symlinks"], max_file_size=o["max_file_size"],
                             doc_prefix=o["doc_prefix"])
    if source_name not in (None, "elasticsearch"):
        plugins.check(plugins.SOURCES, source_name, "--source")
        return engine.source(source_name)
    if from_es or source_name == "elasticsearch":
        return engine.source("elasticsearch", **es_options)
    return None


@click.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=str))
@source_options
@file_options
@click.option("--prune", is_flag=True,
              help="Also delete from the index the documents of this source that this run did not produce: files "
                   "under PATHS deleted, moved, renamed, now empty, skipped or unreadable; records deleted from "
                   "the index or no longer matching --query. Never touches another source's documents.")
@chunk_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (also for an aborted run).")
@click.option("--progress/--no-progress", default=None, help="Progress bar. [default: on when stderr is a terminal]")
@store_options
@model_options
@index_settings_options
def ingest(paths: tuple[str, ...], prune: bool, as_json: bool, progress: bool | None, **opts: Any) -> None:
    """Load, chunk, embed and index files or directories, or the records of an Elasticsearch index.

    \b
    Supported: .txt .md .rst .html .htm .pdf .json .jsonl
    (JSONL: one document per line with "text" and optional "id", "title", other fields -> metadata;
    a record without an id gets one from its content. --metadata wins over a record's field of the
    same name, with a warning.)

    Doc ids are relative to the path given: `esrag ingest ~/src/proj/docs` stores docs/guide.md, so
    another checkout of the same corpus is the same index. Incremental: documents whose content is
    unchanged are skipped without loading the model; changed ones embed only their new text, and text
    already in the index (a moved or renamed file) reuses its vectors. Files that cannot be loaded are
    listed as skipped and the run goes on.

    With --from-index NAME, the records of an existing Elasticsearch index are the documents (ids
    es:NAME/<record id>; every hit names its source_index and source_id). The index is only read: a point
    in time paged with search_after, record versions first and the full record only when it changed.
    Also configurable as a [source.elasticsearch] table in esrag.toml.

    Exit codes: 0 done (skipped files are listed), 1 a chunk failed to write or the run was aborted
    (--json still prints what was written), 2 nothing to ingest (no supported file under PATHS).

    \b
    Examples:
      esrag ingest docs/ --prune
      esrag ingest notes/ --glob '**/*.md' --exclude 'drafts/**' --metadata team=search
      ESRAG_ES_URL=http://localhost:9200 esrag ingest handbook.pdf --index handbook
      esrag ingest --from-index products --text-field description --title-field name \\
          --metadata-field brand --query '{"term": {"status": "published"}}' --prune
    """
    from esrag.ingest.pipeline import IngestAborted

    chosen = {k: opts.pop(k) for k in SOURCE_PARAMS}
    with engine_from(**opts) as engine:
        where = engine.store.describe()
        source = make_source(engine, paths, chosen)
        if source is None:
            if not engine.settings.plugin_options.get("source.elasticsearch"):
                raise click.UsageError("give PATHS to ingest, --from-index NAME or --source NAME")
            source = make_source(engine, paths, {**chosen, "source_name": "elasticsearch"})
        described = source.describe()
        try:
            report = engine.ingest(source, prune=prune, progress=progress_flag(progress))
        except IngestAborted as e:
            _show(e.report, where, described, as_json, prune)
            raise
    _show(report, where, described, as_json, prune)
    if report.exit_code:
        raise SystemExit(report.exit_code)


def _show(report: Any, where: dict[str, Any], source: dict[str, Any], as_json: bool, prune: bool) -> None:
    if as_json:
        click.echo(json.dumps({"store": where, "source": source, **report.to_dict()}, indent=2))
    else:
        _print_report(report, where, source, prune)
    for warning in report.warnings:
        click.secho(f"Warning: {warning}", fg="yellow", err=True)


def _print_report(report: Any, where: dict[str, Any], source: dict[str, Any], prune: bool) -> None:
    verb = ("Aborted ingest into" if report.aborted else "Nothing ingested into" if report.nothing_found
            else "Ingested into")
    click.echo(f"{verb} {where['index']} ({where['store']}: {where['location']})")
    counts = (f"{report.documents_new} new, {report.documents_changed} changed, {report.documents_unchanged} "
              "unchanged")
    if source.get("source") == "elasticsearch":
        scope = f"of index {source['index']}"
        sliced = f" (slice {source['slice']})" if "slice" in source else ""
        click.echo(f"  from         {source['index']} at {source['location']}{sliced}")
        click.echo(f"  records      {report.documents}  ({counts})")
        lost = "deleted from it or no longer matching --query"
    else:
        scope = "under the given paths"
        click.echo(f"  files        {report.files}  ({report.documents} documents: {counts})")
        lost = "deleted, moved, empty or skipped"
    if prune:
        click.echo(f"  removed      {report.documents_removed} document(s) no longer {scope}")
    elif report.documents_gone:
        click.echo(f"  gone         {report.documents_gone} indexed document(s) {scope} are no longer there "
                   f"({lost}); --prune removes them")
    click.echo(f"  chunks       {report.chunks_written} written ({report.chunks_embedded} embedded, "
               f"{report.chunks_reused} reused), {report.chunks_unchanged} unchanged, "
               f"{report.chunks_deleted} deleted")
    click.echo(f"  time         {report.seconds:.1f} s, {report.chunks_per_s:.1f} chunks/s")
    if report.decode_errors:
        click.echo(f"  decoding     {report.decode_errors} invalid UTF-8 sequence(s) replaced")
    if report.skipped:
        click.echo(f"  skipped      {len(report.skipped)}")
        for s in report.skipped[:50]:
            click.echo(f"    {s.path}: {s.reason}")
        if len(report.skipped) > 50:
            click.echo(f"    ... and {len(report.skipped) - 50} more (use --json for all)")
    if report.aborted:
        click.secho(f"  not written  {len(report.documents_not_written)} document(s) in progress: "
                    f"{', '.join(report.documents_not_written[:10])}", fg="red", err=True)
    if report.errors:
        click.secho(f"  errors       {len(report.errors)} chunk(s) failed to write", fg="red", err=True)
        for e in report.errors[:50]:
            status = f" [{e.status}]" if e.status else ""
            click.secho(f"    {e.source}: {e.reason}{status}", fg="red", err=True)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@store_options
def status(as_json: bool, **opts: Any) -> None:
    """Show the store, index (and the concrete index behind an ES alias), embedding model, dims and
    document/chunk counts."""
    with engine_from(**opts) as engine:
        info = engine.status()
    if as_json:
        from esrag.schemas import StatusResponse

        click.echo(json.dumps(StatusResponse.of(info).to_json(), indent=2))
        return
    for key, value in info.items():
        if isinstance(value, dict):  # the vector index: kind, vectors, bytes, current
            value = ", ".join(f"{k} {v}" for k, v in value.items() if v is not None)
        click.echo(f"{key:14} {value!r}" if isinstance(value, str) and "\n" in value else f"{key:14} {value}")
    if not info["exists"]:
        click.echo("The index does not exist yet: run `esrag ingest PATH` to create it.")


@click.command()
@click.option("--doc", "docs", multiple=True, metavar="PATH_OR_ID",
              help="A document to remove: a file as ingested (all records of a JSON/JSONL file), or a doc_id. "
                   "Repeatable.")
@click.option("--all", "drop_all", is_flag=True, help="Delete the whole index.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation with --all.")
@store_options
def delete(docs: tuple[str, ...], drop_all: bool, yes: bool, **opts: Any) -> None:
    """Remove documents (all their chunks) from the index, or the whole index with --all."""
    if not docs and not drop_all:
        raise click.UsageError("give --doc PATH (repeatable) or --all")
    with engine_from(**opts) as engine:
        where = engine.store.describe()
        if drop_all:
            if not yes:
                click.confirm(f"Delete index {where['index']} ({where['store']}: {where['location']})?",
                              abort=True)
            existed = engine.drop()
            click.echo(f"Deleted index {where['index']}." if existed else f"Index {where['index']} did not exist.")
            return
        deleted = engine.delete_documents(list(docs))
    click.echo(f"Deleted {deleted} chunk(s) of {len(docs)} document(s).")
    if deleted == 0:
        click.echo("No chunks matched: give a file path as ingested or a doc id such as docs/guide.md "
                   "(see `esrag search --json`).", err=True)
        raise SystemExit(1)
