"""Regressions for hostile inputs found in review: each once crashed, leaked or misplaced."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from unlade.errors import LayerError, MalformedLayer, RegistryError
from unlade.layer import MAX_DEPTH, apply_layer
from unlade.reference import parse_reference
from unlade.registry import RegistryClient

pytestmark = pytest.mark.root


def _tar(*members: tuple[tarfile.TarInfo, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _info(name: str, type: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def test_hardlink_after_fd_cache_eviction_lands_where_named(tmp_path: Path) -> None:
    """Resolving a deep hardlink target evicts cached directory descriptors; the parent
    descriptor of the entry being applied must stay valid (it once was closed and reused)."""
    deep = "/".join(["a"] * MAX_DEPTH)  # more directories than the descriptor cache holds
    root = tmp_path / "root"
    root.mkdir()
    stream = _tar(
        (_info(f"{deep}/f"), b"deep file"),
        (_info("zz", tarfile.DIRTYPE), b""),
        (_info(".wh.zz"), b""),  # a removal empties the cache
        (_info("x", tarfile.DIRTYPE), b""),
        (_info("x/h", tarfile.LNKTYPE, linkname=f"{deep}/f"), b""),
    )
    apply_layer(stream, root)
    assert (root / "x" / "h").read_bytes() == b"deep file"
    assert os.path.samefile(root / "x" / "h", root / deep / "f")
    assert sorted(p.name for p in root.iterdir()) == ["a", "x"]


def test_too_deep_trees_are_refused_cleanly(tmp_path: Path) -> None:
    deep = "/".join(["a"] * (MAX_DEPTH + 5))
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(MalformedLayer, match="directories deep"):
        apply_layer(_tar((_info(f"{deep}/f"), b"x")), root, layer="layer 1")


def test_consecutive_pax_headers_replace_not_merge(tmp_path: Path) -> None:
    """As Go's reader: only the last 'x' header before an entry counts."""
    real = _info("real")
    real.pax_headers = {"comment": "second header"}
    entries = _tar((real, b"data")).getvalue()  # starts with its own 'x' header
    assert entries[156:157] == b"x"
    pax = tarfile.TarInfo("pax")
    pax.type = tarfile.XHDTYPE
    records = b"26 path=from-first-header\n"
    assert len(records) == 26
    pax.size = len(records)
    header = pax.tobuf(format=tarfile.USTAR_FORMAT)
    padded = records + b"\0" * (-len(records) % 512)
    root = tmp_path / "root"
    root.mkdir()
    apply_layer(io.BytesIO(header + padded + entries), root)
    assert sorted(p.name for p in root.iterdir()) == ["real"]


@pytest.mark.parametrize("pax,needle", [
    ({"uid": "²"}, "invalid PAX uid"),
    ({"path": "a\0b"}, "null"),
    ({"SCHILY.xattr.user.a\0b": "v"}, "null"),
])
def test_odd_header_fields_are_layer_errors(tmp_path: Path, pax: dict[str, str],
                                            needle: str) -> None:
    info = _info("f")
    info.pax_headers = pax
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError, match=needle):
        apply_layer(_tar((info, b"")), root)


def test_huge_device_numbers_are_layer_errors(tmp_path: Path) -> None:
    raw = bytearray(_tar((_info("c", tarfile.CHRTYPE), b"")).getvalue())
    # base-256 devmajor 2**40 in the first header, checksum recomputed
    start = raw.index(b"c\0")
    hdr = start - (start % 512)
    raw[hdr + 329: hdr + 337] = bytes([0x80]) + (2**40).to_bytes(7, "big")
    raw[hdr + 148: hdr + 156] = b" " * 8
    raw[hdr + 148: hdr + 156] = b"%06o\0 " % sum(raw[hdr: hdr + 512])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(MalformedLayer, match="'c'"):
        apply_layer(io.BytesIO(bytes(raw)), root)


@pytest.mark.parametrize("location", [
    "http://registry.test/v2/x/blobs/y",   # https -> http downgrade
    "ftp://registry.test/x",
    "http://registry.test:99999/x",
    "http://[oops/x",
])
def test_unsafe_or_invalid_redirects_are_refused(location: str) -> None:
    ref = parse_reference("registry.test/x:y")
    with pytest.raises(RegistryError, match="redirect"):
        RegistryClient()._redirect_target("https://registry.test/v2/x/blobs/z", location, ref)


def test_same_origin_redirect_is_followed() -> None:
    ref = parse_reference("registry.test/x:y")
    target = RegistryClient()._redirect_target("https://registry.test/v2/x/blobs/z",
                                               "/v2/x/blobs/other", ref)
    assert target == "https://registry.test/v2/x/blobs/other"
