"""Regression tests for what the fuzz harnesses (``fuzz/``) found: one test per finding,
with the (minimised) input inline. A "crash" is any exception other than the documented
error for bad input (see each harness's docstring).
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import pytest

from unlade.config import UnladeConfig
from unlade.errors import ConfigError, MalformedLayer
from unlade.keyprovider import load_providers, parse_provider_spec
from unlade.sigsources import RegistriesD
from unlade.tarstream import TarReader


def _pax_tar(headers: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a")
        info.pax_headers = headers
        tar.addfile(info)
    return buf.getvalue()


def _entries(data: bytes) -> list[str]:
    return [entry.name for entry in TarReader(io.BytesIO(data))]  # type: ignore[arg-type]


# -- fuzz_keyprovider ----------------------------------------------------------------------


def test_keyprovider_config_nested_too_deeply(tmp_path: Path) -> None:
    """fuzz_keyprovider: ``[`` x 10000 made json.loads raise RecursionError, which escaped
    load_providers (only ValueError was caught)."""
    path = tmp_path / "ocicrypt.conf"
    path.write_bytes(b"[" * 10000)
    with pytest.raises(ConfigError, match="is not JSON"):
        load_providers(path)


def test_keyprovider_spec_params_not_utf8() -> None:
    """fuzz_keyprovider: ``provider:NAME:PARAMS`` with bytes that are not UTF-8 (a command
    line arrives surrogate-escaped) raised UnicodeEncodeError; PARAMS are now the bytes
    as given."""
    assert parse_provider_spec("aa:\udcff\udcfe") == ("aa", b"\xff\xfe")


def test_keyprovider_grpc_tls_value_not_a_string(tmp_path: Path) -> None:
    """fuzz_keyprovider's invariant (grpc-tls values are strings or None; found reviewing
    for it): a number was kept as root-ca-file and failed with TypeError only when the
    channel was opened."""
    path = tmp_path / "ocicrypt.conf"
    path.write_bytes(b'{"key-providers": {"x": {"grpc": "h:1", "grpc-tls": '
                     b'{"root-ca-file": 3}}}}')
    with pytest.raises(ConfigError, match="grpc-tls values must be strings"):
        load_providers(path)


# -- fuzz_tarstream ------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["size", "uid", "gid", "mtime", "atime"])
def test_tarstream_pax_number_over_4300_digits(key: str) -> None:
    """fuzz_tarstream (an input written while reviewing for it; a 60 s fuzzing run had not
    reached it): a PAX number of 5000 digits made int() raise ValueError (Python's
    limit on int/str conversion) out of TarReader; it is now MalformedLayer, as any number
    over int64 is (Go's archive/tar refuses those too)."""
    with pytest.raises(MalformedLayer, match="invalid PAX"):
        _entries(_pax_tar({key: "9" * 5000}))
    with pytest.raises(MalformedLayer):
        _entries(_pax_tar({key: str(1 << 63)}))
    assert _entries(_pax_tar({key: "0" * 5000 + "1"})) == ["a"]


def test_tarstream_pax_record_length_over_4300_digits() -> None:
    """fuzz_tarstream (written while reviewing, as above): a PAX record whose length field
    has 5000 digits raised ValueError."""
    data = bytearray(_pax_tar({"comment": "x"}))
    record = b"9" * 5000 + b" comment=x\n"
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(record)
    body = header.tobuf(tarfile.USTAR_FORMAT) + record + b"\0" * (-len(record) % 512)
    data = body + bytes(data[1024:])  # the original PAX header replaced by the long one
    with pytest.raises(MalformedLayer, match="invalid PAX record length"):
        _entries(bytes(data))


# -- fuzz_registries_d ---------------------------------------------------------------------


def test_registries_d_merge_key_bomb() -> None:
    """fuzz_registries_d (an input written while reviewing for it): merge keys that merge
    aliases of merges multiply, 10 ** depth; this 460-byte file took 20 s (depth 7: over
    3 minutes, depth 8: an hour). yaml.v3 refuses such files as "excessive aliasing"."""
    lines = ["l0: &l0 {lookaside: x}"]
    for i in range(1, 7):
        lines.append(f"l{i}: &l{i} {{<<: [{', '.join([f'*l{i - 1}'] * 10)}]}}")
    lines.append(f"docker: {{a.example: {{<<: [{', '.join(['*l6'] * 10)}]}}}}")
    start = time.monotonic()
    with pytest.raises(ConfigError, match="excessive aliasing"):
        RegistriesD.from_yaml("\n".join(lines).encode(), "bomb.yaml")
    assert time.monotonic() - start < 5


# -- fuzz_unlade_toml -------------------------------------------------------------------------


def test_config_tilde_unknown_user() -> None:
    """fuzz_unlade_toml: ``authfile = "~Extra.7.0.0.1:50000"`` (any ~unknownuser path)."""
    with pytest.raises(ConfigError):
        UnladeConfig.from_toml('authfile = "~nosuchuser-fuzz/auth.json"\n')


def test_config_tilde_nul() -> None:
    """fuzz_unlade_toml: ``root = "~\\u0000"``."""
    with pytest.raises(ConfigError):
        UnladeConfig.from_toml('root = "~\\u0000"\n')
