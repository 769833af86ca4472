"""``esrag serve``: the HTTP API (uvicorn)."""

from __future__ import annotations

import logging
import os
from typing import Any

import click

from esrag.cli.common import generation_options, model_options, retrieval_options, setting_option, store_options


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Another than loopback needs API keys, or --no-auth.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free).")
@click.option("--api-key-file", metavar="FILE",
              help="API keys, one a line: KEY or ro:KEY (read-only), rw:KEY (read-write). Also ESRAG_API_KEYS "
                   "(comma-separated) and ESRAG_API_KEY_FILE.")
@click.option("--no-auth", is_flag=True,
              help="Serve without API keys on a non-loopback address (anyone who can reach it can write).")
@click.option("--es-key-passthrough", is_flag=True,
              help="Let each request send X-ES-API-Key: Elasticsearch is then queried with the caller's key, so "
                   "the cluster's privileges and document-level security decide what it sees.")
@click.option("--max-body-bytes", default=10 * 1024 * 1024, show_default=True, type=click.IntRange(1),
              help="Larger request bodies get 413.")
@click.option("--threads", default=64, show_default=True, type=click.IntRange(1),
              help="Worker threads for blocking work (searches, ingest, generation).")
@click.option("--generators", metavar="NAMES", envvar="ESRAG_API_GENERATORS",
              help="Generators a request may choose with its `generator` field, comma-separated (`none`: the "
                   "passages only). The configured --generator is always offered. Also ESRAG_API_GENERATORS. "
                   "[default: none]")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Server log level.")
@setting_option("k", "-k", metavar="N", help="Default number of search hits. [default: 10]")
@setting_option("rag_k", "--rag-k", metavar="N", help="Default passages retrieved for answers. [default: 5]")
@retrieval_options
@generation_options
@store_options
@model_options
def serve(host: str, port: int, api_key_file: str | None, no_auth: bool, es_key_passthrough: bool,
          max_body_bytes: int, threads: int, generators: str | None, log_level: str, filters: tuple[str, ...],
          **opts: Any) -> None:
    """Serve the HTTP API: search, cited answers (streamed as SSE), an OpenAI-compatible chat endpoint,
    document ingest and delete, status. OpenAPI schema at /openapi.json, docs at /docs.

    \b
    Examples:
      esrag serve                                         # http://127.0.0.1:8000/docs
      ESRAG_API_KEYS=ro:$READ_KEY,rw:$WRITE_KEY esrag serve --host 0.0.0.0
      esrag serve --es-url http://localhost:9200 --llm-url http://localhost:8080 --es-key-passthrough
      curl -s localhost:8000/v1/search -d '{"query": "reset a password", "k": 3}' \\
           -H 'content-type: application/json'
    """
    # Torch's OpenMP workers spin while they wait for work by default: in a server, whose request threads
    # need the cores between two model calls, that spinning starves them (a search measured 10-40x slower
    # on a busy 2-core machine). Passive waiting leaves the cores to them; set OMP_WAIT_POLICY to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from esrag import plugins
    from esrag.api import ServerOptions, create_app
    from esrag.api.auth import is_loopback, load_keys
    from esrag.cli.common import engine_from
    from esrag.errors import ConfigError

    if filters:
        raise click.UsageError("--filter is per request: send \"filters\" in the request body")
    keys = load_keys(key_file=api_key_file)
    if keys.enabled and no_auth:
        raise ConfigError("--no-auth contradicts the API keys given (ESRAG_API_KEYS / --api-key-file)")
    if not keys.enabled and not no_auth and not is_loopback(host):
        raise ConfigError(f"refusing to serve {host} without API keys: set ESRAG_API_KEYS or --api-key-file, "
                          "or pass --no-auth to serve it open")
    engine = engine_from(**opts)
    engine.check_plugins(need_generator=True)
    offered = None
    if generators is not None:
        offered = tuple(dict.fromkeys(n.strip() for n in generators.split(",") if n.strip()))
        for name in offered:
            if name != "none":
                plugins.check(plugins.GENERATORS, name, "--generators")
    if es_key_passthrough and engine.settings.store_name != "elasticsearch":
        raise ConfigError("--es-key-passthrough needs the elasticsearch store (--es-url)")
    app = create_app(engine, keys, ServerOptions(max_body_bytes=max_body_bytes, es_key_passthrough=es_key_passthrough,
                                                 threads=threads, generators=offered))
    logging.getLogger("esrag").setLevel(log_level.upper())
    auth = "API keys" if keys.enabled else "no authentication"
    where = engine.store.describe()
    click.echo(f"esrag API on http://{host}:{port} ({auth}); index {where['index']} "
               f"({where['store']}: {where['location']}); docs at /docs", err=True)
    # log_config=None: uvicorn's own lines go to esrag's handler, whose formatter escapes control characters
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False,
                timeout_graceful_shutdown=5, log_config=None)
