"""Tests proving the test harness itself is real (registries, images, umoci, snapshots)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import ssl
import stat
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import urllib3
from harness import images as im
from harness.images import PushedImage
from harness.registry import Registry
from harness.tree import assert_same_tree, diff, snapshot

ACCEPT = ", ".join([im.MT_OCI_MANIFEST, im.MT_OCI_INDEX, im.MT_DOCKER_MANIFEST, im.MT_DOCKER_LIST])


def small_layers() -> list[list[im.Entry]]:
    return [[im.directory("etc"), im.file("etc/hello", "hello\n")]]


def push_small(tmp_path: Path, reg: Registry, repo: str = "harness/small") -> PushedImage:
    return im.build_and_push(tmp_path / "layout", reg, repo, "v1", small_layers())


def challenge(resp: urllib3.BaseHTTPResponse) -> tuple[str, dict[str, str]]:
    scheme, _, rest = resp.headers["WWW-Authenticate"].partition(" ")
    return scheme, dict(re.findall(r'(\w+)="([^"]*)"', rest))


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ----------------------------------------------------------------------------------------------
# Registries


def test_plain_registry_serves_pushed_manifest(registry: Registry, tricky_image: PushedImage):
    http = urllib3.PoolManager()
    r = http.request("GET", f"{registry.url}/v2/{tricky_image.repo}/manifests/tricky",
                     headers={"Accept": ACCEPT})
    assert r.status == 200
    assert r.headers["Content-Type"] == im.MT_OCI_MANIFEST
    assert r.headers["Docker-Content-Digest"] == tricky_image.digest
    assert "sha256:" + hashlib.sha256(r.data).hexdigest() == tricky_image.digest
    manifest = json.loads(r.data)
    assert [layer["mediaType"] for layer in manifest["layers"]] == [im.MT_OCI_LAYER_GZIP] * 3
    # skopeo keeps the gzip blobs byte-identical
    assert [layer["digest"] for layer in manifest["layers"]] == tricky_image.info.layer_digests
    assert tricky_image.ref == f"127.0.0.1:{registry.port}/harness/tricky:tricky"


def test_tls_registry(tls_registry: Registry, tmp_path: Path):
    img = push_small(tmp_path, tls_registry)
    assert tls_registry.url.startswith("https://127.0.0.1:")
    assert tls_registry.ca_pem_path is not None and tls_registry.cert_dir is not None
    assert (tls_registry.cert_dir / "ca.crt").read_bytes() == tls_registry.ca_pem_path.read_bytes()
    assert tls_registry.certs_d is not None
    assert (tls_registry.certs_d / tls_registry.host / "ca.crt").is_file()
    url = f"{tls_registry.url}/v2/{img.repo}/manifests/v1"
    r = urllib3.PoolManager(ca_certs=str(tls_registry.ca_pem_path)).request(
        "GET", url, headers={"Accept": ACCEPT})
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == img.digest
    # "localhost" is in the certificate too
    r = urllib3.PoolManager(ca_certs=str(tls_registry.ca_pem_path)).request(
        "GET", url.replace("127.0.0.1", "localhost"), headers={"Accept": ACCEPT})
    assert r.status == 200
    # without the CA the certificate is rejected
    with pytest.raises(urllib3.exceptions.SSLError):
        urllib3.PoolManager(ssl_context=ssl.create_default_context()).request(
            "GET", url, retries=False)


def test_htpasswd_registry(auth_registry: Registry, tmp_path: Path):
    img = push_small(tmp_path, auth_registry)
    assert auth_registry.credentials == (auth_registry.username, auth_registry.password)
    url = f"{auth_registry.url}/v2/{img.repo}/manifests/v1"
    http = urllib3.PoolManager()
    r = http.request("GET", url, headers={"Accept": ACCEPT})
    assert r.status == 401
    assert challenge(r)[0] == "Basic"
    r = http.request("GET", url, headers={"Accept": ACCEPT,
                                          "Authorization": basic("alice", "wrong")})
    assert r.status == 401
    user, password = auth_registry.credentials or ("", "")
    r = http.request("GET", url, headers={"Accept": ACCEPT,
                                          "Authorization": basic(user, password)})
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == img.digest


def test_token_registry_flow(token_registry: Registry, tmp_path: Path):
    img = push_small(tmp_path, token_registry)
    ts = token_registry.token_server
    assert ts is not None
    http = urllib3.PoolManager()
    url = f"{token_registry.url}/v2/{img.repo}/manifests/v1"

    r = http.request("GET", url, headers={"Accept": ACCEPT})
    assert r.status == 401
    scheme, params = challenge(r)
    assert scheme == "Bearer"
    assert params["realm"] == ts.url
    assert params["scope"] == f"repository:{img.repo}:pull"

    before = token_registry.tokens_issued
    r = http.request("GET", params["realm"],
                     fields={"service": params["service"], "scope": params["scope"]})
    assert r.status == 200
    token = json.loads(r.data)["token"]
    assert token_registry.tokens_issued == before + 1
    claims = jwt_claims(token)
    assert claims["sub"] == ""  # anonymous
    assert claims["access"] == [{"type": "repository", "name": img.repo, "actions": ["pull"]}]

    r = http.request("GET", url, headers={"Accept": ACCEPT, "Authorization": f"Bearer {token}"})
    assert r.status == 200
    assert r.headers["Docker-Content-Digest"] == img.digest

    # anonymous push is not granted; the registry refuses the anonymous token for push
    r = http.request("GET", ts.url, fields={"service": params["service"],
                                            "scope": f"repository:{img.repo}:pull,push"})
    anon = json.loads(r.data)["token"]
    assert jwt_claims(anon)["access"][0]["actions"] == ["pull"]
    r = http.request("POST", f"{token_registry.url}/v2/{img.repo}/blobs/uploads/",
                     headers={"Authorization": f"Bearer {anon}"})
    assert r.status == 401

    # wrong credentials: 401 from the token server, nothing issued
    issued = token_registry.tokens_issued
    r = http.request("GET", ts.url, fields={"service": params["service"], "scope": params["scope"]},
                     headers={"Authorization": basic("alice", "wrong")})
    assert r.status == 401
    assert token_registry.tokens_issued == issued

    # with credentials push is granted
    user, password = token_registry.credentials or ("", "")
    r = http.request("GET", ts.url, fields={"service": params["service"],
                                            "scope": f"repository:{img.repo}:pull,push"},
                     headers={"Authorization": basic(user, password)})
    assert r.status == 200
    claims = jwt_claims(json.loads(r.data)["token"])
    assert claims["sub"] == user
    assert claims["access"][0]["actions"] == ["pull", "push"]
    r = http.request("POST", f"{token_registry.url}/v2/{img.repo}/blobs/uploads/",
                     headers={"Authorization": f"Bearer {json.loads(r.data)['token']}"})
    assert r.status == 202


def test_token_registry_private(make_registry: Any, tmp_path: Path):
    reg = make_registry("token", anonymous_pull=False)
    img = push_small(tmp_path, reg)
    ts = reg.token_server
    http = urllib3.PoolManager()
    r = http.request("GET", ts.url, fields={"service": ts.service,
                                            "scope": f"repository:{img.repo}:pull"})
    anon = json.loads(r.data)["token"]
    assert jwt_claims(anon)["access"][0]["actions"] == []
    r = http.request("GET", f"{reg.url}/v2/{img.repo}/manifests/v1",
                     headers={"Accept": ACCEPT, "Authorization": f"Bearer {anon}"})
    assert r.status == 401


def test_access_log_counts_requests(registry: Registry):
    registry.mark()
    http = urllib3.PoolManager()
    for _ in range(3):
        assert http.request("GET", f"{registry.url}/v2/").status == 200
    reqs = registry.requests()
    assert [(q.method, q.path, q.status) for q in reqs] == [("GET", "/v2/", 200)] * 3


# ----------------------------------------------------------------------------------------------
# Images


def test_layer_tar_roundtrip():
    blob = b"\xff\x00binary\x80"
    tar = im.layer_tar([
        im.directory("d", mode=0o1777),
        im.file("d/f", b"data", mode=0o4755, uid=3_000_000, gid=70_000,
                mtime="1600000000.123456789",
                xattrs={"user.bin": blob, "security.capability": im.CAP_NET_BIND_SERVICE_EP}),
        im.chardev("d/null", 1, 3),
        im.hardlink("d/h", "d/f"),
        im.whiteout("d/gone"),
        im.opaque("d"),
        im.file("ü/" + "x" * 200, "long"),
    ])
    with tarfile.open(fileobj=io.BytesIO(tar), encoding="utf-8") as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert members["d"].isdir() and members["d"].mode == 0o1777
        f = members["d/f"]
        assert (f.mode, f.uid, f.gid) == (0o4755, 3_000_000, 70_000)
        assert f.pax_headers["mtime"] == "1600000000.123456789"
        xattr = f.pax_headers["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape")
        assert xattr == blob
        assert (members["d/null"].devmajor, members["d/null"].devminor) == (1, 3)
        assert members["d/h"].islnk() and members["d/h"].linkname == "d/f"
        assert "d/.wh.gone" in members and "d/.wh..wh..opq" in members
        assert "ü/" + "x" * 200 in members


def test_build_layout_is_valid_oci(tmp_path: Path):
    layout = tmp_path / "layout"
    info = im.build_layout(layout, "z", small_layers() * 2, compression=["zstd", "none"])
    im.build_layout(layout, "g", small_layers())
    index = json.loads((layout / "index.json").read_text())
    assert sorted(m["annotations"][im.REF_NAME] for m in index["manifests"]) == ["g", "z"]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    manifest = json.loads(im.read_blob(layout, info.manifest_digest))
    assert [x["mediaType"] for x in manifest["layers"]] == [im.MT_OCI_LAYER_ZSTD, im.MT_OCI_LAYER]
    config = json.loads(im.read_blob(layout, manifest["config"]["digest"]))
    uncompressed = im.read_blob(layout, manifest["layers"][1]["digest"])
    assert config["rootfs"]["diff_ids"][1] == im.sha256_digest(uncompressed)
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_skopeo_gzips_uncompressed_layers_push_raw_does_not(registry: Registry, tmp_path: Path):
    layout = tmp_path / "layout"
    im.build_layout(layout, "plain-tar", small_layers(), compression="none")
    im.push(layout, "plain-tar", registry, "harness/none-skopeo")
    im.push_raw(layout, "plain-tar", registry, "harness/none-raw")
    mt = {repo: json.loads(registry.get_manifest(repo, "plain-tar")[0])["layers"][0]["mediaType"]
          for repo in ("harness/none-skopeo", "harness/none-raw")}
    assert mt == {"harness/none-skopeo": im.MT_OCI_LAYER_GZIP, "harness/none-raw": im.MT_OCI_LAYER}


@pytest.mark.parametrize("fmt", ["oci", "v2s2"])
def test_index_push_has_two_platforms(registry: Registry, tmp_path: Path, fmt: str):
    layout = tmp_path / "layout"
    info = im.build_index_layout(layout, "multi")
    repo = f"harness/multi-{fmt}"
    digest = im.push(layout, "multi", registry, repo, fmt=fmt)  # type: ignore[arg-type]
    body, media_type, got = registry.get_manifest(repo, "multi")
    assert got == digest
    index = json.loads(body)
    assert media_type == (im.MT_OCI_INDEX if fmt == "oci" else im.MT_DOCKER_LIST)
    if fmt == "oci":
        assert digest == info.index_digest
    arches = {}
    for desc in index["manifests"]:
        manifest = json.loads(registry.get_manifest(repo, desc["digest"])[0])
        blob = registry.request("GET", f"/v2/{repo}/blobs/{manifest['layers'][0]['digest']}",
                                repo).data
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tf:
            member = tf.extractfile("etc/arch")
            assert member is not None
            arches[desc["platform"]["architecture"]] = member.read().decode().strip()
    assert arches == {"amd64": "amd64", "arm64": "arm64"}


def test_big_layer_layout_streams_valid_layer(tmp_path: Path):
    if shutil.which("pigz") is None and shutil.which("gzip") is None:
        pytest.skip("no gzip")
    info = im.big_layer_layout(tmp_path / "layout", 3 << 20, file_size=1 << 20,
                               compressible_fraction=0.5)
    blob = im.read_blob(tmp_path / "layout", info.layer_digests[0])
    tar = gzip.decompress(blob)
    assert im.sha256_digest(tar) == info.diff_ids[0]
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        sizes = [m.size for m in tf.getmembers() if m.isfile()]
    assert sizes == [1 << 20] * 3
    assert 1 << 20 < len(blob) < 2 << 20  # half zeros, half incompressible


# ----------------------------------------------------------------------------------------------
# umoci reference unpack


@pytest.mark.root
def test_umoci_unpacks_tricky_image(tricky_rootfs: Path):
    snap = snapshot(tricky_rootfs)
    assert snap["dev/null"]["type"] == "char" and snap["dev/null"]["rdev"] == (1, 3)
    assert snap["dev/loop0"]["type"] == "block" and snap["dev/loop0"]["rdev"] == (7, 0)
    assert snap["run/initctl"]["type"] == "fifo"
    assert snap["bin/su"]["mode"] == 0o4755
    assert snap["usr/bin/wall"]["mode"] == 0o2755 and snap["usr/bin/wall"]["gid"] == 5
    assert snap["tmp"]["mode"] == 0o1777
    assert snap["srv/shared"]["mode"] == 0o3775
    assert snap["usr/bin/httpd"]["xattrs"]["security.capability"] == im.CAP_NET_BIND_SERVICE_EP
    assert snap["etc/motd"]["xattrs"] == {"user.comment": b"hello"}
    assert snap["data"]["xattrs"] == {"user.dirattr": b"d"}
    assert (snap["data"]["mode"], snap["data"]["uid"]) == (0o700, 1000)
    # whiteouts and opaque dirs
    assert "whiteme/gone.txt" not in snap and "whiteme/subdir" not in snap
    assert "whiteme/kept.txt" in snap
    assert sorted(p for p in snap if p.startswith("opaque/")) == ["opaque/new"]
    assert not any(".wh." in p for p in snap)
    # hardlinks: same layer and to a lower layer
    assert snap["usr/bin/python3"]["hardlinks"] == ["usr/bin/python3.11"]
    assert snap["etc/passwd"]["hardlinks"] == ["etc/passwd-link"]
    assert snap["opt/a"]["hardlinks"] == ["opt/b"]
    # symlinks and type changes
    assert snap["bin/sh"]["target"] == "/usr/bin/dash"
    assert snap["usr/lib/libfoo.so"]["target"] == "libfoo.so.1"
    assert snap["tc/file2dir"]["type"] == "dir" and "tc/file2dir/inside" in snap
    assert snap["tc/dir2link"] == {**snap["tc/dir2link"], "type": "symlink", "target": "/etc"}
    assert snap["tc/link2file"]["type"] == "file" and snap["tc/link2file"]["size"] == 11
    assert (tricky_rootfs / "etc/hostname").read_text() == "layer2\n"
    # ids, names, times
    assert (snap["home/huge"]["uid"], snap["home/huge"]["gid"]) == (3_000_000, 3_000_001)
    assert (snap["home/big/file"]["uid"], snap["home/big/file"]["gid"]) == (100_000, 200_000)
    assert im.LONG_FILE in snap and len(im.LONG_FILE.encode()) > 255
    assert im.UNICODE_NAME in snap
    assert snap["etc/subsec"]["mtime_ns"] == 1_600_000_000_123_456_789
    assert snap["bin/sh"]["mtime_ns"] == (im.DEFAULT_MTIME + 7) * 10**9  # symlink mtime kept
    assert snap["etc/empty"]["size"] == 0


# ----------------------------------------------------------------------------------------------
# Snapshots


def make_tree(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d/f").write_text("f")
    os.link(root / "d/f", root / "d/g")
    os.symlink("f", root / "d/s")
    (root / "x").write_bytes(b"")
    os.mkfifo(root / "p")
    os.utime(root / "d/f", ns=(1, 1_600_000_000_123_456_789))
    os.utime(root / "d/s", ns=(1, 1_600_000_001_000_000_000), follow_symlinks=False)
    os.utime(root / "p", ns=(1, 1_600_000_002_000_000_000))
    os.utime(root / "x", ns=(1, 1_600_000_003_000_000_000))


def test_snapshot_and_diff(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    make_tree(b)
    snap = snapshot(a)
    assert set(snap) == {"d", "d/f", "d/g", "d/s", "p", "x"}
    assert snap["d/f"]["hardlinks"] == ["d/g"] and snap["d/g"]["hardlinks"] == ["d/f"]
    assert snap["d/s"] == {**snap["d/s"], "type": "symlink", "target": "f"}
    assert snap["p"]["type"] == "fifo"
    assert snap["d/f"]["mtime_ns"] == 1_600_000_000_123_456_789
    assert snap["d/f"]["sha256"] == hashlib.sha256(b"f").hexdigest()
    assert "mtime_ns" not in snap["d"]
    assert_same_tree(a, b)

    os.chmod(b / "d/f", 0o4711)
    assert diff(snap, snapshot(b)) == [
        f"d/f: mode {oct(stat.S_IMODE((a / 'd/f').stat().st_mode))} != 0o4711",
        f"d/g: mode {oct(stat.S_IMODE((a / 'd/f').stat().st_mode))} != 0o4711",
    ]
    os.chmod(b / "d/f", stat.S_IMODE((a / "d/f").stat().st_mode))
    assert diff(snap, snapshot(b)) == []

    os.setxattr(b / "x", "user.k", b"v2")
    os.setxattr(a / "x", "user.k", b"v1")
    d = diff(snapshot(a), snapshot(b))
    assert d == ["x: xattr user.k b'v1' != b'v2'"]
    with pytest.raises(AssertionError, match="user.k"):
        assert_same_tree(a, b)
    assert diff(snapshot(a), snapshot(a, exclude=["p"])) == ["p: only in first (fifo)"]


@pytest.mark.root
def test_snapshot_sees_trusted_xattrs_on_symlinks(tmp_path: Path):
    make_tree(tmp_path)
    os.setxattr(tmp_path / "d/s", "trusted.k", b"v", follow_symlinks=False)
    assert snapshot(tmp_path)["d/s"]["xattrs"] == {"trusted.k": b"v"}
    assert snapshot(tmp_path)["d/f"]["xattrs"] == {}


def test_run_unlade_fixture(run_unlade: Any, unlade_root: Path, tmp_path: Path):
    # unlade's CLI may not exist yet: only check how it is invoked
    proc = run_unlade("--help")
    assert proc.args[:4] == [sys.executable, "-m", "unlade", "--help"]
    assert isinstance(proc.stdout, str) and isinstance(proc.stderr, str)
    assert unlade_root.parent == tmp_path
