"""The ocicrypt key-provider protocol: a layer's key unwrapped by someone else.

A confidential VM never holds the image owner's private key. Its attestation agent does
(or fetches it from a key broker after attestation) and answers ocicrypt's key-provider
protocol, which is how image-rs and skopeo unwrap ``org.opencontainers.image.enc.keys.
provider.NAME`` annotations. This module speaks the protocol as containers/ocicrypt does
(``keywrap/keyprovider/keyprovider.go``, ``config/keyprovider-config/config.go``):

* Providers are named in the JSON file ``$OCICRYPT_KEYPROVIDER_CONFIG``::

      {"key-providers": {
          "attestation-agent": {"grpc": "127.0.0.1:50000"},
          "mykms": {"cmd": {"path": "/usr/bin/mykms", "args": ["--unwrap"]}}}}

  (``grpc-tls`` with ``root-ca-file``, ``cert-file``, ``key-file`` and ``server-name`` adds
  TLS to a gRPC provider).
* A request is Go's JSON of ``KeyProviderKeyWrapProtocolInput``: for unwrapping
  ``{"op": "keyunwrap", "keyunwrapparams": {"dc": {"Parameters": {NAME: [B64(params)]}},
  "annotation": B64(wrapped)}}``; the answer is ``{"keyunwrapresults": {"optsdata":
  B64(private options)}}``.
* A ``cmd`` provider reads the request on stdin and writes the answer on stdout; a ``grpc``
  provider serves ``keyprovider.KeyProviderService/UnWrapKey``, whose messages carry the
  same JSON as their only field (bytes, field 1), so no protobuf runtime is needed.

Two choices differ from ocicrypt, both for safety: a provider is asked only when the user
named it (``--decryption-key provider:NAME[:PARAMS]``; ocicrypt tries every configured
provider), and the request's ``dc`` holds only the provider parameters (ocicrypt sends the
whole decrypt configuration, private keys included, to every provider).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, DecryptionError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_TIMEOUT",
    "GrpcTls",
    "KeyProvider",
    "KeyProviderError",
    "ProviderAttrs",
    "load_providers",
    "parse_provider_spec",
]

CONFIG_ENV = "OCICRYPT_KEYPROVIDER_CONFIG"
UNWRAP_METHOD = "/keyprovider.KeyProviderService/UnWrapKey"
#: Seconds one unwrap may take: an attestation round trip to a key broker, not a hang.
DEFAULT_TIMEOUT = 60.0
#: The largest answer read from a provider; private options are ~200 bytes.
MAX_ANSWER = 1 << 20
_MAX_CONFIG = 1 << 20


class KeyProviderError(DecryptionError):
    """A key provider could not be run or gave no usable answer."""


@dataclass(frozen=True)
class GrpcTls:
    """ocicrypt's ``grpc-tls`` block (``insecure-skip-verify`` is refused)."""

    root_ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class ProviderAttrs:
    """How to reach one provider: a command or a gRPC address."""

    command: tuple[str, ...] | None = None
    grpc: str | None = None
    grpc_tls: GrpcTls | None = None


