"""File bytes -> text for one file: UTF-8 checks, Markdown titles, HTML stripping, PDF text.

Everything here is a plain function of bytes or text. A file that cannot become a document
raises `ExtractError`, whose message is the reason shown to the user.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from html.parser import HTMLParser

from pypdf import PdfReader

MB = 1024 * 1024  # sizes and PGRAG_MAX_DOCUMENT_MB count in units of 2**20 bytes

# File suffix -> document type, for files that hold one document each.
TEXT_TYPES: dict[str, str] = {
    ".txt": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}

BINARY_REASON = "contains NUL bytes: looks like a binary file"
EMPTY_REASON = "empty document"


class ExtractError(ValueError):
    """A file or row that cannot become a document; str(error) is the reason."""


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None = None


def extract(data: bytes, file_type: str) -> Extracted:
    """The text (and title, if the file names one) of a file of type `file_type`."""
    if file_type == "pdf":
        doc = pdf_to_text(data)
    else:
        text = decode_text(data)
        if file_type == "html":
            doc = html_to_text(text)
        elif file_type == "markdown":
            doc = Extracted(text, markdown_title(text))
        else:
            doc = Extracted(text)
    check_text(doc.text)
    return doc


def decode_text(data: bytes) -> str:
    """Strict UTF-8 decoding, with CRLF turned into LF and a leading BOM removed."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractError("UTF-16 text is not supported: convert the file to UTF-8")
    if b"\x00" in data:
        raise ExtractError(BINARY_REASON)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExtractError(utf8_error(data, e)) from None
    return normalise_text(text)


def normalise_text(text: str) -> str:
    """The only change made to document text: no BOM, LF line ends."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def utf8_error(data: bytes, error: UnicodeDecodeError, *, with_line: bool = True) -> str:
    """Where decoding failed, e.g. "not valid UTF-8 (byte 0xff at offset 12, line 2)"."""
    where = f"byte 0x{data[error.start]:02x} at offset {error.start}"
    if with_line:
        line = data.count(b"\n", 0, error.start) + 1
        where += f", line {line}"
    return f"not valid UTF-8 ({where})"


def check_text(text: str, max_bytes: int | None = None) -> None:
    """Reject text that PostgreSQL cannot store, that is too large, or that is blank."""
    if "\x00" in text:
        raise ExtractError("contains NUL characters (\\u0000), which PostgreSQL cannot store")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        char = f"U+{ord(text[e.start]):04X}"
        raise ExtractError(
            f"contains an unpaired surrogate ({char}) at character {e.start}: not valid Unicode"
        ) from None
    if max_bytes is not None and size > max_bytes:
        raise ExtractError(too_large(size, max_bytes))
    if not text.strip():
        raise ExtractError(EMPTY_REASON)


def one_line(message: object) -> str:
    """An exception message fit for an error row: printable, on one line."""
    text = "".join(c if c.isprintable() else " " for c in str(message))
    return " ".join(text.split())


def too_large(size: int, limit: int, what: str = "document") -> str:
    return (
        f"{what} is {format_size(size)}, over the {format_size(limit)} limit"
        " (PGRAG_MAX_DOCUMENT_MB)"
    )


def format_size(n: int) -> str:
    """52.4 MB, 20 MB, 1.5 KB, 120 bytes."""
    if n >= MB:
        return f"{n / MB:.1f}".removesuffix(".0") + " MB"
    if n >= 1024:
        return f"{n / 1024:.1f}".removesuffix(".0") + " KB"
    return f"{n} bytes"


def markdown_title(text: str) -> str | None:
    """The first `# ` heading outside code fences, if any."""
    in_fence = False
    for line in text.split("\n"):
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
        elif not in_fence and line.startswith("# "):
            title = line[2:].strip().rstrip("#").strip()
            if title:
                return title
    return None


# Elements that start a new paragraph (a blank line) or a new line of text.
_PARAGRAPH_TAGS = frozenset(
    {"address", "article", "aside", "blockquote", "dl", "fieldset", "figure", "footer", "form"}
    | {"h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "main", "nav", "ol", "p", "pre"}
    | {"section", "table", "ul"}
)
_LINE_TAGS = frozenset({"caption", "dd", "div", "dt", "figcaption", "li", "tr"})
_CELL_TAGS = frozenset({"td", "th"})
_DROPPED_TAGS = frozenset({"script", "style", "noscript", "template"})
_SPACES = re.compile(r"\s+")


class _HTMLText(HTMLParser):
    """Collects visible text: whitespace collapsed as a browser would, blocks on new lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title_parts: list[str] = []
        self._newlines = 1  # newlines at the end of `parts`; the start counts as a line start
        self._dropped = 0  # depth inside script/style
        self._pre = 0  # depth inside <pre>, where whitespace is kept
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _DROPPED_TAGS:
            self._dropped += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "br":
            self._emit("\n")
        elif tag in _CELL_TAGS and not self._newlines:
            self._emit(" ")
        self._block_break(tag)
        if tag == "pre":
            self._pre += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _DROPPED_TAGS:
            self._dropped = max(0, self._dropped - 1)
        elif tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)
        self._block_break(tag)

    def handle_data(self, data: str) -> None:
        if self._dropped:
            return
        if self._in_title:
            self.title_parts.append(data)
            return
        if not self._pre:
            data = _SPACES.sub(" ", data)
            if self._newlines:
                data = data.lstrip(" ")
        self._emit(data)

    def _block_break(self, tag: str) -> None:
        wanted = 2 if tag in _PARAGRAPH_TAGS else 1 if tag in _LINE_TAGS else 0
        if wanted > self._newlines:
            self._emit("\n" * (wanted - self._newlines))

    def _emit(self, text: str) -> None:
        if not text:
            return
        if text.startswith("\n") and self.parts:
            self.parts[-1] = self.parts[-1].rstrip(" ")  # no trailing spaces before a break
        self.parts.append(text)
        body = text.rstrip("\n")
        trailing = len(text) - len(body)
        self._newlines = trailing if body else self._newlines + trailing


def html_to_text(html: str) -> Extracted:
    """Visible text of an HTML page; <title> becomes the title, script/style are dropped."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    title = _SPACES.sub(" ", "".join(parser.title_parts)).strip()
    return Extracted("".join(parser.parts).strip("\n"), title or None)


def pdf_to_text(data: bytes) -> Extracted:
    """Text of all pages, and the title from the PDF's metadata if it has one."""
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractError("PDF is encrypted with a password")
        pages = [page.extract_text() or "" for page in reader.pages]
        info = reader.metadata
        title = str(info.title or "").strip() if info is not None else ""
    except ExtractError:
        raise
    except Exception as e:  # pypdf raises many exception types on damaged files
        raise ExtractError(f"not a readable PDF: {one_line(e) or type(e).__name__}") from None
    text = normalise_text("\n\n".join(page.strip("\n") for page in pages))
    # Extraction can produce NULs and lone surrogates; they are artefacts, not content.
    text = text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if not text.strip():
        raise ExtractError("PDF has no extractable text (scanned pages would need OCR)")
    return Extracted(text, title.replace("\x00", "") or None)
