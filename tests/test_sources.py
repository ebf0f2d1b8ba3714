"""Source readers on real files: a mixed folder, bad inputs, JSONL, Parquet, estimates."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgrag.ingest.extract import BINARY_REASON, EMPTY_REASON
from pgrag.ingest.sources import (
    PARQUET_BATCH_ROWS,
    InvalidSource,
    SourceDocument,
    SourceError,
    SourceItem,
    SourceNotFound,
    count_nonempty_lines,
    open_source,
)

LIMIT = 1024 * 1024


def make_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page."""
    first_page = 4  # objects 1-3: catalog, page tree, font; then a page and its content each
    page_ids = [first_page + 2 * i for i in range(len(pages))]
    kids = " ".join(f"{n} 0 R" for n in page_ids)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for page_id, text in zip(page_ids, pages, strict=True):
        content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            f" /Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    info = ""
    if title:
        objects.append(f"<< /Title ({title}) >>".encode())
        info = f" /Info {len(objects)} 0 R"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R{info} >>\n"
    out += f"{trailer}startxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def split(items: list[SourceItem]) -> tuple[dict[str, SourceDocument], dict[str, str]]:
    docs = {i.external_id: i for i in items if isinstance(i, SourceDocument)}
    errors = {i.ref: i.reason for i in items if isinstance(i, SourceError)}
    return docs, errors


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


HTML = """<!doctype html>
<html><head><title>  Travel   Policy </title>
<style>body { color: red }</style><script>var secret = "not text";</script></head>
<body><h1>Flights</h1><p>Book   economy
 for short trips.</p><ul><li>one</li><li>two</li></ul>
<div>a<br>b</div><table><tr><td>c1</td><td>c2</td></tr></table><p>Fish &amp; chips</p>
</body></html>"""


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    write(root / "a.txt", b"\xef\xbb\xbfPlain text.\r\nSecond line.\n")
    write(root / "docs/guide.md", "Intro line\n\n# Guide Title #\n\nBody text.\n")
    write(root / "docs/notes.markdown", "No heading here.\n")
    write(root / "web/page.html", HTML)
    write(root / "report.pdf", make_pdf(["Page one text", "Page two text"], "Quarterly Report"))
    write(
        root / "data/one.json", json.dumps({"id": "x1", "text": "One.", "title": "T", "lang": "en"})
    )
    write(root / "data/noid.json", json.dumps({"text": "No id here."}))
    write(
        root / "data/list.json",
        json.dumps([{"id": 1, "text": "First."}, {"_id": "b", "text": "Second.", "title": ""}]),
    )
    write(
        root / "data/rows.jsonl",
        jsonl({"id": "r1", "text": "Row one."}, {"id": "r2", "text": "Row two.", "n": 2}),
    )
    pq.write_table(
        pa.table({"id": ["p1", "p2"], "text": ["Parquet one.", "Parquet two."]}),
        root / "data/shard.parquet",
    )
    write(root / "blob.bin", b"\x00\x01 not read")
    write(root / "README", "no extension: skipped")
    write(root / ".hidden.txt", "hidden: skipped")
    write(root / ".git/config.txt", "hidden folder: skipped")
    return root


