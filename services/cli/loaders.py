"""`modelyard loaders`: the model families this installation can serve, built in or plugins."""

from __future__ import annotations

import click

from modelyard.cli.context import get_context
from modelyard.cli.output import json_option, table


@click.group()
def loaders() -> None:
    """Model loaders: built in, and plugins installed under the `modelyard.loaders` entry points."""


@loaders.command("list")
@json_option
def list_loaders() -> None:
    """Every loader with its model type, the tensors its versions take and give, and its origin."""
    from modelyard.inference.loaders import loader_info
    from modelyard.inference.loaders.base import REFUSED_PLUGINS

    ctx = get_context()
    found = loader_info()
    for name, origin, reason in REFUSED_PLUGINS:
        click.echo(f"warning: plugin loader {name!r} ({origin}) left out: {reason}", err=True)
    if ctx.json:
        ctx.emit_json(found)
        return

    def tensors(specs: list[dict[str, object]]) -> str:
        return ", ".join(f"{t['name']} {t['datatype']}{t['shape']}" for t in specs) or "-"

    table(
        ctx,
        ["loader", "model type", "inputs", "outputs", "origin"],
        [
            (i["name"], i["model_type"], tensors(i["inputs"]), tensors(i["outputs"]), i["origin"])
            for i in found
        ],
    )
