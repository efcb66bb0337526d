"""Pictures and files sent with a question, and who asked: turned into one model input item.

Adapters only describe what arrived (an `Attachment`: name, type, size, how to download it) and
who wrote it; this module decides what the model reads, the same way for every platform:

* images go as image input (Responses `input_image`; the Agents SDK turns that into Chat
  Completions `image_url`), at most `[limits] max_images` of at most `max_image_bytes` each;
* text-like files (txt, md, code, csv, json, log, a long paste's `message.txt`) and PDFs (text
  extracted with pypdf) go as text, cut at `max_file_chars` with a note;
* anything else is named in a short note for the person, never a traceback.

Memory keeps a "[image: name]" marker in place of each picture (see core/memory.py): the
picture is downloaded once, for the turn that carries it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import mimetypes
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

log = logging.getLogger("streambot.attachments")

Fetch = Callable[[int], Awaitable[bytes]]  # download at most that many bytes, else TooLarge
Kind = Literal["image", "pdf", "text", "other"]

IMAGE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}  # what vision models take
TEXT_TYPES = {
    "application/json",
    "application/xml",
    "application/x-yaml",
    "application/yaml",
    "application/javascript",
    "application/x-sh",
    "application/sql",
    "application/toml",
    "application/x-ndjson",
}
TEXT_SUFFIXES = {
    "txt", "md", "markdown", "rst", "csv", "tsv", "json", "jsonl", "ndjson", "log", "yaml", "yml",
    "toml", "ini", "cfg", "conf", "xml", "html", "htm", "css", "sql", "sh", "bash", "zsh", "ps1",
    "py", "pyi", "js", "mjs", "ts", "tsx", "jsx", "java", "kt", "scala", "go", "rs", "c", "h", "cc",
    "cpp", "hpp", "cs", "rb", "php", "swift", "m", "r", "lua", "pl", "dart", "ex", "exs", "erl",
    "hs", "clj", "vue", "svelte", "diff", "patch", "env", "dockerfile", "makefile", "tf", "proto",
    "graphql", "tex", "srt", "vtt",
}  # fmt: skip
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF8", "image/gif"))
UNCAPPED = 1 << 40  # a byte cap of 0 turns it off
DOWNLOAD_TIMEOUT = 30.0  # seconds for one attachment, connection included
NO_TEXT = "(sent without a message)"


class TooLarge(Exception):
    """The download would pass its size cap."""


class FetchError(Exception):
    """The download failed; the message is short and safe to show."""


@dataclass(frozen=True)
class Attachment:
    """One file attached to a question, as the platform described it."""

    name: str
    content_type: str = ""  # MIME type as the platform reports it; "" when unknown
    size: int = 0  # bytes as the platform reports it; 0 when unknown
    fetch: Fetch | None = field(default=None, compare=False, repr=False)
    data: bytes | None = field(default=None, repr=False)  # already in hand (the console, tests)

    @property
    def kind(self) -> Kind:
        ctype = self.content_type.split(";")[0].strip().lower()
        if not ctype or ctype == "application/octet-stream":
            ctype = (mimetypes.guess_type(self.name)[0] or "").lower()
        suffix = self.name.rsplit(".", 1)[-1].lower() if "." in self.name else ""
        if ctype.startswith("image/"):
            return "image" if ctype in IMAGE_TYPES else "other"  # svg, tiff, heic: no model takes them
        if ctype == "application/pdf" or suffix == "pdf":
            return "pdf"
        if ctype.startswith("text/") or ctype in TEXT_TYPES or suffix in TEXT_SUFFIXES:
            return "text"
        return "other"

    async def read(self, limit: int) -> bytes:
        """Its bytes, at most `limit` of them (TooLarge past that)."""
        if self.size and self.size > limit:
            raise TooLarge
        if self.data is not None:
            if len(self.data) > limit:
                raise TooLarge
            return self.data
        if self.fetch is None:
            raise FetchError("no way to download it")
        return await self.fetch(limit)


@dataclass(frozen=True)
class Turn:
    """One human turn as the model should read it: who wrote it, what, and what came with it."""

    text: str
    author: str = ""  # a display name, in channels and shared threads ("" in a DM)
    attachments: tuple[Attachment, ...] = ()
    context: tuple[tuple[str, str], ...] = ()  # (author, text) of earlier messages not yet seen


@dataclass(frozen=True)
class FileLimits:
    """The `[limits]` that bound what one question may bring (0 turns one off)."""

    max_images: int = 4
    max_image_bytes: int = 8 << 20
    max_files: int = 5
    max_file_bytes: int = 10 << 20
    max_file_chars: int = 20_000


@dataclass
class Prepared:
    """A turn ready for the model: its text, its images and notes for the person."""

    text: str
    images: list[tuple[str, str]] = field(default_factory=list)  # (name, data: URL)
    notes: list[str] = field(default_factory=list)

    def item(self, with_images: bool = True) -> dict[str, Any]:
        """The user message item (Responses input format). Plain text stays a string, which
        every OpenAI-compatible server takes; images make it a list of parts."""
        if not (with_images and self.images):
            markers = "".join(f"\n[image: {name}]" for name, _ in self.images)
            return {"role": "user", "content": self.text + markers}
        parts: list[dict[str, Any]] = [{"type": "input_text", "text": self.text}]
        for name, url in self.images:
            parts.append({"type": "input_text", "text": f"[image: {name}]"})
            parts.append({"type": "input_image", "image_url": url, "detail": "auto"})
        return {"role": "user", "content": parts}


async def prepare(turn: Turn, limits: FileLimits) -> Prepared:
    """Download and read `turn`'s attachments within `limits`, all at once. Never raises for
    a bad file: each one that cannot be used becomes a note."""
    sections: list[str] = []
    if turn.context:
        earlier = "\n".join(f"{who}: {text}" if who else text for who, text in turn.context)
        sections.append(f"Earlier messages in this thread:\n{earlier}")
    question = turn.text.strip() or (NO_TEXT if turn.attachments else "")
    sections.append(f"{turn.author}: {question}" if turn.author else question)
    counts = {"image": 0, "file": 0}
    caps = {"image": (limits.max_images, "pictures"), "file": (limits.max_files, "files")}
    jobs = []
    for att in turn.attachments:
        kind, name = att.kind, _safe_name(att.name)
        if kind == "other":
            jobs.append(_skip(f"{name}: not a picture or a text file I can read, so I left it out"))
            continue
        slot = "image" if kind == "image" else "file"
        cap = limits.max_image_bytes if slot == "image" else limits.max_file_bytes
        if cap and att.size > cap:  # known too large: no download, and it takes no one's place
            jobs.append(_skip(f"{name}: larger than {_size(cap)}, so I left it out"))
            continue
        most, what = caps[slot]
        if most and counts[slot] >= most:
            jobs.append(_skip(f"{name}: skipped, at most {most} {what} per question"))
            continue
        counts[slot] += 1
        jobs.append(_use(att, kind, name, limits))
    out = Prepared("")
    for notes, image, section in await asyncio.gather(*jobs):
        out.notes += notes
        if image:
            out.images.append(image)
        if section:
            sections.append(section)
    out.text = "\n\n".join(s for s in sections if s)
    return out


Used = tuple[list[str], tuple[str, str] | None, str | None]  # notes, (name, data: URL), text section


async def _skip(note: str) -> Used:
    return [note], None, None


async def _use(att: Attachment, kind: Kind, name: str, limits: FileLimits) -> Used:
    """One attachment read for the model: a picture, a text section, or notes saying why not."""
    notes: list[str] = []
    cap = limits.max_image_bytes if kind == "image" else limits.max_file_bytes
    data = await _read(att, cap, name, notes)
    if data is None:
        return notes, None, None
    if kind == "image":
        return notes, (name, f"data:{_image_type(att, data)};base64,{base64.b64encode(data).decode()}"), None
    # pypdf is pure Python: a big PDF must not stall every other reply's stream
    text = await asyncio.to_thread(_pdf_text, data) if kind == "pdf" else _decode(data)
    if text is None:
        what = "a PDF I could not read text from" if kind == "pdf" else "not readable as text"
        return [*notes, f"{name}: {what}, so I left it out"], None, None
    header = f"[file: {name}]"
    if limits.max_file_chars and len(text) > limits.max_file_chars:
        header = f"[file: {name}, the first {limits.max_file_chars:,} of {len(text):,} characters]"
        notes.append(
            f"{name} is long: I read the first {limits.max_file_chars:,} of its {len(text):,} characters"
        )
        text = text[: limits.max_file_chars]
    return notes, None, f"{header}\n{text}"


async def _read(att: Attachment, limit: int, name: str, notes: list[str]) -> bytes | None:
    try:
        return await att.read(limit or UNCAPPED)
    except TooLarge:
        notes.append(f"{name}: larger than {_size(limit)}, so I left it out")
    except FetchError as exc:
        notes.append(f"{name}: could not download it ({exc})")
    except Exception as exc:  # a platform's surprise must cost this file only, not the answer
        log.warning("could not download attachment %s: %s: %s", name, type(exc).__name__, exc)
        notes.append(f"{name}: could not download it")
    return None


def _image_type(att: Attachment, data: bytes) -> str:
    """The picture's real type, from its first bytes (platforms sometimes report another)."""
    for magic, ctype in MAGIC:
        if data.startswith(magic):
            return ctype
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return att.content_type.split(";")[0].strip() or mimetypes.guess_type(att.name)[0] or "image/png"