def test_mixed_folder(mixed: Path) -> None:
    source = open_source(mixed, max_document_bytes=LIMIT)
    assert source.description == f"folder {mixed}"
    items = list(source)
    assert all(isinstance(i, SourceDocument) for i in items), items
    docs = {i.external_id: i for i in items if isinstance(i, SourceDocument)}
    assert list(docs) == [
        "a.txt",
        "data/list.json#1",
        "data/list.json#b",
        "data/noid.json",
        "data/one.json#x1",
        "data/rows.jsonl#r1",
        "data/rows.jsonl#r2",
        "data/shard.parquet#p1",
        "data/shard.parquet#p2",
        "docs/guide.md",
        "docs/notes.markdown",
        "report.pdf",
        "web/page.html",
    ]
    expected = {
        "a.txt": ("a", "Plain text.\nSecond line.\n", {"path": "a.txt", "type": "text"}),
        "data/list.json#1": (None, "First.", {}),
        "data/list.json#b": (None, "Second.", {}),
        "data/noid.json": (None, "No id here.", {}),
        "data/one.json#x1": ("T", "One.", {"lang": "en"}),
        "data/rows.jsonl#r1": (None, "Row one.", {}),
        "data/rows.jsonl#r2": (None, "Row two.", {"n": 2}),
        "data/shard.parquet#p1": (None, "Parquet one.", {}),
        "data/shard.parquet#p2": (None, "Parquet two.", {}),
        "docs/guide.md": (
            "Guide Title",
            "Intro line\n\n# Guide Title #\n\nBody text.\n",
            {"path": "docs/guide.md", "type": "markdown"},
        ),
        "docs/notes.markdown": (
            "notes",
            "No heading here.\n",
            {"path": "docs/notes.markdown", "type": "markdown"},
        ),
        "report.pdf": (
            "Quarterly Report",
            "Page one text\n\nPage two text",
            {"path": "report.pdf", "type": "pdf"},
        ),
        "web/page.html": (
            "Travel Policy",
            "Flights\n\nBook economy for short trips.\n\none\ntwo\n\na\nb\n\nc1 c2\n\nFish & chips",
            {"path": "web/page.html", "type": "html"},
        ),
    }
    assert {k: (d.title, d.text, d.metadata) for k, d in docs.items()} == expected
    # One per file, the lines of .jsonl and the rows of .parquet; a .json list counts as one.
    assert source.estimate_total() == 12


