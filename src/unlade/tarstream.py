"""Sequential reader of tar streams, as layers are: one pass, never seeking, never buffering
more than one read.

``tarfile`` could parse headers, but layer application needs things it does not give: the
exact end-of-stream rules containerd (Go's archive/tar) applies, errors that name the entry,
and file data handed out as large memoryviews so the applier can ``os.write`` them straight
to disk. The format handled is what Go's reader handles: ustar, GNU (long names ``L``/``K``,
base-256 numbers) and PAX (``x`` records; ``g`` global headers are reported and ignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .errors import LayerLimitExceeded, MalformedLayer, TruncatedLayer

if TYPE_CHECKING:
    from .limits import Limits

BLOCK = 512
READ_SIZE = 1 << 18
MAX_SPECIAL = 1 << 20  # PAX records and GNU long names, as Go's archive/tar limits them

REG, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO = "0", "1", "2", "3", "4", "5", "6"
GLOBAL = "g"
_HEADER_ONLY = frozenset((HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO))
_KNOWN = frozenset((REG, HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIR, FIFO, GLOBAL))


@dataclass(slots=True)
class Entry:
    """One tar member after long-name and PAX records were folded in."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    atime_ns: int | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)


def shown(name: str) -> str:
    """An entry name for an error message: quoted, and shortened if absurdly long."""
    text = repr(name)
    return text if len(text) <= 160 else f"{text[:100]}…{text[-50:]}"


