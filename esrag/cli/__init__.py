"""The ``esrag`` command line. Commands are imported lazily, so ``esrag --help`` is instant."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from typing import Any

import click

from esrag import __version__, logs
from esrag.errors import EsragError

# command name -> "module:attribute"
COMMANDS = {
    "init": "esrag.cli.index:init",
    "ingest": "esrag.cli.index:ingest",
    "status": "esrag.cli.index:status",
    "reindex": "esrag.cli.reindex:reindex",
    "delete": "esrag.cli.index:delete",
    "search": "esrag.cli.search:search",
    "ask": "esrag.cli.ask:ask",
    "serve": "esrag.cli.serve:serve",
    "eval": "esrag.cli.evaluate:eval_cmd",
    "tune": "esrag.cli.evaluate:tune",
    "finetune": "esrag.cli.finetune:finetune",
    "plugins": "esrag.cli.info:plugins",
    "config": "esrag.cli.info:config",
}

HELP = """Hybrid BM25 + dense search and RAG over Elasticsearch, or an embedded SQLite file.

\b
  esrag ingest docs/                 load, chunk, embed and index files (incremental)
  esrag search "how do I ..."        hybrid search (BM25 + kNN, fused in the client)
  esrag ask "how do I ..."           answer from the retrieved passages, with citations
  esrag status                       which store, index, model, and how many chunks
  esrag serve                        the HTTP API (search, ask, OpenAI-compatible chat)

\b
Where the index lives: with --es-url (or ESRAG_ES_URL) set, in Elasticsearch;
otherwise in the project's .esrag/<index>.db (SQLite): the nearest directory,
from here upwards, holding esrag.toml or .esrag/ (else ./.esrag). --store
forces one. Every option can also be set as ESRAG_<OPTION> in the environment
or in esrag.toml (ESRAG_CONFIG names another file); command-line flags win.
`esrag config show` prints what each setting resolves to, and from where.
"""


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EsragError as e:
            from esrag.cli.common import flag_of

            click.secho(f"Error: {e.worded(flag_of)}", err=True, fg="red")
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # the last line of defence: a message, not a traceback
            if os.environ.get("ESRAG_DEBUG"):
                traceback.print_exc()
            click.secho(f"Error: unexpected {type(e).__name__}: {e} (set ESRAG_DEBUG=1 for the traceback)",
                        err=True, fg="red")
            ctx.exit(1)


@click.group(cls=LazyGroup, help=HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="esrag")
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
def main(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, handlers=[logs.stream_handler(sys.stderr)])
    for noisy in ("elastic_transport", "httpx", "sentence_transformers", "transformers"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