def test_bad_inputs_are_errors_and_the_rest_goes_on(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write(root / "good.txt", "A good document.")
    write(root / "bad-utf8.txt", b"line one\ncaf\xe9 au lait")
    write(root / "binary.txt", b"\x00\x01\x02 garbage \x00")
    write(root / "empty.md", "   \n")
    write(root / "utf16.txt", "hi".encode("utf-16"))
    write(root / "corrupt.pdf", b"%PDF-1.4 this is not really a pdf")
    write(root / "scanned.pdf", make_pdf([""]))
    write(root / "huge.txt", "x" * 3000)
    write(root / "huge.json", json.dumps({"text": "y" * 3000}))
    write(root / "broken.json", '{"text": ')
    lines = [
        '{"id": "ok1", "text": "First good row."}',
        "{not json",
        '{"id": "no-text"}',
        '{"text": "no id"}',
        '{"id": "null-text", "text": null}',
        '{"id": 7, "text": 42}',
        '["an", "array"]',
        '{"id": "nul", "text": "a\\u0000b"}',
        '{"id": "meta", "text": "x", "metadata": [1]}',
        "",
        '{"id": "big", "text": "' + "z" * 3000 + '"}',
        '{"id": "blank", "text": " \\n "}',
        '{"id": "ok2", "text": "Last good row."}',
    ]
    rows = "\n".join(lines).encode() + b'\n{"id": "bad", "text": "caf\xe9"}\n'
    write(root / "rows.jsonl", rows)

    outside = write(tmp_path / "secret.txt", "top secret outside the source")
    write(tmp_path / "secret-dir/inner.md", "# Also secret\n\ntop secret folder")
    (root / "link.txt").symlink_to(outside)
    (root / "linkdir").symlink_to(tmp_path / "secret-dir")
    (root / "inside-link.txt").symlink_to(root / "good.txt")
    (root / "loop").symlink_to(root)  # a symlink back up the tree is not followed
    (root / "dangling.md").symlink_to(root / "missing.md")

    source = open_source(root, max_document_bytes=2000)
    items = list(source)
    docs, errors = split(items)

    assert list(docs) == ["good.txt", "inside-link.txt", "rows.jsonl#ok1", "rows.jsonl#ok2"]
    assert docs["inside-link.txt"].text == "A good document."
    assert docs["rows.jsonl#ok2"].text == "Last good row."
    too_big = "document is 2.9 KB, over the 2 KB limit (PGRAG_MAX_DOCUMENT_MB)"
    assert errors == {
        "bad-utf8.txt": "not valid UTF-8 (byte 0xe9 at offset 12, line 2)",
        "binary.txt": BINARY_REASON,
        "broken.json": "not valid JSON: Expecting value (column 10)",
        "corrupt.pdf": "not a readable PDF: Stream has ended unexpectedly",
        "dangling.md": "broken symlink: its target does not exist",
        "empty.md": EMPTY_REASON,
        "huge.json": "JSON file is 2.9 KB, over the 2 KB limit (PGRAG_MAX_DOCUMENT_MB)",
        "huge.txt": too_big,
        "link.txt": "symlink leads outside the source folder",
        "linkdir": "symlink leads outside the source folder",
        "rows.jsonl:2": "not valid JSON: Expecting property name enclosed in double quotes"
        " (column 2)",
        "rows.jsonl:3": "no `text` field",
        "rows.jsonl:4": "no `id` or `_id` field",
        "rows.jsonl:5": "`text` is null",
        "rows.jsonl:6": "`text` must be a string, not a number",
        "rows.jsonl:7": "not a JSON object (got an array)",
        "rows.jsonl:8": "contains NUL characters (\\u0000), which PostgreSQL cannot store",
        "rows.jsonl:9": "`metadata` must be an object, not an array",
        "rows.jsonl:11": "document is 3 KB, over the 2 KB limit (PGRAG_MAX_DOCUMENT_MB)",
        "rows.jsonl:12": EMPTY_REASON,
        "rows.jsonl:14": "not valid UTF-8 (byte 0xe9 at offset 26)",
        "scanned.pdf": "PDF has no extractable text (scanned pages would need OCR)",
        "utf16.txt": "UTF-16 text is not supported: convert the file to UTF-8",
    }
    assert not any("secret" in d.text for d in docs.values())


NOBODY = 65534


def read_unprivileged(root: Path) -> tuple[list[str], dict[str, str]]:
    """Document ids and errors of `open_source(root)`, read without root's privilege to read
    any file: in a forked child that becomes user nobody when the tests run as root."""
    if os.geteuid() != 0:
        docs, errors = split(list(open_source(root, max_document_bytes=LIMIT)))
        return list(docs), errors
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root, read, report, exit without running any cleanup
        status = 1
        try:
            os.close(reader)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            docs, errors = split(list(open_source(root, max_document_bytes=LIMIT)))
            os.write(writer, json.dumps([list(docs), errors]).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        ready, _, _ = select.select([pipe], [], [], 60)
        report = pipe.read() if ready else ""
    if not ready:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert report and os.waitstatus_to_exitcode(status) == 0, "the unprivileged reader failed"
    ids, errors = json.loads(report)
    return ids, errors


def test_unreadable_file_is_an_error() -> None:
    # A folder of its own that user nobody may enter (pytest's tmp_path is root's alone).
    root = Path(tempfile.mkdtemp(prefix="pgrag-unreadable-"))
    try:
        root.chmod(0o755)
        write(root / "ok.txt", "readable").chmod(0o644)
        write(root / "locked.txt", "cannot be read").chmod(0)
        ids, errors = read_unprivileged(root)
    finally:
        shutil.rmtree(root)
    assert ids == ["ok.txt"]
    assert errors == {"locked.txt": "cannot read file: permission denied"}


def test_jsonl_file_beir_rows(tmp_path: Path) -> None:
    path = tmp_path / "corpus.jsonl"
    rows = jsonl(
        {"_id": "d1", "title": "Doc one", "text": "Line a\r\nLine b", "metadata": {"url": "u1"}},
        {"id": 42, "text": "Int id.", "source": "web", "metadata": {"source": "override"}},
        {"id": "m", "text": "Meta as a JSON string.", "metadata": '{"k": 1}'},
    )
    write(path, b"\xef\xbb\xbf" + rows.encode() + b"\n   \n")
    source = open_source(path, max_document_bytes=LIMIT)
    assert source.description == f"JSONL {path}"
    assert source.estimate_total() == 4  # non-empty lines, the whitespace-only one included
    assert list(source) == [
        SourceDocument("d1", "Line a\nLine b", "Doc one", {"url": "u1"}),
        SourceDocument("42", "Int id.", None, {"source": "override"}),
        SourceDocument("m", "Meta as a JSON string.", None, {"k": 1}),
    ]


def test_parquet_streams_record_batches(tmp_path: Path) -> None:
    path = tmp_path / "corpus.parquet"
    rows = PARQUET_BATCH_ROWS
    schema = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for b in range(3):  # one row group, so one record batch, per write
            ids = [f"b{b}-{i}" for i in range(rows)]
            texts: list[str | None] = [f"Text of {i}." for i in ids]
            if b == 1:
                texts[5] = None  # one bad row in the middle
            writer.write_table(pa.table({"_id": ids, "title": ["t"] * rows, "text": texts}, schema))
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_row_groups == 3

    source = open_source(path, max_document_bytes=LIMIT)
    assert source.description == f"Parquet {path}"
    assert source.estimate_total() == 3 * rows
    docs, errors = split(list(source))
    assert len(docs) == 3 * rows - 1
    assert docs["b2-7"] == SourceDocument("b2-7", "Text of b2-7.", "t", {})
    assert list(docs)[-1] == f"b2-{rows - 1}"
    assert errors == {f"corpus.parquet:row {rows + 5}": "`text` is null"}

    # Wreck the third batch's `text` pages: a reader that loaded the whole table would yield
    # nothing; a streaming one yields the first two batches, then says where it stopped.
    column = metadata.row_group(2).column(2)
    with path.open("r+b") as f:
        f.seek(column.dictionary_page_offset or column.data_page_offset)
        f.write(b"\xff" * column.total_compressed_size)
    items = list(open_source(path, max_document_bytes=LIMIT))
    docs, errors = split(items)
    assert len(docs) == 2 * rows - 1
    assert list(docs)[-1] == f"b1-{rows - 1}"
    last = items[-1]
    assert isinstance(last, SourceError)
    assert last.ref == "corpus.parquet"
    assert last.reason.startswith(f"stopped reading at row {2 * rows}: ")


def test_parquet_without_text_column_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "nope.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"]}), path)
    with pytest.raises(InvalidSource, match=r"no `text` column \(columns: id, body\)"):
        open_source(path, max_document_bytes=LIMIT)
    # Inside a folder the same file is one error, and the folder goes on.
    write(tmp_path / "ok.md", "# Fine\n\nfine")
    docs, errors = split(list(open_source(tmp_path, max_document_bytes=LIMIT)))
    assert list(docs) == ["ok.md"]
    assert errors == {"nope.parquet": "no `text` column (columns: id, body)"}