def _str(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {what} must be a non-empty string")
    return value


def _attrs(name: str, raw: Any, where: str) -> ProviderAttrs:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: key provider {name!r} must be an object")
    known = {"cmd", "grpc", "grpc-tls"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: key provider {name!r} has unknown key {unknown[0]!r}")
    command: tuple[str, ...] | None = None
    if raw.get("cmd") is not None:
        cmd = raw["cmd"]
        if not isinstance(cmd, dict):
            raise ConfigError(f"{where}: key provider {name!r}: cmd must be an object")
        path = _str(cmd.get("path"), f"key provider {name!r} cmd.path", where)
        args = cmd.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ConfigError(f"{where}: key provider {name!r}: cmd.args must be strings")
        command = (path, *args)
    grpc = raw.get("grpc") or None
    if grpc is not None:
        grpc = _str(grpc, f"key provider {name!r} grpc", where)
    tls: GrpcTls | None = None
    if raw.get("grpc-tls") is not None:
        t = raw["grpc-tls"]
        if not isinstance(t, dict):
            raise ConfigError(f"{where}: key provider {name!r}: grpc-tls must be an object")
        if t.get("insecure-skip-verify"):
            raise ConfigError(f"{where}: key provider {name!r}: insecure-skip-verify is not "
                              "supported; give root-ca-file instead")
        values = [t.get(k) or None for k in ("root-ca-file", "cert-file", "key-file",
                                             "server-name")]
        if not all(v is None or isinstance(v, str) for v in values):
            raise ConfigError(f"{where}: key provider {name!r}: grpc-tls values must be "
                              "strings")
        tls = GrpcTls(*values)
    if command is None and grpc is None:
        raise ConfigError(f"{where}: key provider {name!r} has neither cmd nor grpc")
    return ProviderAttrs(command, grpc if command is None else None, tls)


def load_providers(path: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None) -> dict[str, ProviderAttrs]:
    """The providers of ``path``, else of ``$OCICRYPT_KEYPROVIDER_CONFIG``; none when
    neither is set (as ocicrypt, a set but missing file is also none)."""
    if path is None:
        path = (os.environ if env is None else env).get(CONFIG_ENV) or None
    if path is None:
        return {}
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read key provider config {where}: {e.strerror}") from None
    if len(data) > _MAX_CONFIG:
        raise ConfigError(f"key provider config {where} is larger than 1 MiB")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ConfigError(f"key provider config {where} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key-providers", {}), dict):
        raise ConfigError(f"key provider config {where}: expected "
                          '{"key-providers": {NAME: {...}}}')
    return {name: _attrs(name, raw, where)
            for name, raw in doc.get("key-providers", {}).items()}


def parse_provider_spec(spec: str) -> tuple[str, bytes]:
    """``NAME[:PARAMS]`` (what follows ``provider:``) -> (NAME, PARAMS), where a missing
    PARAMS is ocicrypt's ``Enabled``."""
    name, sep, params = spec.partition(":")
    if not name:
        raise ConfigError(f"invalid decryption key provider:{spec}: no provider name")
    # surrogateescape: PARAMS from the command line are bytes, whatever their encoding
    return name, params.encode("utf-8", "surrogateescape") if sep else b"Enabled"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class KeyProvider:
    """One named provider, called with a wrapped key and returning the private options.

    ``params`` are the ``PARAMS`` of every ``provider:NAME:PARAMS`` given for any
    provider (ocicrypt's ``DecryptConfig.Parameters``): attestation agents read theirs
    from it, e.g. image-rs's ``provider:attestation-agent:cc_kbc::null``.
    """

    def __init__(self, name: str, attrs: ProviderAttrs,
                 params: Mapping[str, Sequence[bytes]], *,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.attrs = attrs
        self.params = {k: list(v) for k, v in params.items()}
        self.timeout = timeout
        self._lock = threading.Lock()
        self._call: Any = None
        self._channel: Any = None

    def __repr__(self) -> str:
        how = " ".join(self.attrs.command) if self.attrs.command else self.attrs.grpc
        return f"KeyProvider({self.name!r}, {how!r})"

    def request(self, wrapped: bytes) -> bytes:
        """The protocol input for unwrapping ``wrapped`` (Go's JSON of
        ``KeyProviderKeyWrapProtocolInput``)."""
        dc = {"Parameters": {k: [_b64(p) for p in v] for k, v in self.params.items()}}
        return json.dumps({"op": "keyunwrap", "keywrapparams": {"ec": None, "optsdata": None},
                           "keyunwrapparams": {"dc": dc, "annotation": _b64(wrapped)}}
                          ).encode()

    def __call__(self, wrapped: bytes) -> bytes:
        """Unwrap: the private options, or :class:`KeyProviderError` naming the provider."""
        request = self.request(wrapped)
        answer = self._run(request) if self.attrs.command else self._grpc(request)
        return self._optsdata(answer)

    def _fail(self, why: str) -> KeyProviderError:
        return KeyProviderError(f"key provider {self.name} failed: {why}")

    def _run(self, request: bytes) -> bytes:
        assert self.attrs.command is not None
        try:
            proc = subprocess.run(self.attrs.command, input=request, capture_output=True,
                                  timeout=self.timeout, check=False)
        except FileNotFoundError:
            raise self._fail(f"command {self.attrs.command[0]} not found") from None
        except PermissionError:
            raise self._fail(f"command {self.attrs.command[0]} is not executable") from None
        except subprocess.TimeoutExpired:
            raise self._fail(f"no answer within {self.timeout:g} s") from None
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines()
            detail = lines[-1].strip() if lines else "no message"
            raise self._fail(f"exit status {proc.returncode}: {detail[:300]}")
        return proc.stdout[:MAX_ANSWER + 1]

    def _method(self) -> Any:
        from .resources import _decode_response, _grpc, _varint, grpc_target

        with self._lock:
            if self._call is None:
                grpc = _grpc()
                assert self.attrs.grpc is not None
                target = grpc_target(self.attrs.grpc)
                options = [("grpc.max_receive_message_length", MAX_ANSWER + 64),
                           ("grpc.enable_http_proxy", 0)]
                tls = self.attrs.grpc_tls
                if tls is None:
                    self._channel = grpc.insecure_channel(target, options=options)
                else:
                    def read(path: str | None) -> bytes | None:
                        if path is None:
                            return None
                        try:
                            return Path(path).read_bytes()
                        except OSError as e:
                            raise ConfigError(f"key provider {self.name}: cannot read "
                                              f"{path}: {e.strerror}") from None

                    creds = grpc.ssl_channel_credentials(read(tls.root_ca_file),
                                                         read(tls.key_file),
                                                         read(tls.cert_file))
                    if tls.server_name:
                        options.append(("grpc.ssl_target_name_override", tls.server_name))
                    self._channel = grpc.secure_channel(target, creds, options=options)
                self._call = self._channel.unary_unary(
                    UNWRAP_METHOD,
                    request_serializer=lambda b: b"\x0a" + _varint(len(b)) + b,
                    response_deserializer=_decode_response,
                )
            return self._call

    def _grpc(self, request: bytes) -> bytes:
        from .resources import _grpc

        call = self._method()
        grpc = _grpc()
        try:
            answer: bytes = call(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if callable(getattr(e, "code", None)) else None
            details = e.details() if callable(getattr(e, "details", None)) else str(e)
            raise self._fail(f"{getattr(code, 'name', 'UNKNOWN')}: "
                             f"{details or 'no details'} (at {self.attrs.grpc})") from None
        except ValueError as e:  # a malformed protobuf answer
            raise self._fail(f"malformed answer: {e}") from None
        return answer

    def _optsdata(self, answer: bytes) -> bytes:
        if len(answer) > MAX_ANSWER:
            raise self._fail("answer larger than 1 MiB")
        try:
            doc = json.loads(answer)
            opts = doc["keyunwrapresults"]["optsdata"]
            if not isinstance(opts, str) or not opts:
                raise TypeError
            return base64.b64decode(opts, validate=True)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError):
            raise self._fail("answer is not {\"keyunwrapresults\": {\"optsdata\": BASE64}}"
                             ) from None

    def close(self) -> None:
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel = self._call = None


def make_providers(specs: Sequence[str], config: str | os.PathLike[str] | None = None, *,
                   timeout: float = DEFAULT_TIMEOUT) -> dict[str, KeyProvider]:
    """The providers named by ``specs`` (``NAME[:PARAMS]``), looked up in ``config`` (or
    ``$OCICRYPT_KEYPROVIDER_CONFIG``). A name the config lacks is an error now, not a
    silent "no key" at the first encrypted layer."""
    if not specs:
        return {}
    params: dict[str, list[bytes]] = {}
    for spec in specs:
        name, value = parse_provider_spec(spec)
        params.setdefault(name, []).append(value)
    known = load_providers(config)
    where = os.fspath(config) if config is not None else os.environ.get(CONFIG_ENV)
    providers: dict[str, KeyProvider] = {}
    for name in params:
        if name not in known:
            if where:
                raise ConfigError(f"key provider {name} is not configured in {where}")
            raise ConfigError(f"key provider {name} is not configured: set {CONFIG_ENV} "
                              "to an ocicrypt key provider config file")
        providers[name] = KeyProvider(name, known[name], params, timeout=timeout)
    return providers
