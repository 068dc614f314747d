"""Reading a registry export for import: bounded size and nesting, then every field's JSON type
checked and named by its path (`versions[3].inference_config.max_batch_size`), into domain objects.

Only types and shape are checked here; the value rules (names, SemVer, hashes, routes, ...) are
those of the RPCs, in `validation`, applied by `Registry._import` to each entry."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from modelyard.common.errors import InvalidArgument
from modelyard.common.modelspec import InferenceConfig, TensorSpec
from modelyard.common.states import RunStatus, VersionStatus
from modelyard.registry.domain import (
    Alias,
    BenchmarkRun,
    Deployment,
    Lineage,
    Metric,
    Model,
    ModelVersion,
    Route,
    Signature,
)

# The gRPC message limit of a default server: what `export_json` can send is what import accepts,
# whatever limit a server was given. Counted in characters, which for an export (json.dumps escapes
# everything outside ASCII) are its bytes.
MAX_IMPORT_BYTES = 64 * 1024 * 1024
# An export nests 7 levels deep (document, versions, version, signature, inputs, tensor, shape);
# anything much deeper is not an export, and Python's parser would recurse on it.
MAX_DEPTH = 32
SECTIONS = ("models", "versions", "aliases", "deployments", "benchmark_runs")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass
class ImportDocument:
    """The entries of an export, each with its JSON path, in the order they are imported."""

    models: list[tuple[str, Model]] = field(default_factory=list)
    versions: list[tuple[str, ModelVersion]] = field(default_factory=list)
    aliases: list[tuple[str, Alias]] = field(default_factory=list)
    deployments: list[tuple[str, Deployment]] = field(default_factory=list)
    benchmark_runs: list[tuple[str, BenchmarkRun]] = field(default_factory=list)


def read_import_document(text: str, export_format: str) -> ImportDocument:
    """Parse and type-check an export; InvalidArgument names the first offending path."""
    if len(text) > MAX_IMPORT_BYTES:
        raise InvalidArgument(
            f"import document is {len(text) / 2**20:.1f} MiB; the registry imports at most "
            f"{MAX_IMPORT_BYTES // 2**20} MiB (the size of the largest export it sends)"
        )
    _check_depth(text)
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of more than 4,300 digits
        raise InvalidArgument(f"import is not valid JSON: {exc}") from None
    except RecursionError:  # _check_depth should have caught it; never let it become INTERNAL
        raise InvalidArgument(f"import document nests deeper than {MAX_DEPTH} levels") from None
    top = _Object(data, "", frozenset({"format", *SECTIONS}), what="the import document")
    found = top.text("format", "")
    if found != export_format:
        raise InvalidArgument(
            f"format: expected {export_format!r}, got {_show(top.data.get('format'))}; "
            "import takes what `modelyard models export` wrote"
        )
    document = ImportDocument()
    document.models = [(p, _model(_Object(v, p, _MODEL_FIELDS))) for p, v in top.entries("models")]
    document.versions = [(p, _version(_Object(v, p, _VERSION_FIELDS))) for p, v in top.entries("versions")]
    document.aliases = [(p, _alias(_Object(v, p, _ALIAS_FIELDS))) for p, v in top.entries("aliases")]
    document.deployments = [
        (p, _deployment(_Object(v, p, _DEPLOYMENT_FIELDS))) for p, v in top.entries("deployments")
    ]
    document.benchmark_runs = [
        (p, _run(_Object(v, p, _RUN_FIELDS))) for p, v in top.entries("benchmark_runs")
    ]
    return document


def _check_depth(text: str) -> None:
    """Refuse deep nesting before the parser sees it: strip strings, keep brackets, and remove
    innermost pairs level by level; pairs left after MAX_DEPTH rounds sit deeper than that."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    for _ in range(MAX_DEPTH):
        inner = brackets.replace("[]", "").replace("{}", "")
        if inner == brackets:
            return  # balanced and shallow, or unbalanced: json.loads reports the latter
        brackets = inner
    if "[]" in brackets or "{}" in brackets:
        raise InvalidArgument(
            f"import document nests deeper than {MAX_DEPTH} levels; a registry export nests 7"
        )


# ---- field readers ---------------------------------------------------------------------------------


