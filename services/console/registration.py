"""What the Register page does once its form is valid, with `models import`'s own functions
(`modelyard.cli.importer`): measure the artifact (loader, checkpoint hash, signature by loading it),
copy a directory import into the artifact store, and register the version. Each refusal names the
form field it belongs to, so the page can show it there.

Measuring and copying block for seconds (hashing every byte, importing torch, loading the model),
so they run in a thread (`asyncio.to_thread`) and other pages keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

from modelyard.api import registry_pb2 as rpb
from modelyard.cli import importer
from modelyard.cli.errors import CliError
from modelyard.client import ModelyardError, RegistryClient
from modelyard.common.artifact_roots import (
    ARTIFACT_ROOTS_ENV,
    ArtifactLocationError,
    ArtifactRoots,
    default_artifact_roots,
    local_path,
    store_root,
)

# `models import`'s defaults (cli/models.py): the Register page sets no serving options.
_CONFIG = {"max_batch_size": 32, "max_delay_ms": 2, "device": "auto", "dtype": "float32"}
# Failed calls the page shows as any page does (banner, login page, 403), not next to a field.
_NOT_ABOUT_THE_FORM = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "UNAUTHENTICATED", "PERMISSION_DENIED")


class FieldError(Exception):
    """A refusal shown next to one field of the form (`form`: above it), with the page's status."""

    def __init__(self, field_name: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = " ".join(message.split())
        self.status = status


@dataclass(frozen=True)
class ArtifactPlaces:
    """Where imports are copied (`MODELYARD_ARTIFACT_STORE`, as `models import` reads it) and the
    artifact roots a stored artifact must lie under (`MODELYARD_ARTIFACT_ROOTS`, the registry's and
    workers' variable; by default the store)."""

    store: str
    roots: ArtifactRoots

    @classmethod
    def from_environment(cls) -> ArtifactPlaces:
        roots = os.environ.get(ARTIFACT_ROOTS_ENV) or default_artifact_roots()
        return cls(importer.default_artifact_store(), ArtifactRoots.parse(roots))

    def check_store(self) -> None:
        """Refuse before any work when the registry would refuse what is copied into the store."""
        store = store_root(self.store)
        if not any(store.startswith(prefix) for prefix in self.roots.prefixes):
            raise FieldError(
                "form",
                f"the console's artifact store {self.store} lies outside the artifact roots "
                f"({self.roots.describe()}), so the registry would refuse what it copies there: set "
                "MODELYARD_ARTIFACT_STORE on the console to the store the registry accepts",
                409,
            )

    def stored(self, entered: str) -> tuple[str, Path]:
        """(normalised URI, local path) of an already-stored artifact the console may read."""
        try:
            uri = self.roots.check(entered)
        except ArtifactLocationError as refused:
            raise FieldError("artifact_uri", str(refused)) from None
        path = local_path(uri)
        if path is None:
            raise FieldError(
                "artifact_uri",
                f"{uri} is not local: the console reads a stored artifact to measure its hash and "
                "signature, and reads only file:// ones; register it with `modelyard models register`",
            )
        real = self.roots.outside_local_roots(path)
        if real is not None:
            raise FieldError("artifact_uri", f"{uri} leads to {real}, outside the artifact roots")
        if not os.path.exists(path):
            raise FieldError("artifact_uri", f"nothing is stored at {uri}")
        if not os.access(path, os.R_OK):
            raise FieldError("artifact_uri", f"{uri} is not readable by the console's user")
        return uri, Path(path)


@dataclass(frozen=True)
class Registration:
    """A checked form: one version to register from `path` (imported, or already stored at `stored_uri`)."""

    model_id: str
    version: str
    path: Path
    where: str  # the form field `path` came from, where refusals about the artifact are shown
    stored_uri: str = ""
    loader: str = ""  # empty: detected from the files, as `models import` does
    model_type: int = 0  # empty: from the signature
    description: str = ""
    parent_version: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Measured:
    loader: str
    checkpoint: str
    signature: rpb.Signature


def loader_names() -> tuple[str, ...]:
    """The loaders this host has (the first call imports torch: call it in a thread)."""
    from modelyard.inference.loaders import loader_names as names

    return tuple(names())


def _config() -> rpb.InferenceConfig:
    return rpb.InferenceConfig(**_CONFIG)  # type: ignore[arg-type]


def measure(path: Path, loader: str, field_name: str) -> Measured:
    """Blocking: the loader (given, or detected), the checkpoint hash, and the signature."""
    from modelyard.inference.artifacts import checkpoint_hash
    from modelyard.inference.errors import ArtifactRefused

    try:
        chosen = loader or importer.detect_loader(path)
    except CliError:
        raise FieldError(
            field_name,
            f"{path} is not a model directory Modelyard recognises (no modules.json, "
            "open_clip_config.json or captioning config.json); if it is one, pick its loader",
        ) from None
    try:
        checkpoint = checkpoint_hash(path)
    except ArtifactRefused as refused:
        raise FieldError(field_name, refused.message) from None
    except OSError as error:
        raise FieldError(field_name, f"cannot read {error.filename or path}: {error.strerror}") from None
    try:
        signature = importer.read_signature(path, chosen, _config())
    except CliError as error:
        raise FieldError(field_name, error.message) from None
    return Measured(chosen, checkpoint, signature)


def _copy(places: ArtifactPlaces, path: Path, checkpoint: str) -> str:
    try:
        return importer.ArtifactStore(places.store).put(path, checkpoint)
    except (OSError, ValueError) as error:
        raise FieldError(
            "form", f"could not copy into the artifact store {places.store}: {error}", 503
        ) from None


def _draft(wanted: Registration, loader: str) -> importer.VersionDraft:
    return importer.VersionDraft(
        model_id=wanted.model_id,
        version=wanted.version,
        loader=loader,
        config=_config(),
        description=wanted.description,
        tags=dict(wanted.tags),
        lineage=rpb.Lineage(parent_version=wanted.parent_version),
        model_type=wanted.model_type,
    )


def _refusal(error: ModelyardError) -> FieldError:
    """A registry refusal next to the field its message is about."""
    message = error.message
    if error.code.name == "ALREADY_EXISTS":
        return FieldError("version", message, 409)
    status = 409 if error.code.name == "FAILED_PRECONDITION" else 400
    for needle, name in (("source_uri", "source"), ("parent", "parent_version"), ("model_id", "model_id")):
        if needle in message:
            return FieldError(name, message, status)
    return FieldError("form", message, status)


async def register(
    registry: RegistryClient, wanted: Registration, places: ArtifactPlaces, *, timeout_s: float
) -> rpb.ModelVersion:
    """Check the version is free, measure, copy (an import), register; FieldError for a refusal.
    An outage or a refused token is raised as is: the page shows it like any failed call."""
    found = await importer.existing_version(registry, wanted.model_id, wanted.version, timeout_s)
    if found is not None:  # before any slow work
        raise FieldError("version", importer.refuse_existing(found).message, 409)
    if not wanted.stored_uri:
        places.check_store()
    measured = await asyncio.to_thread(measure, wanted.path, wanted.loader, wanted.where)
    uri = wanted.stored_uri or await asyncio.to_thread(_copy, places, wanted.path, measured.checkpoint)
    try:
        return await importer.register(
            registry,
            _draft(wanted, measured.loader),
            source_uri=uri,
            checkpoint=measured.checkpoint,
            signature=measured.signature,
            timeout_s=timeout_s,
        )
    except ModelyardError as error:
        if error.code.name in _NOT_ABOUT_THE_FORM:
            raise
        refusal = _refusal(error)
        if refusal.field == "source" and wanted.stored_uri:
            refusal.field = "artifact_uri"
        raise refusal from None
