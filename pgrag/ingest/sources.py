"""Source readers: a folder, or a JSONL / JSON / Parquet / single document file.

`open_source` checks the path and returns a `Source`: an iterable that streams one
`SourceDocument` per document it could read and one `SourceError` per document (file,
line, row) it could not. A bad document never stops the rest. No database here.

external_id, stable across re-ingests:
- a file in a folder: its path relative to the folder, POSIX style ("notes/a.pdf");
- a row of a .json/.jsonl/.parquet file in a folder: "notes/corpus.jsonl#<row id>";
- a row of a JSONL/JSON/Parquet file opened directly: its id;
- a single document file opened directly: its file name.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, NamedTuple, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from pgrag.ingest.extract import (
    BINARY_REASON,
    EMPTY_REASON,
    MB,
    TEXT_TYPES,
    ExtractError,
    check_text,
    decode_text,
    extract,
    normalise_text,
    one_line,
    too_large,
    utf8_error,
)
from pgrag.runtime.errors import UserError

# File suffix -> how the file is read. Anything else in a folder is skipped.
SUFFIX_TYPES: dict[str, str] = {
    **TEXT_TYPES,
    ".json": "json",
    ".jsonl": "jsonl",
    ".parquet": "parquet",
}
_LABELS = {
    "text": "text",
    "markdown": "Markdown",
    "html": "HTML",
    "pdf": "PDF",
    "json": "JSON",
    "jsonl": "JSONL",
    "parquet": "Parquet",
}
ROW_FIELDS = frozenset({"id", "_id", "text", "title", "metadata"})
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time; bounds memory on big Parquet files


@dataclass(frozen=True)
class SourceDocument:
    external_id: str  # stable id across re-ingests
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceError:
    ref: str  # what failed, e.g. "notes/a.pdf" or "corpus.jsonl:17"
    reason: str  # a clear human reason, e.g. "not valid UTF-8 (byte 0xff at offset 12)"


SourceItem = SourceDocument | SourceError


class SourceNotFound(UserError, ValueError):
    """Bad path or unsupported source, raised by `open_source` before any work."""


class InvalidSource(SourceNotFound):
    """The source exists but nothing can be read from it (e.g. a Parquet without `text`)."""


class SourceNotAllowed(SourceNotFound):
    """A path outside the folders this server was configured to read."""


def allowed_path(path: str, roots: Sequence[Path]) -> Path:
    """`path` resolved, symlinks included, when it lies under one of `roots`; otherwise
    SourceNotAllowed, saying the same whether or not it exists. Nothing is opened."""
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a NUL byte, a symlink loop
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in roots):
        raise SourceNotAllowed(
            f"{path}: not under a folder this server may read (PGRAG_SOURCE_ROOTS);"
            " upload the documents instead (POST /v1/collections/{name}/documents)"
        )
    return resolved


class Source(Protocol):
    description: str  # e.g. "folder ./docs" / "JSONL corpus.jsonl"

    def estimate_total(self) -> int | None: ...

    def __iter__(self) -> Iterator[SourceItem]: ...


def document_limit_bytes(max_document_mb: float) -> int:
    """The `max_document_bytes` that matches Settings.max_document_mb."""
    return int(max_document_mb * MB)


def open_source(path: str | Path, *, max_document_bytes: int) -> Source:
    """Check `path` and return the reader for it; raises SourceNotFound if there is none."""
    if max_document_bytes <= 0:
        raise ValueError("max_document_bytes must be positive")
    p = Path(path).expanduser()
    try:
        is_dir, exists = p.is_dir(), p.exists()
    except OSError as e:  # a name too long for the file system, say
        raise SourceNotFound(f"{path}: {_os_reason(e)}") from None
    if is_dir:
        try:
            os.scandir(p).close()
        except OSError as e:
            raise SourceNotFound(f"{path}: cannot open folder: {_os_reason(e)}") from None
        return FolderSource(p, max_document_bytes)
    if not exists:
        raise SourceNotFound(f"{path}: does not exist")
    if not p.is_file():
        raise SourceNotFound(f"{path}: not a regular file or folder")
    kind = SUFFIX_TYPES.get(p.suffix.lower())
    if kind is None:
        supported = ", ".join(SUFFIX_TYPES)
        raise SourceNotFound(
            f"{path}: unsupported file type {p.suffix or '(no extension)'}"
            f" (supported: {supported}, or a folder)"
        )
    if kind == "parquet":
        try:
            _open_parquet(p).close()
        except ExtractError as e:
            raise InvalidSource(f"{path}: {e}") from None
    return FileSource(p, kind, max_document_bytes)


class FolderSource:
    """Every supported file under a folder, walked recursively in sorted order."""

    def __init__(self, root: Path, max_document_bytes: int) -> None:
        self.root = root
        self.max_document_bytes = max_document_bytes
        self.description = f"folder {root}"

    def estimate_total(self) -> int | None:
        """One per document file, plus the lines of .jsonl and rows of .parquet files."""
        total = 0
        for item in _walk(self.root):
            if isinstance(item, _File):
                count = _count_documents(item.path, item.kind)
                total += 1 if count is None else count
        return total

    def __iter__(self) -> Iterator[SourceItem]:
        for item in _walk(self.root):
            if isinstance(item, SourceError):
                yield item
            else:
                yield from _read_file(
                    item.path,
                    item.relpath,
                    item.kind,
                    id_prefix=f"{item.relpath}#",
                    max_bytes=self.max_document_bytes,
                )


class FileSource:
    """One file: a single document, or the rows of a JSONL / JSON / Parquet file."""

    def __init__(self, path: Path, kind: str, max_document_bytes: int) -> None:
        self.path = path
        self.kind = kind
        self.max_document_bytes = max_document_bytes
        self.description = f"{_LABELS[kind]} {path}"

    def estimate_total(self) -> int | None:
        return _count_documents(self.path, self.kind)

    def __iter__(self) -> Iterator[SourceItem]:
        return _read_file(
            self.path, self.path.name, self.kind, id_prefix="", max_bytes=self.max_document_bytes
        )


# --- Walking a folder -------------------------------------------------------------------


class _File(NamedTuple):
    path: Path
    relpath: str  # POSIX style, relative to the source folder
    kind: str


def _walk(root: Path) -> Iterator[_File | SourceError]:
    real_root = root.resolve()
    return _walk_folder(root, "", real_root, (real_root,))


def _walk_folder(
    folder: Path, prefix: str, real_root: Path, ancestors: tuple[Path, ...]
) -> Iterator[_File | SourceError]:
    try:
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
    except OSError as e:
        yield SourceError(prefix.rstrip("/") or ".", f"cannot open folder: {_os_reason(e)}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # hidden files and folders (.git, .DS_Store, ...)
        relpath = prefix + entry.name
        if not _is_utf8(relpath):
            yield SourceError(_printable(relpath), "file name is not valid UTF-8")
            continue
        path = Path(entry.path)
        link_problem = _symlink_problem(path, real_root) if entry.is_symlink() else None
        if link_problem:
            yield SourceError(relpath, link_problem)
        elif entry.is_dir():
            real = path.resolve()
            if real in ancestors:
                continue  # a symlink back up the tree: following it would never end
            yield from _walk_folder(path, f"{relpath}/", real_root, (*ancestors, real))
        elif entry.is_file() and (kind := SUFFIX_TYPES.get(path.suffix.lower())):
            yield _File(path, relpath, kind)


def _symlink_problem(path: Path, real_root: Path) -> str | None:
    """Why a symlink must not be followed, or None when it stays inside the folder."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop on Python 3.11/3.12
        return "symlink loop"
    if not target.is_relative_to(real_root):
        return "symlink leads outside the source folder"
    if not target.exists():
        return "broken symlink: its target does not exist"
    return None