def _decode(data: bytes) -> str | None:
    """UTF-8 (with or without a BOM) text, or None for binary content."""
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def _pdf_text(data: bytes) -> str | None:
    """The text of a PDF's pages, or None when it has none or is not a PDF pypdf can open."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        log.info("could not read a PDF: %s: %s", type(exc).__name__, exc)
        return None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    return text or None


def _safe_name(name: str) -> str:
    """A file name fit for a note: one line, no Markdown or mention tricks, not too long."""
    cleaned = "".join(ch for ch in name if ch.isprintable() and ch not in "`*_~<>@|[]")
    cleaned = " ".join(cleaned.split())[:80]
    return cleaned or "a file"


def _size(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.3g} MB"
    return f"{n / 1024:.3g} KB" if n >= 1024 else f"{n} bytes"


def notes_text(notes: list[str]) -> str:
    """The notes as the first lines of the answer, in italics."""
    return "".join(f"_{note}_\n" for note in notes) + "\n" if notes else ""


def local_file(path: str | Path) -> Attachment:
    """A file on this machine as an attachment (`streambot ask --file`); FileNotFoundError
    or IsADirectoryError when it is not a readable file, before anything is asked."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = p.stat().st_size

    async def fetch(limit: int) -> bytes:
        def read() -> bytes:
            with p.open("rb") as f:
                data = f.read(limit + 1)
            if len(data) > limit:
                raise TooLarge
            return data

        try:
            return await asyncio.to_thread(read)
        except OSError as exc:
            raise FetchError(exc.strerror or type(exc).__name__) from None

    return Attachment(p.name, mimetypes.guess_type(p.name)[0] or "", size, fetch)


def http_fetch(
    url: str,
    headers: dict[str, str] | None = None,
    timeout: float = DOWNLOAD_TIMEOUT,
    reject_html: bool = False,
) -> Fetch:
    """A `Fetch` that GETs `url` with aiohttp, reading no more than the cap it is given. With
    `reject_html`, a web page instead of the file (a sign-in page: the token lacks a scope)
    is an error, not a file."""

    async def fetch(limit: int) -> bytes:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
                session.get(url, headers=headers or {}, allow_redirects=True) as resp,
            ):
                if resp.status != 200:
                    raise FetchError(f"HTTP {resp.status}")
                if reject_html and resp.content_type == "text/html":
                    raise FetchError("got a sign-in page instead: the app may lack a permission")
                if resp.content_length is not None and resp.content_length > limit:
                    raise TooLarge
                data = bytearray()
                async for chunk in resp.content.iter_chunked(64 << 10):
                    data += chunk
                    if len(data) > limit:
                        raise TooLarge
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(type(exc).__name__) from None

    return fetch
