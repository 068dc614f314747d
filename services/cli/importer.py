"""`models import`: hash an artifact, read its signature with its loader, copy it into the artifact
store (content-addressed by checkpoint hash, any fsspec URL), and register the version.

Shared by `modelyard models import` and the seeding of `modelyard up`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec

from modelyard.api import registry_pb2 as rpb
from modelyard.cli.errors import EXIT_REFUSED, CliError, UsageError

# One definition of the default store: the artifact roots default to it too.
from modelyard.common.artifact_roots import ARTIFACT_STORE_ENV, default_artifact_store  # noqa: F401
from modelyard.common.errors import NotFound

if TYPE_CHECKING:
    from modelyard.client import RegistryClient

_CHUNK = 1 << 20

# (bytes done, bytes total)
CopyProgress = Callable[[int, int], None]


def artifact_files(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.is_file())


def artifact_size(source: Path) -> int:
    return sum(p.stat().st_size for p in artifact_files(source))


class ArtifactStore:
    """Artifacts under `<store>/<checkpoint hash>/`; a complete entry is never rewritten."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.fs, root = fsspec.core.url_to_fs(url)
        self.root = root.rstrip("/")

    def put(self, source: Path, checkpoint: str, progress: CopyProgress | None = None) -> str:
        """Copy `source` (a file or directory) in unless already there; return its URI."""
        target = f"{self.root}/{checkpoint}"
        suffix = f"/{source.name}" if source.is_file() else ""
        if self.fs.exists(target):
            return str(self.fs.unstrip_protocol(target + suffix))
        files = artifact_files(source)
        total = sum(p.stat().st_size for p in files)
        partial = f"{self.root}/.{checkpoint[:16]}.partial-{uuid.uuid4().hex[:8]}"
        done = 0
        try:
            for file in files:
                relative = file.name if source.is_file() else file.relative_to(source).as_posix()
                destination = f"{partial}/{relative}"
                self.fs.makedirs(destination.rsplit("/", 1)[0], exist_ok=True)
                with file.open("rb") as src, self.fs.open(destination, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            try:
                self.fs.mv(partial, target, recursive=True)
            except (OSError, FileExistsError):
                if not self.fs.exists(target):  # not a concurrent import of the same artifact
                    raise
        finally:
            if self.fs.exists(partial):
                self.fs.rm(partial, recursive=True)
        return str(self.fs.unstrip_protocol(target + suffix))


def read_signature(source: Path, loader: str, config: rpb.InferenceConfig) -> rpb.Signature:
    """Load the artifact with its loader on CPU and ask it for its signature.

    Loading (rather than a static per-loader description) is the only way to learn the embedding
    dimension for every family, and it proves the artifact loads before anything is stored.
    Quantization does not change the signature, so it is skipped here.
    """
    from modelyard.common.modelspec import InferenceConfig
    from modelyard.inference.converters import signature_to_registry
    from modelyard.inference.domain import VersionSpec
    from modelyard.inference.loaders import create_runtime

    spec = VersionSpec(
        model_id="import",
        version="0.0.0",
        source_uri=str(source),
        checkpoint_hash="0" * 64,
        loader=loader,
        config=InferenceConfig(
            device="cpu",
            max_sequence_length=config.max_sequence_length,
            trust_remote_code=config.trust_remote_code,
        ),
    )
    runtime = create_runtime(spec, source)
    try:
        runtime.load()
        signature = runtime.signature()
    except Exception as error:  # whatever the family's library raises for a wrong directory
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise UsageError(
            f"{source} does not load with loader {loader!r}: {type(error).__name__}: {first_line}"
        ) from None
    finally:
        runtime.unload()
    return signature_to_registry(signature)  # with the request parameters it reads (prompts)


def recognised_loader(source: Path) -> str | None:
    """The loader a model directory's own files point at, or None when they point at none."""
    if (source / "modules.json").is_file() or (source / "config_sentence_transformers.json").is_file():
        return "sentence-transformers"
    if (source / "open_clip_config.json").is_file():
        return "open-clip"
    config = source / "config.json"
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        if "vision-encoder-decoder" in text or "VisionEncoderDecoder" in text or "Blip" in text:
            return "hf-captioning"
    return None


def detect_loader(source: Path) -> str:
    """The loader a model directory's own files point at; asks for --loader when unclear."""
    found = recognised_loader(source)
    if found is None:
        raise UsageError(f"cannot tell which loader {source} needs; pass --loader")
    return found


def check_loader(loader: str) -> None:
    from modelyard.inference.loaders import loader_names

    if loader not in loader_names():
        raise UsageError(f"unknown loader {loader!r}; choose one of {', '.join(loader_names())}")


def model_type_for(signature: rpb.Signature, loader: str = "") -> rpb.ModelType.ValueType:
    from modelyard.inference.loaders import loader_info

    declared = {info["name"]: info["model_type"] for info in loader_info()}.get(loader)
    if declared == "generic":
        return rpb.GENERIC
    outputs = {t.name for t in signature.outputs}
    inputs = {t.name for t in signature.inputs}
    if "caption" in outputs:
        return rpb.CAPTIONING
    if "image" in inputs:
        return rpb.IMAGE_EMBEDDING
    return rpb.TEXT_EMBEDDING


@dataclass
class VersionDraft:
    """Everything `models import` registers besides what it measures (hash, signature, URI)."""

    model_id: str
    version: str
    loader: str
    config: rpb.InferenceConfig
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    lineage: rpb.Lineage = field(default_factory=rpb.Lineage)
    model_type: int = 0
    model_description: str = ""
    model_tags: dict[str, str] = field(default_factory=dict)

    def to_version(self, *, source_uri: str, checkpoint: str, signature: rpb.Signature) -> rpb.ModelVersion:
        return rpb.ModelVersion(
            model_id=self.model_id,
            version=self.version,
            source_uri=source_uri,
            checkpoint_hash=checkpoint,
            loader=self.loader,
            inference_config=self.config,
            signature=signature,
            lineage=self.lineage,
            tags=self.tags,
            description=self.description,
        )


async def existing_version(
    registry: RegistryClient, model_id: str, version: str, timeout_s: float
) -> rpb.ModelVersion | None:
    try:
        found: rpb.ModelVersion = await registry.get_version(
            rpb.GetVersionRequest(model_id=model_id, version=version), timeout=timeout_s
        )
        return found
    except NotFound:
        return None


def same_registration(found: rpb.ModelVersion, draft: VersionDraft, checkpoint: str) -> bool:
    return (
        found.checkpoint_hash == checkpoint
        and found.loader == draft.loader
        and found.inference_config.quantization == draft.config.quantization
    )


def refuse_existing(found: rpb.ModelVersion) -> CliError:
    return CliError(
        f"{found.model_id} {found.version} is already registered (checkpoint {found.checkpoint_hash[:12]}, "
        f"loader {found.loader}, quantization {found.inference_config.quantization or 'none'}); "
        "registered versions are immutable: import under a new version",
        EXIT_REFUSED,
    )


async def register(
    registry: RegistryClient,
    draft: VersionDraft,
    *,
    source_uri: str,
    checkpoint: str,
    signature: rpb.Signature,
    timeout_s: float,
) -> rpb.ModelVersion:
    """Create the model when absent (type from the signature unless given), then the version."""
    model_type = draft.model_type or model_type_for(signature, draft.loader)
    try:
        await registry.get_model(rpb.GetModelRequest(model_id=draft.model_id), timeout=timeout_s)
    except NotFound:
        await registry.create_model(
            rpb.CreateModelRequest(
                model_id=draft.model_id,
                model_type=model_type,  # type: ignore[arg-type]
                description=draft.model_description,
                tags=draft.model_tags,
            ),
            timeout=timeout_s,
        )
    version = draft.to_version(source_uri=source_uri, checkpoint=checkpoint, signature=signature)
    registered: rpb.ModelVersion = await registry.register_version(
        rpb.RegisterVersionRequest(version=version), timeout=timeout_s
    )
    return registered
