"""The Register page (admins only): import a model directory the console's host can read, or
register an artifact already in the store, from a form whose every refusal is shown next to the
field it is about (400, or 409 for a version that exists), never as a traceback."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from modelyard.api import registry_pb2 as rpb
from modelyard.common.artifact_roots import ArtifactLocationError
from modelyard.common.errors import InvalidArgument
from modelyard.console.import_roots import ImportRefused, ImportRoots
from modelyard.console.registration import ArtifactPlaces, FieldError, Registration, loader_names, register
from modelyard.console.web import Page, page
from modelyard.registry.domain import MODEL_TYPES
from modelyard.registry.validation import check_name, check_semver

FIELDS = (
    "model_id",
    "version",
    "source",
    "artifact_uri",
    "loader",
    "model_type",
    "description",
    "parent_version",
    "tags",
)


class FormErrors(Exception):
    """Every problem the form has before anything slow runs, by field."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


@dataclass(frozen=True)
class Choices:
    """What the form's fields accept on this console."""

    loaders: tuple[str, ...]
    imports: ImportRoots
    places: ArtifactPlaces | None  # None: the artifact roots in the environment are malformed
    places_error: str = ""


def _tags(text: str) -> dict[str, str]:
    """One `KEY=VALUE` (or `KEY`) per line, as `--tag` takes them."""
    tags = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, _, value = line.partition("=")
        if not key.strip():
            raise ValueError(f"tag {line.strip()!r} is not KEY=VALUE")
        tags[key.strip()] = value.strip()
    return tags


def read_form(values: dict[str, str], choices: Choices) -> Registration:
    """The form as one Registration; FormErrors naming each field that is wrong."""
    errors: dict[str, str] = {}

    def check(name: str, rule: Callable[[], object]) -> None:
        try:
            rule()
        except InvalidArgument as error:
            errors[name] = error.message
        except ValueError as error:
            errors[name] = str(error)

    if not values["model_id"]:
        errors["model_id"] = "give the model id (the model is created when it does not exist yet)"
    else:
        check("model_id", lambda: check_name("model id", values["model_id"]))
    if not values["version"]:
        errors["version"] = "give the version to register, SemVer (e.g. 1.2.0)"
    else:
        check("version", lambda: check_semver(values["version"]))
    if values["parent_version"]:
        check("parent_version", lambda: check_semver(values["parent_version"]))
    if values["loader"] and values["loader"] not in choices.loaders:
        errors["loader"] = f"unknown loader {values['loader']!r}; choose one of {', '.join(choices.loaders)}"
    if values["model_type"] and values["model_type"] not in MODEL_TYPES:
        errors["model_type"] = f"unknown model type {values['model_type']!r}"
    check("tags", lambda: _tags(values["tags"]))

    source, stored = values["source"], values["artifact_uri"]
    path, uri, where = None, "", "source"
    if source and stored:
        errors["artifact_uri"] = "give a model directory or a stored artifact, not both"
    elif not source and not stored:
        errors["source" if choices.imports.enabled else "artifact_uri"] = (
            "give the model directory to import, or the URI of an artifact already in the store"
        )
    elif choices.places is None:
        errors["source" if source else "artifact_uri"] = choices.places_error
    elif source:
        try:
            path = choices.imports.resolve(source)
        except ImportRefused as refused:
            errors["source"] = str(refused)
    else:
        where = "artifact_uri"
        try:
            uri, path = choices.places.stored(stored)
        except FieldError as refused:
            errors[refused.field] = refused.message
    if errors or path is None:
        raise FormErrors(errors)
    return Registration(
        model_id=values["model_id"],
        version=values["version"],
        path=path,
        where=where,
        stored_uri=uri,
        loader=values["loader"],
        model_type=rpb.ModelType.Value(values["model_type"].upper()) if values["model_type"] else 0,
        description=values["description"],
        parent_version=values["parent_version"],
        tags=_tags(values["tags"]),
    )


async def _choices(current: Page) -> Choices:
    loaders = await asyncio.to_thread(loader_names)
    imports = ImportRoots.parse(current.console.settings.import_roots)
    try:
        return Choices(loaders, imports, ArtifactPlaces.from_environment())
    except ArtifactLocationError as error:
        return Choices(loaders, imports, None, f"registration is off: {error}")


def _render(
    current: Page, choices: Choices, values: dict[str, str], errors: dict[str, str], status: int = 200
) -> Response:
    return current.render(
        "register.html",
        status=status,
        values=values,
        errors=errors,
        loaders=choices.loaders,
        model_types=MODEL_TYPES,
        import_roots=choices.imports.paths,
        store=choices.places.store if choices.places else "",
        artifact_roots=choices.places.roots.describe() if choices.places else "",
    )


@page(admin=True)
async def register_form(current: Page) -> Response:
    values = dict.fromkeys(FIELDS, "")
    values["model_id"] = current.query("model")
    return _render(current, await _choices(current), values, {})


@page(admin=True)
async def register_submit(current: Page) -> Response:
    """Checked here first (all fields at once), then measured, copied and registered; on success
    the catalog, filtered on the new version."""
    values = {name: current.field(name) for name in FIELDS}
    choices = await _choices(current)
    try:
        wanted = read_form(values, choices)
    except FormErrors as invalid:
        return _render(current, choices, values, invalid.errors, 400)
    assert choices.places is not None  # read_form refuses everything without it
    try:
        registered = await register(
            await current.registry(),
            wanted,
            choices.places,
            timeout_s=current.console.settings.call_timeout_s,
        )
    except FieldError as refused:
        return _render(current, choices, values, {refused.field: refused.message}, refused.status)
    query = urlencode({"model": registered.model_id, "q": registered.version})
    return RedirectResponse(f"/catalog?{query}", 303)