def test_open_source_rejects_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFound, match="does not exist"):
        open_source(tmp_path / "missing", max_document_bytes=LIMIT)
    bin_file = write(tmp_path / "data.bin", b"\x00")
    with pytest.raises(SourceNotFound, match=r"unsupported file type \.bin"):
        open_source(bin_file, max_document_bytes=LIMIT)
    empty = tmp_path / "empty"
    empty.mkdir()
    source = open_source(empty, max_document_bytes=LIMIT)
    assert list(source) == []
    assert source.estimate_total() == 0


def test_single_files_and_estimates(tmp_path: Path) -> None:
    md = write(tmp_path / "note.md", "# Note\n\nSome words.")
    source = open_source(md, max_document_bytes=LIMIT)
    assert source.description == f"Markdown {md}"
    assert source.estimate_total() == 1
    assert list(source) == [
        SourceDocument(
            "note.md", "# Note\n\nSome words.", "Note", {"path": "note.md", "type": "markdown"}
        )
    ]

    listing = write(tmp_path / "rows.json", json.dumps([{"id": "a", "text": "A."}, {"x": 1}]))
    source = open_source(listing, max_document_bytes=LIMIT)
    assert source.estimate_total() is None  # a .json file must be parsed to count its rows
    docs, errors = split(list(source))
    assert list(docs) == ["a"]
    assert errors == {"rows.json[1]": "no `id` or `_id` field"}

    lines = write(tmp_path / "c.jsonl", '{"id": 1, "text": "a"}\n\n\n{"id": 2, "text": "b"}')
    assert open_source(lines, max_document_bytes=LIMIT).estimate_total() == 2


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1 << 20])
def test_count_nonempty_lines_across_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    cases = {"": 0, "\n\n": 0, "a": 1, "a\n": 1, "\na\n\n\nbb\nc": 3, "a\nb\n\n\n\n": 2}
    for i, (text, expected) in enumerate(cases.items()):
        path = write(tmp_path / f"{i}.jsonl", text)
        assert count_nonempty_lines(path, chunk_size) == expected, text
