"""Resource URIs: where the policy, the signature-store config, the auth file and keys come
from, as in image-rs (confidential-containers/guest-components, ``image-rs/src/resource``).

A resource is named by one of:

* a plain path (``/etc/unlade/policy.json``, ``keys/cosign.pub``): read from the local
  filesystem, as image-rs does with anything that has no ``://``;
* ``file:///abs/path`` (``file://localhost/abs/path`` too): the same, percent-decoded as
  RFC 8089 says;
* ``kbs:///<repository>/<type>/<tag>``: fetched from a :class:`ResourceProvider`, normally
  the Confidential Data Hub's ``GetResource`` gRPC API (:class:`CdhResourceProvider`),
  which gets it from the Key Broker Service after attesting the guest.

Why the ``kbs`` URI has no host: inside a confidential guest the KBS address is the
CDH's configuration, fixed by the (attested) guest image; a host in the URI would let a
config file redirect secrets elsewhere, so ``kbs://host/...`` is refused rather than
silently ignored.

Any other scheme (``https``, ``kbs+plugin``, ...) is refused, naming it. Every failure is a
one-line :class:`~unlade.errors.ConfigError` (or the subclass the caller asks for, such as
:class:`~unlade.errors.PolicyError`) so the CLI can print it as is.

The CDH protocol (``protos/protos/confidential-data-hub/api.proto`` in guest-components)::

    package api;
    message GetResourceRequest  { string ResourcePath = 1; }
    message GetResourceResponse { bytes  Resource     = 1; }
    service GetResourceService { rpc GetResource(GetResourceRequest)
                                     returns (GetResourceResponse); }

``ResourcePath`` carries the whole ``kbs:///repo/type/tag`` URI (image-rs passes the URI
through unchanged; the CDH parses it again). The two one-field messages are encoded here by
hand, so unlade needs ``grpcio`` (the ``kbs`` extra) but no protobuf runtime or generated
code; ``grpcio`` is imported only when a ``kbs`` resource is actually fetched.
"""

from __future__ import annotations

import errno
import importlib
import os
import re
import stat
import threading
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote_to_bytes

from .errors import ConfigError

__all__ = [
    "DEFAULT_CDH_ADDRESS",
    "DEFAULT_MAX_SIZE",
    "GET_RESOURCE_METHOD",
    "GRPC_MISSING",
    "CdhResourceProvider",
    "ResourceProvider",
    "check_resource_uri",
    "grpc_target",
    "kbs_resource_uri",
    "local_path",
    "read_resource",
]

#: Resources are small documents and keys; the cap keeps a wrong path (a disk image, a
#: FIFO that never ends) or a misbehaving provider from filling memory.
DEFAULT_MAX_SIZE = 4 * 1024 * 1024

#: Where the gRPC build of the CDH listens by default (``DEFAULT_CDH_SOCKET_ADDR`` in
#: ``confidential-data-hub/hub/src/config/mod.rs``; image-rs's gRPC client uses
#: ``http://127.0.0.1:50000``). The ttrpc build's ``unix:///run/confidential-containers/
#: cdh.sock`` speaks ttrpc, not gRPC, so it cannot be the default here.
DEFAULT_CDH_ADDRESS = "127.0.0.1:50000"

#: The full gRPC method name: protobuf package ``api``, service ``GetResourceService``.
GET_RESOURCE_METHOD = "/api.GetResourceService/GetResource"

GRPC_MISSING = "kbs:// resources need grpcio (pip install 'unlade[kbs]')"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
# Characters a kbs path part may not hold: '%' (an encoded '/' or '..' would be decoded by
# the CDH, after our checks), backslashes, whitespace and controls.
_BAD_PART = re.compile(r"[%\\\s\x00-\x1f\x7f]")
# Room for the response's own framing on top of the resource (tag + up to 10 varint bytes).
_FRAMING = 64 * 1024


