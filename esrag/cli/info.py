"""``esrag plugins`` and ``esrag config show``: what is installed, and what the settings resolve to."""

from __future__ import annotations

import json
from typing import Any

import click

from esrag.cli.common import build_settings, generation_options, model_options, retrieval_options, store_options


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON: {group: [{name, package, version}]}.")
def plugins(as_json: bool) -> None:
    """List the installed stores, embedders and generators, with the package that provides each.

    Third-party packages add their own through entry points (see docs/architecture.md); every name listed
    here is accepted by --store, --embedder and --generator.
    """
    from esrag import plugins as registry

    listing = registry.listing()
    if as_json:
        click.echo(json.dumps({group: [{k: row[k] for k in ("name", "package", "version")} for row in rows]
                               for group, rows in listing.items()}, indent=2))
        return
    for group, rows in listing.items():
        click.secho(group, bold=True)
        for row in rows:
            click.echo(f"  {row['name']:<22} {row['package']} {row['version']}  ({row['object']})")


@click.group()
def config() -> None:
    """Inspect the resolved configuration."""


@config.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print {setting: {value, source}} as JSON.")
@store_options
@model_options
@retrieval_options
@generation_options
def show(as_json: bool, filters: Any, **opts: Any) -> None:
    """Print every setting, its value and where it came from (default, esrag.toml, ESRAG_*, a flag).

    Secrets (es_password, es_api_key, llm_api_key) are masked. Takes the same flags as the other commands,
    so `esrag config show --alpha 0.3` shows what `esrag search --alpha 0.3` would use.
    """
    import os
    from pathlib import Path

    from esrag.config import CONFIG_ENV, find_config

    settings = build_settings(**opts)
    resolved = settings.resolved(masked=True)
    path, root = find_config(os.environ, None, Path.cwd())
    if as_json:
        click.echo(json.dumps({"config_file": str(path) if path else None,
                               "project": str(root) if root else None,
                               "settings": resolved,
                               "plugin_options": {k: sorted(v) for k, v in settings.plugin_options.items()}},
                              indent=2, default=str))
        return
    click.echo(f"config file  {path or f'none (set {CONFIG_ENV} or create esrag.toml)'}")
    click.echo(f"project      {root or 'none (the working directory)'}")
    for name, item in resolved.items():
        click.echo(f"{name:20} {item['value']!s:40} {item['source']}")