def _count_documents(path: Path, kind: str) -> int | None:
    try:
        if kind == "jsonl":
            return count_nonempty_lines(path)
        if kind == "parquet":
            with pq.ParquetFile(path) as pf:
                return int(pf.metadata.num_rows)
    except (OSError, pa.ArrowException):
        return None
    return None if kind == "json" else 1


_LINE_START = re.compile(rb"\n(?=[^\n])")


def count_nonempty_lines(path: Path, chunk_size: int = 1 << 20) -> int:
    """Lines that are not empty, counted in 1 MiB chunks without splitting lines."""
    count = 0
    previous = b"\n"  # the start of the file is a line start
    with path.open("rb") as f:
        while chunk := f.read(chunk_size):
            # A non-empty line starts wherever a newline is followed by something else.
            window = previous + chunk
            if b"\n\n" in window:
                count += len(_LINE_START.findall(window))
            else:
                count += window.count(b"\n", 0, len(window) - 1)
            previous = chunk[-1:]
    return count


# --- Reading one file ---------------------------------------------------------------------


def _read_file(
    path: Path, ref: str, kind: str, *, id_prefix: str, max_bytes: int
) -> Iterator[SourceItem]:
    """The documents of one file; `ref` names the file in errors and single-file ids."""
    if kind == "jsonl":
        yield from _jsonl_rows(path, ref, id_prefix, max_bytes)
    elif kind == "parquet":
        yield from _parquet_rows(path, ref, id_prefix, max_bytes)
    elif kind == "json":
        yield from _json_rows(path, ref, id_prefix, max_bytes)
    else:
        try:
            doc = extract(_read_bounded(path, max_bytes), kind)
        except ExtractError as e:
            yield SourceError(ref, str(e))
            return
        title = doc.title or PurePosixPath(ref).stem
        yield SourceDocument(ref, doc.text, title, {"path": ref, "type": kind})