def _show(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _type_error(path: str, expected: str, value: Any) -> InvalidArgument:
    shown = _show(value) if not isinstance(value, list | dict) else _kind(value)
    return InvalidArgument(f"{path or 'document'}: expected {expected}, got {shown}")


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _type_error(path, "a string", value)
    if "\x00" in value:
        raise InvalidArgument(f"{path}: contains a NUL character, which cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{path}: contains an unpaired UTF-16 surrogate (\\ud800-\\udfff)") from None
    return value


def _integer(value: Any, path: str, bounds: tuple[int, int] = _INT32) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(path, "an integer", value)
    if not bounds[0] <= value <= bounds[1]:
        raise InvalidArgument(f"{path}: {value} is out of range ({bounds[0]}..{bounds[1]})")
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(path, "a number", value)
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(f"{path}: {_show(value)} is out of range for a double") from None


class _Object:
    """One JSON object of the document: its path, and typed access to its known fields."""

    def __init__(self, value: Any, path: str, known: frozenset[str], *, what: str = "") -> None:
        if not isinstance(value, dict):
            raise _type_error(path, what or "an object", value)
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidArgument(
                f"{_join(path, unknown[0])}: unknown field; expected one of {', '.join(sorted(known))}"
            )
        self.data: dict[str, Any] = value
        self.path = path

    def at(self, key: str) -> str:
        return _join(self.path, key)

    def _value(self, key: str, required: bool) -> Any:
        if required and key not in self.data:
            raise InvalidArgument(f"{self.at(key)}: required field is missing")
        return self.data.get(key)

    def text(self, key: str, default: str | None = None) -> str:
        """A string; without a default the field is required."""
        if default is not None and key not in self.data:
            return default
        return _text(self._value(key, True), self.at(key))

    def integer(self, key: str, default: int | None = None, bounds: tuple[int, int] = _INT32) -> int:
        if default is not None and key not in self.data:
            return default
        return _integer(self._value(key, True), self.at(key), bounds)

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise _type_error(self.at(key), "true or false", value)
        return value

    def number(self, key: str) -> float:
        return _number(self._value(key, True), self.at(key))

    def moment(self, key: str) -> dt.datetime | None:
        value = self.data.get(key)
        if value is None:
            return None
        text = _text(value, self.at(key))
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise InvalidArgument(
                f"{self.at(key)}: expected an ISO 8601 time such as 2026-01-31T12:00:00+00:00, "
                f"got {_show(text)}"
            ) from None
        # Exports write UTC offsets; a time without one is read as UTC rather than local time.
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)

    def strings(self, key: str) -> dict[str, str]:
        """A string-to-string map (tags, conditions)."""
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise _type_error(self.at(key), "an object of strings", value)
        return {
            _text(name, f"{self.at(key)} key {_show(name)}"): _text(item, f"{self.at(key)}.{name}")
            for name, item in value.items()
        }

    def entries(self, key: str) -> Iterator[tuple[str, Any]]:
        """The items of a list field with their paths (`versions[3]`); absent = empty."""
        value = self.data.get(key, [])
        where = self.at(key)
        if not isinstance(value, list):
            raise _type_error(where, "a list", value)
        for i, item in enumerate(value):
            yield f"{where}[{i}]", item

    def child(self, key: str, known: frozenset[str]) -> _Object | None:
        value = self.data.get(key)
        return None if value is None else _Object(value, self.at(key), known)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


_TYPES: dict[type[Any], dict[str, Any]] = {}