@runtime_checkable
class ResourceProvider(Protocol):
    """Anything that can fetch a ``kbs:///repo/type/tag`` resource.

    ``get`` receives the validated, normalised URI (what the CDH expects as
    ``ResourcePath``) and returns the resource's bytes, raising
    :class:`~unlade.errors.ConfigError` when it cannot.
    """

    def get(self, path: str) -> bytes:
        """The resource ``path`` (a ``kbs:///repo/type/tag`` URI)."""
        ...


# -- URIs ----------------------------------------------------------------------------------


def _scheme(uri: str) -> str | None:
    """The URI's scheme (lower case), or None for a plain path. Like image-rs, only
    ``scheme://`` makes a URI; ``kbs:`` and ``file:`` without ``//`` are still recognised
    so that a typo is refused instead of being read as a relative file name."""
    m = _SCHEME.match(uri)
    if m is None:
        return None
    scheme = m.group(1).lower()
    if uri[m.end():].startswith("//") or scheme in ("kbs", "file"):
        return scheme
    return None


def _unsupported(uri: str, scheme: str, error: type[ConfigError]) -> ConfigError:
    return error(f"unsupported resource URI scheme {scheme!r} in {uri!r}; use a path, "
                 "file:///abs/path or kbs:///repository/type/tag")


def kbs_resource_uri(uri: str, *, error: type[ConfigError] = ConfigError) -> str:
    """Validate ``kbs:///repository/type/tag`` and return it normalised (scheme in lower
    case), as it is sent to the provider.

    Refused: a host (``kbs://host/...``; the provider decides which KBS), other than
    exactly three non-empty parts, ``.``/``..`` parts, ``%``-escapes, a query or fragment.
    """
    if uri[:6].lower() != "kbs://":
        raise error(f"invalid kbs resource URI {uri!r}; write kbs:///repository/type/tag")
    rest = uri[6:]
    if "?" in rest or "#" in rest:
        raise error(f"invalid kbs resource URI {uri!r}: no query or fragment allowed")
    host, slash, path = rest.partition("/")
    if host:
        raise error(f"invalid kbs resource URI {uri!r}: it must not name a host "
                    f"({host!r}); the resource provider decides which KBS to ask, "
                    "so write kbs:///repository/type/tag")
    parts = path.split("/") if slash else []
    if len(parts) != 3 or not all(parts):
        raise error(f"invalid kbs resource URI {uri!r}: need exactly three non-empty "
                    "parts, kbs:///repository/type/tag")
    for part in parts:
        if part in (".", ".."):
            raise error(f"invalid kbs resource URI {uri!r}: {part!r} is not allowed")
        if _BAD_PART.search(part):
            raise error(f"invalid kbs resource URI {uri!r}: {part!r} holds '%', a "
                        "backslash, whitespace or a control character")
    return "kbs:///" + "/".join(parts)


def local_path(uri: str, *, error: type[ConfigError] = ConfigError) -> Path | None:
    """The local path a plain path or ``file://`` URI names, None for a ``kbs`` URI.

    Why it exists: a registries.d may be a directory, which only a local path can be, and
    callers that need a file name (not bytes) can tell the two kinds apart. Raises for
    malformed URIs and other schemes, exactly as :func:`read_resource` would.
    """
    if not uri:
        raise error("empty resource URI")
    scheme = _scheme(uri)
    if scheme is None:
        return Path(uri)
    if scheme == "kbs":
        kbs_resource_uri(uri, error=error)
        return None
    if scheme != "file":
        raise _unsupported(uri, scheme, error)
    if uri[:7].lower() != "file://":
        raise error(f"invalid file URI {uri!r}; write file:///absolute/path")
    rest = uri[7:]
    if "?" in rest or "#" in rest:
        raise error(f"invalid file URI {uri!r}: percent-encode '?' and '#' in file names")
    host, slash, path = rest.partition("/")
    if host.lower() not in ("", "localhost"):
        raise error(f"invalid file URI {uri!r}: names host {host!r}; write "
                    "file:///absolute/path")
    if not slash:
        raise error(f"invalid file URI {uri!r}; write file:///absolute/path")
    # File names are bytes on Linux: decode %XX to bytes, then as the OS would.
    decoded = os.fsdecode(unquote_to_bytes("/" + path))
    if "\x00" in decoded:
        raise error(f"invalid file URI {uri!r}: NUL in the path")
    return Path(decoded)