def _read_bounded(path: Path, max_bytes: int, what: str = "document") -> bytes:
    """The whole file, refused by its size on disk before anything is read."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ExtractError(too_large(size, max_bytes, what))
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ExtractError(f"cannot read file: {_os_reason(e)}") from None
    if len(data) > max_bytes:  # the file grew after the size check
        raise ExtractError(too_large(len(data), max_bytes, what))
    return data


def _json_rows(path: Path, ref: str, id_prefix: str, max_bytes: int) -> Iterator[SourceItem]:
    """A .json file: one row object, or a list of them. It is read whole, so size-limited."""
    try:
        text = decode_text(_read_bounded(path, max_bytes, "JSON file"))
        if not text.strip():
            raise ExtractError(EMPTY_REASON)
        value = _parse_json(text)
    except ExtractError as e:
        yield SourceError(ref, str(e))
        return
    if isinstance(value, list):
        for i, row in enumerate(value):
            yield _row_item(row, f"{ref}[{i}]", id_prefix, max_bytes)
    else:
        # A single object may leave out its id: the file then names the document.
        yield _row_item(value, ref, id_prefix, max_bytes, fallback_id=ref)


def _jsonl_rows(path: Path, ref: str, id_prefix: str, max_bytes: int) -> Iterator[SourceItem]:
    """One row per non-empty line, read and decoded line by line."""
    try:
        with path.open("rb") as f:
            for lineno, line, size in _bounded_lines(f, max_bytes):
                line_ref = f"{ref}:{lineno}"
                if line is None:
                    yield SourceError(line_ref, too_large(size, max_bytes))
                elif line.strip():
                    try:
                        row = _parse_json_line(line)
                    except ExtractError as e:
                        yield SourceError(line_ref, str(e))
                        continue
                    yield _row_item(row, line_ref, id_prefix, max_bytes)
    except OSError as e:
        yield SourceError(ref, f"cannot read file: {_os_reason(e)}")


def _bounded_lines(f: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line, size) per line; line is None when it is over max_bytes.

    An oversized line is skipped in 1 MiB reads, so it is never held in memory whole.
    """
    lineno = 0
    while line := f.readline(max_bytes + 1):
        lineno += 1
        if line.endswith(b"\n") or len(line) <= max_bytes:
            yield lineno, line, len(line)
            continue
        size = len(line)
        while not line.endswith(b"\n") and (line := f.readline(MB)):
            size += len(line)
        yield lineno, None, size


def _parse_json_line(line: bytes) -> Any:
    if b"\x00" in line:
        raise ExtractError(BINARY_REASON)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExtractError(utf8_error(line, e, with_line=False)) from None
    return _parse_json(text.removeprefix("\ufeff"))


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"column {e.colno}" if e.lineno == 1 else f"line {e.lineno}, column {e.colno}"
        raise ExtractError(f"not valid JSON: {e.msg} ({where})") from None
    except (ValueError, RecursionError) as e:  # e.g. a 10,000-digit number, deep nesting
        raise ExtractError(f"not valid JSON: {one_line(e)}") from None


