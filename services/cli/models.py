"""`modelyard models`: register, import, example, list, show, tag, alias, archive, cleanup, export, import-registry."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelyard.api import registry_pb2 as rpb
from modelyard.cli import files, import_sources, importer
from modelyard.cli.context import CliContext, get_context
from modelyard.cli.errors import EXIT_FAILED, CliError, UsageError
from modelyard.cli.example_models import example_cmd
from modelyard.cli.output import (
    json_option,
    key_values,
    model_type_name,
    number,
    short_hash,
    table,
    tags_text,
    when,
)
from modelyard.cli.parsing import parse_key_values, semver
from modelyard.cli.progress import byte_bar, spinner
from modelyard.common.modelspec import ENGINES

if TYPE_CHECKING:
    from modelyard.client import RegistryClient
MODEL_TYPES = {
    "text_embedding": rpb.TEXT_EMBEDDING,
    "image_embedding": rpb.IMAGE_EMBEDDING,
    "captioning": rpb.CAPTIONING,
    "generic": rpb.GENERIC,
}


@click.group()
def models() -> None:
    """Models and their versions."""


def _config_options(func: click.decorators.FC) -> click.decorators.FC:
    options = [
        click.option("--max-batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--max-delay-ms", type=click.IntRange(min=0), default=2, show_default=True),
        click.option(
            "--max-batch-tokens",
            type=click.IntRange(min=0),
            default=0,
            help="Padded tokens a batch may hold (text); 0 = by device: 1024 on CPU, 16384 on CUDA.",
        ),
        click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto."),
        click.option(
            "--engine",
            type=click.Choice(list(ENGINES)),
            default="torch",
            show_default=True,
            help="What runs the passes (sentence-transformers): onnxruntime is exported at load.",
        ),
        click.option(
            "--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True
        ),
        click.option(
            "--max-sequence-length", type=click.IntRange(min=0), default=0, help="0 = the model's own."
        ),
        click.option(
            "--quantization", type=click.Choice(["", "int8-dynamic"]), default="", help="int8-dynamic (CPU)."
        ),
        click.option("--description", default="", help="Version description."),
        click.option("--tag", "tags", multiple=True, metavar="KEY=VALUE", help="Version tag (repeatable)."),
        click.option("--parent-version", default="", help="Lineage: the version this one derives from."),
        click.option("--git-commit", default="", help="Lineage: code commit."),
        click.option("--training-run", default="", help="Lineage: training run id."),
        click.option("--dataset", default="", help="Lineage: training dataset."),
        click.option(
            "--model-type",
            type=click.Choice(sorted(MODEL_TYPES)),
            default=None,
            help="When the model is new; default: from the signature.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _draft(model: str, version: str, loader: str, **o: object) -> importer.VersionDraft:
    return importer.VersionDraft(
        model_id=model,
        version=semver(version),
        loader=loader,
        config=rpb.InferenceConfig(
            max_batch_size=int(o["max_batch_size"]),  # type: ignore[call-overload]
            max_delay_ms=int(o["max_delay_ms"]),  # type: ignore[call-overload]
            device=str(o["device"]),
            dtype=str(o["dtype"]),
            max_sequence_length=int(o["max_sequence_length"]),  # type: ignore[call-overload]
            quantization=str(o["quantization"]),
            max_batch_tokens=int(o["max_batch_tokens"]),  # type: ignore[call-overload]
            engine=str(o["engine"]),
        ),
        description=str(o["description"]),
        tags=parse_key_values(o["tags"]),  # type: ignore[arg-type]
        lineage=rpb.Lineage(
            parent_version=semver(str(o["parent_version"])) if o["parent_version"] else "",
            git_commit=str(o["git_commit"]),
            training_run=str(o["training_run"]),
            dataset=str(o["dataset"]),
        ),
        model_type=MODEL_TYPES[str(o["model_type"])] if o["model_type"] else 0,
    )


def _print_version(version: rpb.ModelVersion) -> None:
    ctx = get_context()
    if ctx.json:
        ctx.emit_json(version)
        return
    cfg = version.inference_config
    sig = version.signature
    key_values(
        ctx,
        [
            ("model", version.model_id),
            ("version", version.version),
            ("status", rpb.VersionStatus.Name(version.status).removeprefix("VERSION_STATUS_").lower()),
            ("aliases", ", ".join(version.aliases) or "-"),
            ("description", version.description or "-"),
            ("loader", version.loader),
            ("source", version.source_uri),
            ("checkpoint", version.checkpoint_hash),
            (
                "config",
                f"batch {cfg.max_batch_size} ({cfg.max_batch_tokens or 'auto'} tokens), "
                f"delay {cfg.max_delay_ms} ms, device {cfg.device or 'auto'}, "
                f"dtype {cfg.dtype or 'float32'}, quantization {cfg.quantization or 'none'}, "
                f"engine {cfg.engine or 'torch'}",
            ),
            (
                "signature",
                ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in sig.inputs)
                + " -> "
                + ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in sig.outputs),
            ),
            ("parameters", parameters_text(sig)),
            ("tags", tags_text(version.tags)),
            ("lineage", ", ".join(f"{f.name}={v}" for f, v in version.lineage.ListFields()) or "-"),
            ("created", f"{when(version.created_at)} by {version.created_by or '-'}"),
        ],
    )


def parameters_text(signature: rpb.Signature) -> str:
    """The request parameters a version reads, e.g. `prompt_name: passage="passage: ", query="query: "
    (default query)`; "-" when none."""
    from modelyard.common.modelspec import parameters_from_metadata

    parts = []
    for parameter in parameters_from_metadata(dict(signature.parameters)):
        choices = ", ".join(f"{value}={meaning!r}" for value, meaning in parameter.choices)
        default = f" (default {parameter.default})" if parameter.default else ""
        parts.append(f"{parameter.name}: {choices}{default}")
    return "; ".join(parts) or "-"


@models.command("register")
@click.option("--model", "model_id", required=True, help="Model id (created when absent).")
@click.option("--version", required=True, help="SemVer, e.g. 1.2.0.")
@click.option("--source-uri", required=True, help="Where the artifact already lives (path or fsspec URL).")
@click.option("--checkpoint-hash", required=True, help="sha256 of the artifact (`modelyard models hash`).")
@click.option("--loader", required=True, help="sentence-transformers, open-clip or hf-captioning.")
@click.option("--embedding-dim", type=click.IntRange(min=0), default=0, help="Signature: embedding size.")
@_config_options
@json_option
def register_cmd(
    model_id: str,
    version: str,
    source_uri: str,
    checkpoint_hash: str,
    loader: str,
    embedding_dim: int,
    **o: object,
) -> None:
    """Register an artifact that is already stored, as is (no hashing, copying or loading).

    Prefer `models import`, which measures the hash and signature itself.
    """
    ctx = get_context()
    draft = _draft(model_id, version, loader, **o)
    signature = rpb.Signature(embedding_dim=embedding_dim)
    if not draft.model_type:
        raise UsageError("--model-type is required with `models register` (the signature is not read)")

    async def call(registry: RegistryClient) -> rpb.ModelVersion:
        return await importer.register(
            registry,
            draft,
            source_uri=source_uri,
            checkpoint=checkpoint_hash,
            signature=signature,
            timeout_s=ctx.timeout_s,
        )

    registered = ctx.registry_call(call)
    ctx.say(f"registered {registered.model_id} {registered.version}")
    if ctx.json:
        ctx.emit_json(registered)


@models.command("import")
@click.argument("source")
@click.option("--model", "model_id", required=True, help="Model id (created when absent).")
@click.option("--version", required=True, help="SemVer, e.g. 1.2.0.")
@click.option(
    "--loader",
    default=None,
    help="sentence-transformers, open-clip or hf-captioning; default: detected from SOURCE's files.",
)
@click.option(
    "--store",
    default=None,
    help="Artifact store: a directory or any fsspec URL (env MODELYARD_ARTIFACT_STORE; "
    "default ~/.local/share/modelyard/artifacts).",
)
@_config_options
@json_option
def import_cmd(
    source: str, model_id: str, version: str, loader: str | None, store: str | None, **o: object
) -> None:
    """Import the model in SOURCE: hash it, read its signature by loading it, copy it into the
    artifact store and register the version pointing at the stored copy.

    \b
    SOURCE is one of:
      PATH                 a local directory or file
      models:/NAME/3       an MLflow registered model version (or models:/NAME@ALIAS)
      models:/m-ID         an MLflow 3 logged model
      runs:/RUN_ID/PATH    artifacts of an MLflow run
      hf://ORG/NAME[@REV]  a snapshot in the local Hugging Face cache (never downloaded)

    MLflow sources use the tracking and registry store of MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
    (pip install 'modelyard[mlflow]') and record the run as lineage (training run
    EXPERIMENT_ID/RUN_ID, git commit from the run's mlflow.source.git.commit tag, training datasets
    as NAME@DIGEST). hf:// records hf://ORG/NAME@COMMIT as the training run. A PATH inside a git work
    tree records `git rev-parse HEAD` as the git commit, with a -dirty suffix when `git status`
    shows uncommitted changes under PATH (ignored files do not count). Lineage flags given
    explicitly win over what the source recorded.
    """
    ctx = get_context()
    # Malformed flags fail before anything is looked up or downloaded; the loader comes later.
    draft = _draft(model_id, version, loader or "", **o)
    with spinner(ctx, f"looking up {source}"):
        located = import_sources.locate(source, loader=loader)
    if located.description != located.source:
        ctx.say(f"source      {located.description}")
    draft.lineage = import_sources.fill_lineage(draft.lineage, located.lineage)
    started = time.perf_counter()

    # Refuse early, before any slow work, if the version is taken by something else.
    found = ctx.registry_call(
        lambda registry: importer.existing_version(registry, model_id, draft.version, ctx.timeout_s)
    )
    with contextlib.ExitStack() as scratch:
        with spinner(ctx, f"downloading {source}") if located.remote else contextlib.nullcontext():
            path = scratch.enter_context(located.fetch())
        draft.loader = loader or importer.detect_loader(path)
        _import_artifact(ctx, path, draft, store, found, started)


def _import_artifact(
    ctx: CliContext,
    path: Path,
    draft: importer.VersionDraft,
    store: str | None,
    found: rpb.ModelVersion | None,
    started: float,
) -> None:
    loader = draft.loader
    store_url = store or importer.default_artifact_store()
    with spinner(ctx, "loading model libraries"):
        importer.check_loader(loader)
    size = importer.artifact_size(path)
    with spinner(ctx, f"hashing {path} ({size / 1e6:.1f} MB)"):
        checkpoint = _checkpoint_hash(path)
    ctx.say(f"checkpoint  sha256 {checkpoint} ({size / 1e6:.1f} MB)")
    if found is not None:
        if importer.same_registration(found, draft, checkpoint):
            ctx.say(
                f"{draft.model_id} {draft.version} is already registered with this checkpoint; nothing to do"
            )
            if ctx.json:
                ctx.emit_json(found)
            return
        raise importer.refuse_existing(found)
    with spinner(ctx, f"loading {path.name} with {loader} to read its signature"):
        signature = importer.read_signature(path, loader, draft.config)
    ctx.say(
        "signature   "
        + ", ".join(f"{t.name} {t.datatype}" for t in signature.inputs)
        + " -> "
        + ", ".join(f"{t.name} {t.datatype}{list(t.shape)}" for t in signature.outputs)
    )
    if draft.lineage.ListFields():
        ctx.say("lineage     " + ", ".join(f"{f.name}={v}" for f, v in draft.lineage.ListFields()))
    with byte_bar(ctx, "copying", size) as update:
        uri = importer.ArtifactStore(store_url).put(path, checkpoint, update)
    ctx.say(f"stored      {uri}")

    async def call(registry: RegistryClient) -> rpb.ModelVersion:
        return await importer.register(
            registry,
            draft,
            source_uri=uri,
            checkpoint=checkpoint,
            signature=signature,
            timeout_s=ctx.timeout_s,
        )

    registered = ctx.registry_call(call)
    if ctx.json:
        ctx.emit_json(registered)
    else:
        ctx.say(
            f"registered  {registered.model_id} {registered.version} "
            f"({draft.config.quantization or 'no quantization'}) in {time.perf_counter() - started:.1f} s"
        )


def _checkpoint_hash(path: Path) -> str:
    """The hash workers verify; an artifact they would refuse (a symlink out of it) is a usage error."""
    from modelyard.inference.artifacts import checkpoint_hash
    from modelyard.inference.errors import ArtifactRefused

    try:
        return checkpoint_hash(path)
    except ArtifactRefused as refused:
        raise UsageError(refused.message) from None


@models.command("hash")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@json_option
def hash_cmd(path: Path) -> None:
    """Print the checkpoint hash of a file or directory (what the registry and workers verify)."""
    ctx = get_context()
    with spinner(ctx, f"hashing {path}"):
        digest = _checkpoint_hash(path)
    if ctx.json:
        ctx.emit_json({"path": str(path), "checkpoint_hash": digest})
    else:
        click.echo(digest)


@models.command("list")
@click.argument("model_id", required=False)
@click.option("--model-type", type=click.Choice(sorted(MODEL_TYPES)), default=None)
@click.option("--tag", "tags", multiple=True, metavar="KEY[=VALUE]", help="Only versions with this tag.")
@click.option("--query", default="", help="Substring of version, description or loader.")
@click.option("--archived", is_flag=True, help="Only archived versions.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
def list_cmd(
    model_id: str | None,
    model_type: str | None,
    tags: tuple[str, ...],
    query: str,
    archived: bool,
    limit: int,
) -> None:
    """List models, or the versions of MODEL_ID."""
    ctx = get_context()
    type_value = MODEL_TYPES[model_type] if model_type else 0
    if not model_id and not tags and not query:
        listed = ctx.registry_call(
            lambda registry: registry.list_models(
                rpb.ListModelsRequest(model_type=type_value, page_size=limit),  # type: ignore[arg-type]
            )
        )
        if ctx.json:
            ctx.emit_json(list(listed.models))
            return
        table(
            ctx,
            ["model", "type", "description", "tags", "created"],
            [
                (
                    m.model_id,
                    model_type_name(m.model_type),
                    m.description or "-",
                    tags_text(m.tags),
                    when(m.created_at),
                )
                for m in listed.models
            ],
        )
        return
    request = rpb.ListVersionsRequest(
        model_id=model_id or "",
        model_type=type_value,  # type: ignore[arg-type]
        tags=list(tags),
        query=query,
        status=rpb.VERSION_STATUS_ARCHIVED if archived else rpb.VERSION_STATUS_UNSPECIFIED,
        page_size=limit,
    )
    versions = ctx.registry_call(lambda registry: registry.list_versions(request)).versions
    if ctx.json:
        ctx.emit_json(list(versions))
        return
    table(
        ctx,
        [
            "model",
            "version",
            "status",
            "aliases",
            "loader",
            "quantization",
            "checkpoint",
            "description",
            "created",
        ],
        [
            (
                v.model_id,
                v.version,
                rpb.VersionStatus.Name(v.status).removeprefix("VERSION_STATUS_").lower(),
                ", ".join(v.aliases) or "-",
                v.loader,
                v.inference_config.quantization or "-",
                short_hash(v.checkpoint_hash),
                v.description or "-",
                when(v.created_at),
            )
            for v in versions
        ],
    )


@models.command("show")
@click.argument("model_id")
@click.argument("version")
@json_option
def show_cmd(model_id: str, version: str) -> None:
    """Show one version (VERSION may be an alias) and its newest benchmark metrics."""
    ctx = get_context()

    async def call(registry: RegistryClient) -> tuple[rpb.ModelVersion, rpb.GetVersionMetricsResponse]:
        found = await registry.get_version(rpb.GetVersionRequest(model_id=model_id, version=version))
        metrics = await registry.get_version_metrics(
            rpb.GetVersionMetricsRequest(model_id=model_id, version=found.version)
        )
        return found, metrics

    found, metrics = ctx.registry_call(call)
    if ctx.json:
        ctx.emit_json({"version": found, "metrics": list(metrics.metrics)})
        return
    _print_version(found)
    if metrics.metrics:
        table(
            ctx,
            ["metric", "value", "suite", "run", "recorded"],
            [
                (m.name, number(m.value, m.unit), m.suite, m.run_id[:12], when(m.recorded_at))
                for m in metrics.metrics
            ],
            title="benchmark metrics (newest of each)",
            right=["value"],
        )


@models.command("tag")
@click.argument("model_id")
@click.argument("version")
@click.argument("tags", nargs=-1, metavar="[KEY=VALUE]...")
@click.option("--remove", multiple=True, metavar="KEY", help="Remove this tag (repeatable).")
@click.option("--description", default=None, help="Replace the description.")
@click.option("--reason", default="", help="Recorded in the audit log.")
@json_option
def tag_cmd(
    model_id: str,
    version: str,
    tags: tuple[str, ...],
    remove: tuple[str, ...],
    description: str | None,
    reason: str,
) -> None:
    """Set or remove tags (and the description) of a version; nothing else of a version changes."""
    ctx = get_context()
    if not tags and not remove and description is None:
        raise UsageError("nothing to change: give KEY=VALUE tags, --remove KEY or --description")
    request = rpb.UpdateVersionRequest(
        model_id=model_id,
        version=version,
        set_tags=parse_key_values(tags),
        remove_tags=list(remove),
        reason=reason,
    )
    if description is not None:
        request.description = description
    updated = ctx.registry_call(lambda registry: registry.update_version(request))
    if ctx.json:
        ctx.emit_json(updated)
    else:
        ctx.say(f"{updated.model_id} {updated.version} tags: {tags_text(updated.tags)}")


@models.command("alias")
@click.argument("model_id")
@click.argument("alias")
@click.argument("version")
@click.option("--gate", "gates", multiple=True, metavar="'METRIC OP VALUE'", help="e.g. 'recall@10 >= 0.80'.")
@click.option("--gate-suite", default="", help="Suite the gate metrics must come from.")
@click.option("--reason", default="")
@json_option
def alias_cmd(
    model_id: str, alias: str, version: str, gates: tuple[str, ...], gate_suite: str, reason: str
) -> None:
    """Point ALIAS of MODEL_ID at VERSION (deployments following the alias switch)."""
    from modelyard.cli.deployments import print_promotion

    ctx = get_context()
    request = rpb.SetAliasRequest(
        model_id=model_id,
        alias=alias,
        version=version,
        gates=list(gates),
        gate_suite=gate_suite,
        reason=reason,
    )
    print_promotion(ctx.registry_call(lambda registry: registry.set_alias(request)))


@models.command("aliases")
@click.argument("model_id")
@json_option
def aliases_cmd(model_id: str) -> None:
    """List the aliases of MODEL_ID and the versions they point at."""
    ctx = get_context()
    listed = ctx.registry_call(
        lambda registry: registry.list_aliases(rpb.ListAliasesRequest(model_id=model_id))
    )
    if ctx.json:
        ctx.emit_json(list(listed.aliases))
        return
    table(
        ctx, ["alias", "version", "moved"], [(a.alias, a.version, when(a.updated_at)) for a in listed.aliases]
    )


@models.command("delete-alias")
@click.argument("model_id")
@click.argument("alias")
@click.option("--reason", default="")
@json_option
def delete_alias_cmd(model_id: str, alias: str, reason: str) -> None:
    """Delete ALIAS of MODEL_ID (refused while a deployment follows it)."""
    ctx = get_context()
    ctx.registry_call(
        lambda registry: registry.delete_alias(
            rpb.DeleteAliasRequest(model_id=model_id, alias=alias, reason=reason)
        )
    )
    if ctx.json:
        ctx.emit_json({"model_id": model_id, "alias": alias, "deleted": True})
    else:
        ctx.say(f"deleted alias {alias} of {model_id}")


@models.command("archive")
@click.argument("model_id")
@click.argument("version")
@click.option("--reason", default="")
@json_option
def archive_cmd(model_id: str, version: str, reason: str) -> None:
    """Archive a version (refused while it is routed or aliased)."""
    ctx = get_context()
    archived = ctx.registry_call(
        lambda registry: registry.archive_version(
            rpb.ArchiveVersionRequest(model_id=model_id, version=version, reason=reason),
        )
    )
    if ctx.json:
        ctx.emit_json(archived)
    else:
        ctx.say(f"archived {archived.model_id} {archived.version}")


@models.command("cleanup")
@click.argument("model_id")
@click.option("--keep-last", type=click.IntRange(min=1), required=True, help="Keep the newest N versions.")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option("--skip-in-use", is_flag=True, help="Keep routed/aliased versions instead of refusing.")
@click.option("--reason", default="")
@json_option
def cleanup_cmd(model_id: str, keep_last: int, dry_run: bool, skip_in_use: bool, reason: str) -> None:
    """Remove all but the newest versions of a model (never one that is routed or aliased)."""
    ctx = get_context()
    result = ctx.registry_call(
        lambda registry: registry.cleanup_versions(
            rpb.CleanupVersionsRequest(
                model_id=model_id,
                keep_last=keep_last,
                dry_run=dry_run,
                skip_in_use=skip_in_use,
                reason=reason,
            ),
        )
    )
    if ctx.json:
        ctx.emit_json(result)
        return
    verb = "would remove" if result.dry_run else "removed"
    ctx.say(f"{verb}: {', '.join(result.removed) or 'nothing'}")
    if result.kept_in_use:
        ctx.say(f"kept (in use): {', '.join(result.kept_in_use)}")


@models.command("export")
@click.argument("output", type=click.Path(dir_okay=False, allow_dash=True), default="-")
@json_option
def export_cmd(output: str) -> None:
    """Export the whole registry as JSON to OUTPUT (default stdout).

    The export is JSON either way; with --json and an OUTPUT file, stdout gets
    {"output": OUTPUT, "bytes": N} instead of the line on stderr.
    """
    ctx = get_context()
    if output != "-":
        files.check_writable(output, "export file")
    exported = ctx.registry_call(lambda registry: registry.export_registry(rpb.ExportRegistryRequest()))
    if output == "-":
        sys.stdout.write(exported.json + "\n")
        return
    files.write_text(output, exported.json + "\n", "export file")
    if ctx.json:
        ctx.emit_json({"output": output, "bytes": len(exported.json.encode()) + 1})
    else:
        click.echo(f"exported the registry to {output}", err=True)


@models.command("import-registry")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@json_option
def import_registry_cmd(source: str) -> None:
    """Import a registry export (existing identical entries are left as they are)."""
    ctx = get_context()
    # Read and parsed here, so a file that is no export fails before anything is sent.
    document, _ = files.read_json(source, "registry export")
    result = ctx.registry_call(
        lambda registry: registry.import_registry(
            rpb.ImportRegistryRequest(json=document), timeout=max(ctx.timeout_s, 60)
        )
    )
    if ctx.json:
        ctx.emit_json(result)
        return
    ctx.say(
        f"imported {result.models} models, {result.versions} versions, {result.aliases} aliases, "
        f"{result.deployments} deployments, {result.benchmark_runs} benchmark runs "
        f"({result.unchanged} already present)"
    )


# Defined beside the example assembly it runs (models.py holds the registry-facing commands).
models.add_command(example_cmd)

__all__ = ["EXIT_FAILED", "CliError", "models"]