def _decode(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(raw: bytes, what: str) -> int:
    if raw and raw[0] & 0x80:  # GNU base-256: 0x80 positive, 0xff two's-complement negative
        if raw[0] == 0xFF:
            return int.from_bytes(raw, "big", signed=True)
        return int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
    text = raw.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise MalformedLayer(f"invalid {what} field {text!r} in tar header") from None


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone accepts "²"


def _decimal(text: str) -> int | None:
    """A PAX number as Go's strconv.ParseInt(text, 10, 64) takes it, None if it is none
    (or over int64: int() of over 4300 digits would raise ValueError)."""
    if not _digits(text) or len(text.lstrip("0")) > 19:
        return None
    value = int(text.lstrip("0") or "0")
    return value if value < 1 << 63 else None


def _pax_time(value: str) -> int:
    sign = -1 if value.startswith("-") else 1
    whole, _, frac = value.lstrip("+-").partition(".")
    seconds = _decimal(whole)
    if seconds is None or (frac and not _digits(frac)):
        raise MalformedLayer(f"invalid PAX time {shown(value)}")
    return sign * (seconds * 1_000_000_000 + int((frac + "000000000")[:9]))


def _pax_records(data: bytes) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        length = _decimal(data[pos:space].decode("latin-1")) if space >= 0 else None
        if length is None:
            if not data[pos:].strip(b"\0"):
                break
            raise MalformedLayer("invalid PAX record length")
        end = pos + length
        record = data[space + 1 : end]
        if end > len(data) or end <= space or not record.endswith(b"\n") or b"=" not in record:
            raise MalformedLayer("invalid PAX record")
        key, _, value = record[:-1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


class TarReader:
    """Iterate entries of a tar stream; after each entry, its data must be consumed with
    :meth:`data` (or is skipped automatically when the next entry is requested)."""

    def __init__(self, stream: BinaryIO, limits: Limits | None = None) -> None:
        from .limits import DEFAULT_LIMITS

        self._src = stream
        self._buf = memoryview(b"")
        self._remaining = 0  # unread data bytes of the current entry
        self._pad = 0
        self.entry_name = ""  # for error messages: the entry being read
        self.limits = limits or DEFAULT_LIMITS
        self.entries = 0

    # -- low-level reading -------------------------------------------------------------
    def _fill(self) -> bool:
        chunk = self._src.read(READ_SIZE)
        if not chunk:
            return False
        self._buf = memoryview(chunk)
        return True

    def _take(self, n: int) -> bytes:
        """Exactly n bytes, or fewer only at end of stream."""
        if len(self._buf) >= n:
            out = self._buf[:n].tobytes()
            self._buf = self._buf[n:]
            return out
        parts = [self._buf.tobytes()]
        have = len(parts[0])
        self._buf = memoryview(b"")
        while have < n and self._fill():
            piece = self._buf[: n - have]
            parts.append(piece.tobytes())
            have += len(piece)
            self._buf = self._buf[len(piece) :]
        return b"".join(parts)

    def _skip(self, n: int) -> int:
        """Skip n bytes; return how many were really there."""
        skipped = 0
        while skipped < n:
            if not self._buf and not self._fill():
                break
            step = min(n - skipped, len(self._buf))
            self._buf = self._buf[step:]
            skipped += step
        return skipped

    def data(self) -> Iterator[memoryview]:
        """Yield the current entry's data in large pieces, without copying."""
        while self._remaining:
            if not self._buf and not self._fill():
                raise TruncatedLayer(
                    f"entry {shown(self.entry_name)}: stream ends inside its data "
                    f"({self._remaining} bytes missing)"
                )
            piece = self._buf[: self._remaining]
            self._buf = self._buf[len(piece) :]
            self._remaining -= len(piece)
            yield piece

    def _finish_entry(self) -> bool:
        """Skip what is left of the current entry; False if the stream ended within its
        padding (umoci 0.4.7 writes such layers, and containerd accepts them)."""
        if self._remaining:
            if self._skip(self._remaining) != self._remaining:
                raise TruncatedLayer(f"entry {shown(self.entry_name)}: stream ends inside its data")
            self._remaining = 0
        if self._pad:
            pad, self._pad = self._pad, 0
            if self._skip(pad) != pad:
                return False  # as Go's reader: a short padding is the end of the archive
        return True

    # -- headers -----------------------------------------------------------------------
    def _header(self) -> bytes | None:
        block = self._take(BLOCK)
        if not block:
            return None
        if len(block) < BLOCK:
            raise TruncatedLayer(
                f"stream ends inside a tar header (after {shown(self.entry_name)})"
            )
        if not block.strip(b"\0"):
            # End-of-archive: as Go's reader, a second zero block (or nothing) must follow;
            # whatever comes after it is drained by the caller.
            second = self._take(BLOCK)
            if len(second) not in (0, BLOCK):
                raise TruncatedLayer("stream ends inside the end-of-archive marker")
            if second.strip(b"\0"):
                raise MalformedLayer(
                    f"tar header after a single zero block (after {shown(self.entry_name)})"
                )
            return None
        stored = _number(block[148:156], "checksum")
        unsigned = sum(block) - sum(block[148:156]) + 256  # the field counts as spaces
        if stored != unsigned:
            signed = unsigned - 2 * sum(b for b in block[:148] + block[156:] if b > 127)
            if stored != signed:
                raise MalformedLayer(
                    f"tar header checksum mismatch after entry {shown(self.entry_name)}"
                )
        return block

    def _special(self, size: int, what: str) -> bytes:
        if size > MAX_SPECIAL:
            raise MalformedLayer(f"{what} of {size} bytes is too large")
        data = self._take(size)
        if len(data) < size:
            raise TruncatedLayer(f"stream ends inside a {what}")
        self._skip(-size % BLOCK)
        return data

    def __iter__(self) -> Iterator[Entry]:
        return self

    def __next__(self) -> Entry:
        if not self._finish_entry():
            raise StopIteration
        pax: dict[str, bytes] = {}
        longname = longlink = None
        while True:
            block = self._header()
            if block is None:
                raise StopIteration
            typ = chr(block[156]) if block[156] else REG
            size = _number(block[124:136], "size")
            if size < 0:
                raise MalformedLayer(f"negative size in tar header after {shown(self.entry_name)}")
            if typ == "x":
                pax = _pax_records(self._special(size, "PAX header"))  # replaces, as Go
            elif typ == "L":
                longname = _decode(self._special(size, "GNU long name"))
            elif typ == "K":
                longlink = _decode(self._special(size, "GNU long link name"))
            else:
                break

        magic = block[257:265]
        name = _decode(block[0:100])
        if magic[:6] == b"ustar\0" and block[345]:
            name = _decode(block[345:500]) + "/" + name
        if longname is not None:
            name = longname
        linkname = longlink if longlink is not None else _decode(block[157:257])
        if typ == "7":
            typ = REG
        if typ == REG and block[156] == 0 and name.endswith("/"):
            typ = DIR  # pre-POSIX archives mark directories by the trailing slash
        entry = Entry(
            name=name,
            type=typ,
            mode=_number(block[100:108], "mode") & 0o7777,
            uid=_number(block[108:116], "uid"),
            gid=_number(block[116:124], "gid"),
            size=size,
            mtime_ns=_number(block[136:148], "mtime") * 1_000_000_000,
            linkname=linkname,
            devmajor=_number(block[329:337], "devmajor"),
            devminor=_number(block[337:345], "devminor"),
        )
        self._apply_pax(entry, pax)
        self.entry_name = entry.name
        self._check_limits(entry)
        if typ not in _KNOWN:
            raise MalformedLayer(f"entry {shown(entry.name)}: unsupported tar entry type {typ!r}")
        data_size = 0 if typ in _HEADER_ONLY else entry.size
        self._remaining = data_size
        self._pad = -data_size % BLOCK
        return entry

    def _check_limits(self, entry: Entry) -> None:
        limits = self.limits
        self.entries += 1
        if self.entries > limits.layer_entries:
            raise LayerLimitExceeded(limits.exceeded(
                f"more than {limits.layer_entries:,} entries", "layer_entries"))
        for what, text in (("path", entry.name), ("link target", entry.linkname)):
            if len(text) > limits.path_length // 4 and \
                    len(text.encode("utf-8", "surrogateescape")) > limits.path_length:
                raise LayerLimitExceeded(limits.exceeded(
                    f"entry {shown(entry.name)}: {what} longer than {limits.path_length} "
                    "bytes", "path_length"))
        for key, value in entry.xattrs.items():
            if len(value) > limits.xattr_size:
                raise LayerLimitExceeded(limits.exceeded(
                    f"entry {shown(entry.name)}: xattr {key} of {len(value)} bytes",
                    "xattr_size"))

    @staticmethod
    def _apply_pax(entry: Entry, pax: dict[str, bytes]) -> None:
        for key, raw in pax.items():
            if key.startswith("SCHILY.xattr."):
                entry.xattrs[key[len("SCHILY.xattr.") :]] = raw
                continue
            value = raw.decode("utf-8", "surrogateescape")
            if key == "path":
                entry.name = value
            elif key == "linkpath":
                entry.linkname = value
            elif key in ("size", "uid", "gid"):
                number = _decimal(value)
                if number is None:
                    raise MalformedLayer(f"invalid PAX {key} {shown(value)}")
                setattr(entry, key, number)
            elif key == "mtime":
                entry.mtime_ns = _pax_time(value)
            elif key == "atime":
                entry.atime_ns = _pax_time(value)
            elif key.startswith("GNU.sparse."):
                raise MalformedLayer(f"entry {shown(entry.name)}: sparse files are not supported")