def _open_parquet(path: Path) -> pq.ParquetFile:
    """An open Parquet file whose columns can make documents, or ExtractError."""
    try:
        # pre_buffer would read ahead the column chunks of every row group: the whole file.
        pf = pq.ParquetFile(path, pre_buffer=False)
    except (OSError, pa.ArrowException) as e:
        raise ExtractError(f"not a readable Parquet file: {one_line(e)}") from None
    schema = pf.schema_arrow
    problem = None
    if "text" not in schema.names:
        problem = f"no `text` column (columns: {', '.join(schema.names)})"
    elif not {"id", "_id"} & set(schema.names):
        problem = f"no `id` or `_id` column (columns: {', '.join(schema.names)})"
    else:
        text_type = schema.field("text").type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            problem = f"column `text` holds {text_type}, not strings"
    if problem:
        pf.close()
        raise ExtractError(problem)
    return pf


def _parquet_rows(path: Path, ref: str, id_prefix: str, max_bytes: int) -> Iterator[SourceItem]:
    """Rows in record batches of PARQUET_BATCH_ROWS; the table is never loaded whole."""
    try:
        pf = _open_parquet(path)
    except ExtractError as e:
        yield SourceError(ref, str(e))
        return
    index = 0  # 0-based row number, as pyarrow and pandas count
    with pf:
        try:
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
                for row in batch.to_pylist():
                    yield _row_item(row, f"{ref}:row {index}", id_prefix, max_bytes)
                    index += 1
        except (OSError, pa.ArrowException) as e:
            yield SourceError(ref, f"stopped reading at row {index}: {one_line(e)}")


# --- Rows (JSONL lines, JSON objects, Parquet rows) -----------------------------------------


def _row_item(
    row: Any, ref: str, id_prefix: str, max_bytes: int, fallback_id: str | None = None
) -> SourceItem:
    try:
        return _row_document(row, id_prefix, max_bytes, fallback_id)
    except ExtractError as e:
        return SourceError(ref, str(e))


def _row_document(
    row: Any, id_prefix: str, max_bytes: int, fallback_id: str | None
) -> SourceDocument:
    """A row {id|_id, text, title?, metadata?, ...}; other fields go into metadata."""
    if not isinstance(row, dict):
        raise ExtractError(f"not a JSON object (got {_json_type(row)})")
    doc_id = _row_id(row)
    if doc_id is not None:
        external_id = id_prefix + doc_id
    elif fallback_id is not None:
        external_id = fallback_id
    else:
        raise ExtractError("no `id` or `_id` field")
    text = row.get("text")
    if text is None:
        raise ExtractError("`text` is null" if "text" in row else "no `text` field")
    if not isinstance(text, str):
        raise ExtractError(f"`text` must be a string, not {_json_type(text)}")
    text = normalise_text(text)
    check_text(text, max_bytes)
    return SourceDocument(external_id, text, _row_title(row.get("title")), _row_metadata(row))


def _row_id(row: dict[str, Any]) -> str | None:
    value = row.get("id")
    if value is None:
        value = row.get("_id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ExtractError(f"`id` must be a string or an integer, not {_json_type(value)}")
    doc_id = str(value)
    if not doc_id.strip():
        raise ExtractError("`id` is empty")
    if "\x00" in doc_id:
        raise ExtractError("`id` contains NUL characters")
    return doc_id


def _row_title(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ExtractError(f"`title` must be a string, not {_json_type(value)}")
    return value.replace("\x00", "").strip() or None


def _row_metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("metadata")
    if isinstance(meta, str):  # Parquet dumps often hold metadata as a JSON string
        try:
            meta = json.loads(meta)
        except ValueError:
            raise ExtractError("`metadata` is a string but not valid JSON") from None
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise ExtractError(f"`metadata` must be an object, not {_json_type(meta)}")
    extras = {k: v for k, v in row.items() if k not in ROW_FIELDS}
    merged: dict[str, Any] = _jsonb_safe({**extras, **meta})
    return merged


def _jsonb_safe(value: Any) -> Any:
    """A value PostgreSQL's jsonb accepts: no NaN/Infinity, no NULs, only JSON types."""
    if isinstance(value, dict):
        return {_jsonb_safe(str(k)): _jsonb_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonb_safe(v) for v in value]
    if isinstance(value, str):
        if "\x00" in value:
            raise ExtractError("metadata contains NUL characters, which PostgreSQL cannot store")
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return _jsonb_safe(str(value))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes in a file name arrive as surrogates
        return False
    return True


def _printable(name: str) -> str:
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
