"""Documents uploaded over HTTP, kept on disk for the ingest job that reads them.

Each request gets a folder of its own under PGRAG_UPLOAD_DIR (mode 700), and each file in
it a name made from the client's one by `safe_name`: the client never chooses a path. The
folder is then ingested like any local folder (a JSONL or Parquet body: like that file), so
an upload and a local ingest of the same files give the same documents and ids.
"""

from __future__ import annotations

import shutil
import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from pgrag.ingest.sources import SUFFIX_TYPES
from pgrag.runtime.settings import get_settings

MAX_NAME_CHARS = 120
COPY_BYTES = 1 << 20


class UploadRefused(ValueError):
    """An upload that cannot be taken (too large, an unsupported file type)."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


def safe_name(name: str | None) -> str:
    """The last component of a client's file name, without control characters or leading
    dots, at most MAX_NAME_CHARS long (its suffix kept): '../../etc/passwd' -> 'passwd'."""
    last = PurePosixPath((name or "").replace("\\", "/")).name
    kept = "".join(c for c in last if unicodedata.category(c)[0] != "C").strip().lstrip(".")
    if not kept:
        return "upload"
    path = PurePosixPath(kept)
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    stem = kept[: len(kept) - len(suffix)] if suffix else kept
    return stem[: MAX_NAME_CHARS - len(suffix)] + suffix


def new_folder() -> Path:
    """A fresh folder for one request's files."""
    folder = get_settings().uploads / uuid.uuid4().hex
    folder.mkdir(parents=True, mode=0o700)
    return folder


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def file_limit() -> int:
    return int(get_settings().max_upload_file_mb * 2**20)


def _over(name: str) -> UploadRefused:
    limit = get_settings().max_upload_file_mb
    return UploadRefused(f"{name}: over the limit of {limit:g} MiB a file", 413)


def destination(folder: Path, client_name: str | None) -> Path:
    """Where a file named `client_name` by the client is stored in `folder`: its safe name,
    numbered when two files of the request share one. UploadRefused for a type that pgrag
    does not read."""
    name = safe_name(client_name)
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SUFFIX_TYPES:
        raise UploadRefused(
            f"{name}: unsupported file type {suffix or '(no extension)'}"
            f" (supported: {', '.join(SUFFIX_TYPES)})",
            415,
        )
    path, n = folder / name, 1
    while path.exists():
        n += 1
        path = folder / f"{PurePosixPath(name).stem}-{n}{PurePosixPath(name).suffix}"
    return path


def copy_file(source: BinaryIO, dest: Path) -> None:
    """Copy an uploaded file (already spooled by the multipart parser) to `dest`."""
    limit, written = file_limit(), 0
    with open(dest, "xb") as out:
        while block := source.read(COPY_BYTES):
            written += len(block)
            if written > limit:
                raise _over(dest.name)
            out.write(block)


async def save_stream(body: AsyncIterator[bytes], dest: Path) -> None:
    """Write a request body to `dest` as it arrives."""
    limit, written = file_limit(), 0
    with open(dest, "xb") as out:
        async for block in body:
            written += len(block)
            if written > limit:
                raise _over(dest.name)
            out.write(block)
