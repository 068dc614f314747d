"""What every command shares: addresses, output mode, consoles, and gRPC calls with errors mapped."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich.console import Console

from modelyard.cli.errors import from_client_error
from modelyard.client import BenchmarkClient, ClientSettings, ModelyardError, RegistryClient

T = TypeVar("T")
DEFAULT_REGISTRY = "127.0.0.1:50051"
DEFAULT_BENCHMARK = "127.0.0.1:50061"


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    # Off a terminal: no colour, and wide enough that tables never wrap into a pipe or a log file.
    return Console(
        file=stream,
        stderr=stderr,
        highlight=False,
        no_color=not terminal or "NO_COLOR" in os.environ,
        width=None if terminal else 220,
        soft_wrap=not terminal,
    )


@dataclass
class CliContext:
    registry: str = DEFAULT_REGISTRY
    benchmark: str = DEFAULT_BENCHMARK
    json: bool = False
    token: str | None = None
    timeout_s: float = 10.0
    # Set by `modelyard up` for its own calls (its token and CA); otherwise built from the options.
    client: ClientSettings | None = None
    out: Console = field(default_factory=lambda: _console(False))
    err: Console = field(default_factory=lambda: _console(True))

    @property
    def interactive(self) -> bool:
        """Progress bars and spinners only when a person watches stderr and no JSON is asked for."""
        return self.err.is_terminal and not self.json

    def client_settings(self) -> ClientSettings:
        if self.client is not None:
            return self.client
        settings = ClientSettings(timeout_s=self.timeout_s)
        if self.token:
            settings.token = self.token
        return settings

    def registry_call(self, call: Callable[[RegistryClient], Awaitable[T]]) -> T:
        return self._run("registry", self.registry, RegistryClient, call)

    def benchmark_call(self, call: Callable[[BenchmarkClient], Awaitable[T]]) -> T:
        return self._run("benchmark service", self.benchmark, BenchmarkClient, call)

    def _run(self, service: str, address: str, client_type: Any, call: Callable[[Any], Awaitable[T]]) -> T:
        async def go() -> T:
            async with client_type(address, self.client_settings()) as client:
                return await call(client)

        try:
            return asyncio.run(go())
        except ModelyardError as error:
            raise from_client_error(
                error, service=service, address=address, timeout_s=self.timeout_s
            ) from None

    # ---- output ---------------------------------------------------------------------------------

    def emit_json(self, value: Any) -> None:
        click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=False))

    def say(self, text: str) -> None:
        """A human line on stdout (nothing with --json)."""
        if not self.json:
            self.out.print(text, markup=False)


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Message):
        return MessageToDict(value, preserving_proto_field_name=True)
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    return value


def get_context() -> CliContext:
    ctx = click.get_current_context()
    obj = ctx.find_object(CliContext)
    if obj is None:  # a command invoked on its own (tests); defaults apply
        obj = ctx.ensure_object(CliContext)
    return obj