def check_resource_uri(uri: str, *, error: type[ConfigError] = ConfigError) -> None:
    """Raise if ``uri`` is not a path, a ``file://`` or a valid ``kbs:///`` URI, without
    reading anything (so configs fail when loaded, not at the first pull)."""
    local_path(uri, error=error)


# -- reading -------------------------------------------------------------------------------


def _size(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def _read_file(path: Path, what: str, max_size: int, error: type[ConfigError]) -> bytes:
    """Read a local file of at most ``max_size`` bytes; ``what`` names it in errors."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror or e}") from e
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"cannot read {what}: {os.strerror(errno.EISDIR)}")
        if stat.S_ISREG(st.st_mode) and st.st_size > max_size:
            raise error(f"{what} is larger than {_size(max_size)}")
        chunks: list[bytes] = []
        total = 0
        # Read to EOF but never more than max_size + 1 bytes: the size may change after
        # fstat, and pipes and devices have none.
        while total <= max_size:
            chunk = os.read(fd, min(1024 * 1024, max_size + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_size:
            raise error(f"{what} is larger than {_size(max_size)}")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"cannot read {what}: {e.strerror or e}") from e
    finally:
        os.close(fd)


def read_resource(uri: str, *, kbs: ResourceProvider | None = None,
                  max_size: int = DEFAULT_MAX_SIZE,
                  error: type[ConfigError] = ConfigError) -> bytes:
    """The bytes of the resource ``uri`` names: a plain path, ``file:///abs/path`` or
    ``kbs:///repository/type/tag`` (fetched from ``kbs``, e.g. a
    :class:`CdhResourceProvider`).

    At most ``max_size`` bytes are accepted from either source. Every failure raises
    ``error`` (:class:`~unlade.errors.ConfigError` by default; pass
    :class:`~unlade.errors.PolicyError` when reading a policy or a key) with a one-line
    message naming the URI.
    """
    path = local_path(uri, error=error)
    if path is not None:
        what = repr(uri) if str(path) == uri else f"{uri!r} ({path})"
        return _read_file(path, what, max_size, error)
    resource = kbs_resource_uri(uri, error=error)
    if kbs is None:
        raise error(f"cannot read {uri!r}: kbs:// resources need a resource provider "
                    "(set kbs_address in unlade.toml)")
    try:
        data = kbs.get(resource)
    except ConfigError as e:
        if isinstance(e, error):
            raise
        raise error(str(e)) from e
    if not isinstance(data, bytes | bytearray | memoryview):
        raise error(f"resource provider returned {type(data).__name__}, not bytes, "
                    f"for {resource}")
    if len(data) > max_size:
        raise error(f"{resource} is larger than {_size(max_size)}")
    return bytes(data)


# -- the Confidential Data Hub -------------------------------------------------------------


def _grpc() -> ModuleType:
    """grpcio, imported on first use so that unlade runs without it."""
    try:
        return importlib.import_module("grpc")
    except ImportError as e:
        raise ConfigError(GRPC_MISSING) from e


def grpc_target(address: str) -> str:
    """The gRPC target for a resource-provider address: ``unix:///path`` (also
    ``unix:relative``, ``unix-abstract:name``), ``host:port`` (also ``dns:``, ``ipv4:``,
    ``ipv6:`` targets), or image-rs's ``http://host:port`` (the ``http://`` dropped, as
    grpcio does not take it). ``https://`` is refused: the CDH listens in the guest
    without TLS, and pretending otherwise would be worse than a clear error."""
    address = address.strip()
    if not address:
        raise ConfigError("empty resource provider address")
    lower = address.lower()
    if lower.startswith("http://"):
        target = address[7:].rstrip("/")
        if not target or "/" in target:
            raise ConfigError(f"invalid resource provider address {address!r}; "
                              "write host:port or unix:///path")
        return target
    if lower.startswith(("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:")):
        rest = address.partition(":")[2]
        if not rest.removeprefix("//").strip("/"):
            raise ConfigError(f"invalid resource provider address {address!r}: "
                              "nothing after the scheme")
        return address
    if "://" in address or "/" in address or any(c.isspace() for c in address):
        raise ConfigError(f"invalid resource provider address {address!r}; write "
                          "host:port or unix:///path")
    return address


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _encode_request(path: str) -> bytes:
    """``GetResourceRequest{ResourcePath = path}``: field 1, wire type 2 (tag 0x0a)."""
    payload = path.encode("utf-8")
    return b"\x0a" + _varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _decode_response(data: bytes) -> bytes:
    """``GetResourceResponse.Resource`` (field 1, bytes). Unknown fields are skipped, a
    repeated field 1 keeps the last value, and an absent one is empty -- protobuf's rules,
    so a newer CDH that adds fields still works."""
    resource = b""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            if number == 1:
                resource = bytes(data[pos:pos + length])
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated field")
    return resource


class CdhResourceProvider:
    """Fetches ``kbs:///`` resources from the Confidential Data Hub's
    ``api.GetResourceService/GetResource`` gRPC method at ``address`` (``unix:///path``
    or ``host:port``; see :func:`grpc_target`).

    The channel is opened at the first :meth:`get` (so a configured but unused CDH costs
    nothing and needs no grpcio) and kept for later calls; each call waits at most
    ``timeout`` seconds. ``max_size`` bounds what the channel accepts. Failures raise
    :class:`~unlade.errors.ConfigError` naming the address and the gRPC status, e.g.
    ``resource provider at 127.0.0.1:50000 failed: NOT_FOUND: ...``.
    """

    def __init__(self, address: str, timeout: float = 10, *,
                 max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.address = address
        self.target = grpc_target(address)
        if not timeout > 0:
            raise ConfigError(f"resource provider timeout must be positive, not {timeout!r}")
        self.timeout = float(timeout)
        self.max_size = max_size
        self._lock = threading.Lock()
        self._channel: Any = None
        self._call: Any = None

    def __repr__(self) -> str:
        return f"CdhResourceProvider({self.address!r}, timeout={self.timeout})"

    def _method(self) -> Any:
        with self._lock:
            if self._call is None:
                grpc = _grpc()
                self._channel = grpc.insecure_channel(self.target, options=[
                    ("grpc.max_receive_message_length", self.max_size + _FRAMING),
                    # The CDH is local to the guest; an http_proxy meant for registries
                    # must not capture it.
                    ("grpc.enable_http_proxy", 0),
                ])
                self._call = self._channel.unary_unary(
                    GET_RESOURCE_METHOD,
                    request_serializer=_encode_request,
                    response_deserializer=_decode_response,
                )
            return self._call

    def get(self, path: str) -> bytes:
        """The resource ``path`` (a ``kbs:///repository/type/tag`` URI, sent unchanged as
        ``ResourcePath``, as image-rs does)."""
        call = self._method()
        grpc = _grpc()
        try:
            data: bytes = call(path, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            name = getattr(code, "name", "UNKNOWN")
            details = e.details() if callable(getattr(e, "details", None)) else str(e)
            raise ConfigError(f"resource provider at {self.address} failed: {name}: "
                              f"{details or 'no details'} (fetching {path})") from e
        return data

    def close(self) -> None:
        """Close the channel (a later :meth:`get` opens a new one)."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._call = None

    def __enter__(self) -> CdhResourceProvider:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
