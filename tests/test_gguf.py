"""Packaged GGUF files are untrusted until checked: parts joined in order, then refused unless
their size, sha256 and metadata are the ones pinned. Tiny GGUF files, cut into part
packages in a temporary folder, go through the same code as the packaged models."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from pathlib import Path

import gguf as gguf_lib
import numpy as np
import pytest

from pgrag.inference import gguf
from pgrag.inference.gguf import PACKAGED_GGUF, GGUFMismatch, Packaged, Pin, packaged_gguf
from pgrag.query.generation import GeneratorError

TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"


def tiny_gguf(path: Path, architecture: str = "qwen2", template: str | None = TEMPLATE) -> bytes:
    """A small valid GGUF file: metadata and one tensor."""
    writer = gguf_lib.GGUFWriter(path, architecture)
    writer.add_name("tiny")
    if template is not None:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def open_packaged(name: str, scratch: Path) -> None:
    with packaged_gguf(name, scratch):
        pass


MakeParts = Callable[..., tuple[str, list[Path]]]


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeParts:
    """Makes a packaged model `tiny/<label>` cut into 3 part packages (folders on sys.path,
    found as the real ones are, without importing them); returns its name and part files."""
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))

    def make(label: str, data: bytes, architecture: str = "qwen2") -> tuple[str, list[Path]]:
        third = len(data) // 3
        files = []
        for n, chunk in enumerate([data[:third], data[third : 2 * third], data[2 * third :]], 1):
            file = site / f"tiny_{label}_part{n}" / "data" / f"part{n:02d}.bin"
            file.parent.mkdir(parents=True)
            file.write_bytes(chunk)
            files.append(file)
        importlib.invalidate_caches()  # the folders are new: find_spec must see them
        name = f"tiny/{label}"
        monkeypatch.setitem(
            PACKAGED_GGUF,
            name,
            Packaged(
                f"tiny_{label}_part1",
                f"{label}.gguf",
                architecture,
                Pin(len(data), hashlib.sha256(data).hexdigest()),
                gguf._parts(f"tiny_{label}_part{{n}}", "data/part{n:02d}.bin", 3),
            ),
        )
        return name, files

    return make


def test_parts_are_joined_in_order_into_a_temporary_file_and_checked(
    tmp_path: Path, parts: MakeParts
) -> None:
    data = tiny_gguf(tmp_path / "tiny.gguf")
    name, _ = parts("ok", data)
    assert gguf.installed(name)
    with packaged_gguf(name, tmp_path / "models") as path:
        assert path is not None and path.parent.parent == tmp_path / "models"
        assert path.read_bytes() == data
        found = gguf.metadata(path)
        assert found["general.architecture"] == "qwen2"
        assert found["tokenizer.chat_template"] == TEMPLATE
    assert not path.exists()


def test_a_truncated_part_is_refused(tmp_path: Path, parts: MakeParts) -> None:
    name, files = parts("short", tiny_gguf(tmp_path / "tiny.gguf"))
    files[1].write_bytes(files[1].read_bytes()[:-10])
    with pytest.raises(GGUFMismatch, match=r"bytes, not the [\d,]+ pinned in pgrag: a part"):
        open_packaged(name, tmp_path / "models")
    assert not list((tmp_path / "models").iterdir())  # the joined file is gone


def test_a_corrupted_part_of_the_right_size_is_refused(tmp_path: Path, parts: MakeParts) -> None:
    name, files = parts("flipped", tiny_gguf(tmp_path / "tiny.gguf"))
    data = bytearray(files[2].read_bytes())
    data[-1] ^= 0xFF
    files[2].write_bytes(bytes(data))
    with pytest.raises(GGUFMismatch, match=r"has sha256 [0-9a-f]{64}, not the [0-9a-f]{64}"):
        open_packaged(name, tmp_path / "models")


def test_a_missing_part_package_means_not_installed(tmp_path: Path, parts: MakeParts) -> None:
    name, files = parts("gone", tiny_gguf(tmp_path / "tiny.gguf"))
    for f in files[2].parent.parent.rglob("*"):
        if f.is_file():
            f.unlink()
    files[2].parent.rmdir()
    files[2].parent.parent.rmdir()
    assert not gguf.installed(name)
    with packaged_gguf(name, tmp_path / "models") as path:
        assert path is None


def test_the_metadata_must_say_the_pinned_architecture_and_carry_a_chat_template(
    tmp_path: Path, parts: MakeParts
) -> None:
    name, _ = parts("llama", tiny_gguf(tmp_path / "a.gguf", "llama"))
    with pytest.raises(GGUFMismatch, match="is a 'llama' model, not the 'qwen2' pinned"):
        open_packaged(name, tmp_path / "models")
    name, _ = parts("untemplated", tiny_gguf(tmp_path / "b.gguf", template=None))
    with pytest.raises(GGUFMismatch, match="carries no chat template"):
        open_packaged(name, tmp_path / "models")
    name, _ = parts("garbage", b"not a GGUF file at all" * 100)
    with pytest.raises(GGUFMismatch, match="is not a readable GGUF file"):
        open_packaged(name, tmp_path / "models")


def test_a_refused_file_is_a_clear_generator_error(
    tmp_path: Path, parts: MakeParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgrag.query.generation.local import load_model
    from pgrag.runtime.settings import get_settings

    monkeypatch.setenv("PGRAG_MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    name, files = parts("bad", tiny_gguf(tmp_path / "tiny.gguf"))
    files[0].write_bytes(b"\0" * files[0].stat().st_size)
    with pytest.raises(GeneratorError, match=f"cannot load the local model '{name}'.*sha256"):
        load_model(name, "cpu", "torch-fp32")


def test_local_uses_the_best_packaged_model_installed(
    tmp_path: Path, parts: MakeParts, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgrag.query.generation.local import LocalGenerator
    from pgrag.runtime.settings import get_settings

    data = tiny_gguf(tmp_path / "tiny.gguf")
    best, _ = parts("best", data)
    second, _ = parts("second", data)
    absent = PACKAGED_GGUF[best]._replace(parts=gguf._parts("tiny_absent_part{n}", "x", 1))
    ranked = {"tiny/absent": absent, best: PACKAGED_GGUF[best], second: PACKAGED_GGUF[second]}
    monkeypatch.setattr(gguf, "PACKAGED_GGUF", ranked)
    assert gguf.best_installed() == best
    monkeypatch.setenv("PGRAG_LOCAL_MODEL", "")  # the default: the best installed
    get_settings.cache_clear()
    assert LocalGenerator().model_name == best
    monkeypatch.setattr(gguf, "PACKAGED_GGUF", {})
    assert gguf.best_installed() == gguf.FALLBACK
