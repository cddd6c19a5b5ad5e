"""The tar reader: formats real tools write, and the end-of-stream rules containerd applies."""

from __future__ import annotations

import gzip
import io
import subprocess
import tarfile

import pytest

from unlade.decompress import GZIP, NONE, ZSTD, open_decompressed
from unlade.errors import MalformedLayer, TruncatedLayer
from unlade.tarstream import DIR, HARDLINK, REG, SYMLINK, TarReader


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _info(name: str, type: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def _read_all(data: bytes) -> list[tuple[str, str, bytes, dict[str, bytes], int, int, int]]:
    reader = TarReader(io.BytesIO(data))
    out = []
    for entry in reader:
        content = b"".join(bytes(p) for p in reader.data())
        out.append((entry.name, entry.type, content, entry.xattrs, entry.uid, entry.gid,
                    entry.mtime_ns))
    return out


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_formats_round_trip(fmt: int) -> None:
    long_dir = "d" * 90 + "/" + "é" * 20
    members = [
        (_info("dir", tarfile.DIRTYPE, mode=0o755), b""),
        (_info(f"{long_dir}/file", uid=1000, gid=1000, mtime=1234567890), b"hello"),
        (_info("link", tarfile.SYMTYPE, linkname="dir"), b""),
        (_info("hard", tarfile.LNKTYPE, linkname="dir"), b""),
    ]
    entries = _read_all(_tar(members, fmt))
    assert [(e[0], e[1]) for e in entries] == [
        ("dir/", DIR), (f"{long_dir}/file", REG), ("link", SYMLINK), ("hard", HARDLINK),
    ]
    assert entries[1][2] == b"hello"
    assert entries[1][6] == 1234567890 * 10**9


def test_pax_records_xattrs_big_ids_and_subsecond_mtime() -> None:
    info = _info("f", uid=70000, gid=2**21 + 5, mtime=1.5)
    info.pax_headers = {"SCHILY.xattr.user.k": "v", "SCHILY.xattr.security.capability": "\x01"}
    (entry,) = _read_all(_tar([(info, b"x")]))
    assert entry[3] == {"user.k": b"v", "security.capability": b"\x01"}
    assert (entry[4], entry[5]) == (70000, 2**21 + 5)
    assert entry[6] == 1_500_000_000


def test_gnu_base256_uid() -> None:
    info = _info("f", uid=2**24, gid=3)
    (entry,) = _read_all(_tar([(info, b"")], tarfile.GNU_FORMAT))
    assert entry[4] == 2**24


def test_stream_without_padding_or_end_blocks_is_accepted() -> None:
    data = _tar([(_info("a"), b"first"), (_info("b"), b"second!")])
    header_b = data.index(b"b\0")
    unpadded = data[: header_b + 512 + len(b"second!")]
    assert [(e[0], e[2]) for e in _read_all(unpadded)] == [("a", b"first"), ("b", b"second!")]


def test_empty_stream_is_an_empty_layer() -> None:
    assert _read_all(b"") == []


def test_stream_ending_inside_data_is_truncated() -> None:
    data = _tar([(_info("big"), b"x" * 2000)])
    with pytest.raises(TruncatedLayer, match="'big'.*inside its data"):
        _read_all(data[: 512 + 1000])


def test_stream_ending_inside_a_header_is_truncated() -> None:
    data = _tar([(_info("a"), b"1"), (_info("b"), b"2")])
    with pytest.raises(TruncatedLayer, match="inside a tar header"):
        _read_all(data[: 1024 + 100])


def test_corrupt_checksum_is_malformed() -> None:
    data = bytearray(_tar([(_info("a"), b"1"), (_info("b"), b"2")]))
    data[1024 + 1] ^= 0xFF  # second header's name
    with pytest.raises(MalformedLayer, match="checksum"):
        _read_all(bytes(data))


def test_unsupported_type_is_named() -> None:
    info = _info("weird", b"V")
    with pytest.raises(MalformedLayer, match="'weird'.*unsupported tar entry type 'V'"):
        _read_all(_tar([(info, b"")], tarfile.GNU_FORMAT))


def test_gnu_tar_output_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / ("n" * 150)).write_bytes(b"gnu long name")
    out = subprocess.run(["tar", "-C", str(tmp_path / "src"), "-cf", "-", "."],
                         check=True, capture_output=True).stdout
    names = {e[0]: e[2] for e in _read_all(out)}
    assert names["./" + "n" * 150] == b"gnu long name"


def test_multi_member_gzip_and_multi_frame_zstd() -> None:
    from backports import zstd

    payload = _tar([(_info("a"), b"A" * 1000), (_info("b"), b"B" * 3000)])
    half = len(payload) // 2
    gz = gzip.compress(payload[:half]) + gzip.compress(payload[half:])
    skippable = b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip"
    zs = zstd.compress(payload[:half]) + skippable + zstd.compress(payload[half:])
    for raw, kind in ((gz, GZIP), (zs, ZSTD), (payload, NONE)):
        stream = open_decompressed(io.BytesIO(raw), kind)
        assert stream.read() == payload, kind