def _field_types(cls: type[Any]) -> dict[str, Any]:
    """A dataclass's field types, resolved once (get_type_hints is slow per entry)."""
    if cls not in _TYPES:
        hints = typing.get_type_hints(cls)
        _TYPES[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _TYPES[cls]


def _field_names(cls: type[Any]) -> frozenset[str]:
    return frozenset(_field_types(cls))


def _flat(cls: type[Any], obj: _Object | None) -> Any:
    """A dataclass of str/int/bool fields (InferenceConfig, Lineage) with its defaults for missing
    keys; fields added to the dataclass are read without a change here."""
    if obj is None:
        return cls()
    values: dict[str, Any] = {}
    for name in obj.data:
        kind = _field_types(cls)[name]
        if kind is bool:
            values[name] = obj.flag(name, False)
        elif kind is int:
            values[name] = obj.integer(name, 0)
        else:
            values[name] = obj.text(name)
    return cls(**values)


# ---- entries ---------------------------------------------------------------------------------------

_MODEL_FIELDS = _field_names(Model)
_VERSION_FIELDS = _field_names(ModelVersion)
_ALIAS_FIELDS = _field_names(Alias)
# `versions` is left out of exports (workers' copy of the routed versions), so it is not read back.
_DEPLOYMENT_FIELDS = _field_names(Deployment) - {"versions"}
_RUN_FIELDS = _field_names(BenchmarkRun)
_METRIC_FIELDS = _field_names(Metric)
_SIGNATURE_FIELDS = _field_names(Signature)
_CONFIG_FIELDS = _field_names(InferenceConfig)
_LINEAGE_FIELDS = _field_names(Lineage)
_TENSOR_FIELDS = _field_names(TensorSpec)
_ROUTE_FIELDS = _field_names(Route)


def _model(obj: _Object) -> Model:
    return Model(
        model_id=obj.text("model_id"),
        model_type=obj.text("model_type"),
        description=obj.text("description", ""),
        tags=obj.strings("tags"),
        created_by=obj.text("created_by", ""),
        created_at=obj.moment("created_at"),
    )


def _tensors(obj: _Object, key: str) -> tuple[TensorSpec, ...]:
    specs = []
    for path, value in obj.entries(key):
        tensor = _Object(value, path, _TENSOR_FIELDS)
        shape = tuple(_integer(d, p, _INT64) for p, d in tensor.entries("shape"))
        specs.append(TensorSpec(tensor.text("name"), tensor.text("datatype"), shape))
    return tuple(specs)


def _signature(obj: _Object | None) -> Signature | None:
    if obj is None:
        return None
    return Signature(
        inputs=_tensors(obj, "inputs"),
        outputs=_tensors(obj, "outputs"),
        embedding_dim=obj.integer("embedding_dim", 0),
    )


def _version(obj: _Object) -> ModelVersion:
    status = obj.text("status", VersionStatus.READY)
    if status not in tuple(VersionStatus):
        raise InvalidArgument(
            f"{obj.at('status')}: expected one of {', '.join(VersionStatus)}, got {_show(status)}"
        )
    for path, alias in obj.entries("aliases"):  # informative in an export; aliases come from `aliases`
        _text(alias, path)
    return ModelVersion(
        model_id=obj.text("model_id"),
        version=obj.text("version"),
        source_uri=obj.text("source_uri"),
        checkpoint_hash=obj.text("checkpoint_hash"),
        loader=obj.text("loader"),
        inference_config=_flat(InferenceConfig, obj.child("inference_config", _CONFIG_FIELDS)),
        signature=_signature(obj.child("signature", _SIGNATURE_FIELDS)) or Signature(),
        lineage=_flat(Lineage, obj.child("lineage", _LINEAGE_FIELDS)),
        tags=obj.strings("tags"),
        description=obj.text("description", ""),
        created_by=obj.text("created_by", ""),
        created_at=obj.moment("created_at"),
        status=status,
    )


def _alias(obj: _Object) -> Alias:
    obj.moment("updated_at")  # checked, not kept: the import is the alias's latest move
    return Alias(model_id=obj.text("model_id"), alias=obj.text("alias"), version=obj.text("version"))


def _deployment(obj: _Object) -> Deployment:
    routes = []
    for path, value in obj.entries("routes"):
        route = _Object(value, path, _ROUTE_FIELDS)
        routes.append(
            Route(route.text("version"), route.integer("weight"), route.integer("mirror_percent", 0))
        )
    # Checked but not kept: the importing registry assigns revisions and times, and reads the model
    # type from the model.
    obj.text("model_type", "")
    obj.integer("revision", 0, _INT64)
    obj.moment("updated_at")
    return Deployment(
        name=obj.text("name"),
        model_id=obj.text("model_id"),
        routes=routes,
        follow_alias=obj.text("follow_alias", ""),
        signature=_signature(obj.child("signature", _SIGNATURE_FIELDS)),
        description=obj.text("description", ""),
    )


def _run(obj: _Object) -> BenchmarkRun:
    metrics = []
    for path, value in obj.entries("metrics"):
        metric = _Object(value, path, _METRIC_FIELDS)
        metrics.append(
            Metric(
                name=metric.text("name"),
                value=metric.number("value"),
                unit=metric.text("unit", ""),
                samples=[_number(s, p) for p, s in metric.entries("samples")],
            )
        )
    return BenchmarkRun(
        run_id=obj.text("run_id"),
        suite=obj.text("suite"),
        model_id=obj.text("model_id"),
        version=obj.text("version"),
        deployment=obj.text("deployment", ""),
        status=obj.text("status", RunStatus.SUCCEEDED),
        error=obj.text("error", ""),
        conditions=obj.strings("conditions"),
        hardware=obj.text("hardware", ""),
        started_at=obj.moment("started_at"),
        finished_at=obj.moment("finished_at"),
        metrics=metrics,
        created_by=obj.text("created_by", ""),
    )
