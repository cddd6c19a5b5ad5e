"""End to end: real registries, images pushed by skopeo, rootfs compared with umoci's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import images
from harness.faultproxy import FaultProxy
from harness.images import PushedImage
from harness.protocols import RunUnlade
from harness.registry import Registry
from harness.tree import assert_same_tree
from harness.umoci import umoci_unpack

pytestmark = [pytest.mark.root, pytest.mark.tools]


def _pull_json(run_unlade: RunUnlade, ref: str, rootfs: Path | None, *args: str,
               **kw: object) -> dict[str, object]:
    extra = ["--rootfs", str(rootfs)] if rootfs is not None else []
    proc = run_unlade("pull", "--plain-http", "--json", ref, *extra, *args, check=True, **kw)
    doc = json.loads(proc.stdout)
    assert isinstance(doc, dict)
    return doc


def _assert_like_umoci(layout: Path, tag: str, rootfs: Path, tmp_path: Path) -> None:
    """Every test image's rootfs must be the one umoci unpacks from the same layout."""
    bundle = tmp_path / f"umoci-{rootfs.name}"
    assert_same_tree(umoci_unpack(layout, tag, bundle), rootfs)


def _assert_overlay_like(run_unlade: RunUnlade, ref: str, reference: Path, tmp_path: Path,
                         *args: str) -> None:
    """The image pulled into overlay snapshots (its layers unpacked in parallel, each in
    its own directory) and mounted shows exactly the reference tree."""
    doc = _pull_json(run_unlade, ref, None, "--snapshotter", "overlayfs", *args)
    assert all(layer["unpacked"] is not None for layer in doc["layers"])  # type: ignore
    mnt = tmp_path / f"mnt-{str(doc['manifest_digest'])[7:19]}"
    mnt.mkdir()
    run_unlade("mount", doc["manifest_digest"], mnt, check=True)  # type: ignore[arg-type]
    try:
        assert_same_tree(reference, mnt)
    finally:
        run_unlade("unmount", mnt, check=True)


def _push_variant(tmp_path: Path, registry: Registry, variant: str) -> tuple[Path, str, str]:
    """The tricky image as ``variant``; returns (layout, tag, ref)."""
    layout = tmp_path / f"layout-{variant}"
    layers = images.tricky_layers()
    repo = f"variants/{variant}"
    if variant == "oci-gzip":
        images.build_layout(layout, "t", layers, "gzip")
        images.push(layout, "t", registry, repo)
    elif variant == "docker-v2s2":
        images.build_layout(layout, "t", layers, "gzip")
        images.push(layout, "t", registry, repo, fmt="v2s2")
    elif variant == "oci-zstd":
        images.build_layout(layout, "t", layers, "zstd")
        images.push(layout, "t", registry, repo)
    elif variant == "oci-uncompressed":
        images.build_layout(layout, "t", layers, "none")
        images.push_raw(layout, "t", registry, repo)
    elif variant == "mixed":
        comps = ["gzip", "zstd", "none"] * len(layers)
        images.build_layout(layout, "t", layers, comps[: len(layers)])
        images.push_raw(layout, "t", registry, repo)
    else:  # pragma: no cover
        raise ValueError(variant)
    return layout, "t", f"{registry.host}/{repo}:t"


@pytest.mark.parametrize(
    "variant", ["oci-gzip", "docker-v2s2", "oci-zstd", "oci-uncompressed", "mixed"]
)
def test_rootfs_equals_umoci(
    variant: str, tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    layout, tag, ref = _push_variant(tmp_path, registry, variant)
    doc = _pull_json(run_unlade, ref, tmp_path / "rootfs")
    expected = json.loads(images.read_blob(layout, images.tagged_descriptor(layout, tag)
                                           ["digest"]))
    if variant == "docker-v2s2":
        assert doc["manifest_media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    else:
        assert doc["manifest_media_type"] == "application/vnd.oci.image.manifest.v1+json"
        assert [layer["digest"] for layer in doc["layers"]] == [  # type: ignore[union-attr]
            d["digest"] for d in expected["layers"]
        ]
    # umoci 0.4.7 reads gzip layers only: its reference is the gzip build of the same tars.
    gzip_layout = tmp_path / "layout-reference"
    images.build_layout(gzip_layout, "ref", images.tricky_layers(), "gzip")
    reference = umoci_unpack(gzip_layout, "ref", tmp_path / "umoci")
    assert_same_tree(reference, tmp_path / "rootfs")
    _assert_overlay_like(run_unlade, ref, reference, tmp_path)


def test_umoci_insert_layers_without_end_blocks(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    """umoci 0.4.7's insert writes tar streams with no padding/end blocks: accepted."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"x" * 1001)  # not a multiple of 512
    layout = tmp_path / "layout"
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{layout}:t"], check=True)
    subprocess.run(["umoci", "insert", "--image", f"{layout}:t", str(src), "/"], check=True)
    images.push(layout, "t", registry, "umoci/insert")
    _pull_json(run_unlade, f"{registry.host}/umoci/insert:t", tmp_path / "rootfs")
    reference = umoci_unpack(layout, "t", tmp_path / "umoci")
    assert_same_tree(reference, tmp_path / "rootfs")
    _assert_overlay_like(run_unlade, f"{registry.host}/umoci/insert:t", reference, tmp_path)
    assert (tmp_path / "rootfs" / "bin" / "tool").read_bytes() == b"x" * 1001


def test_json_document_and_blob_reuse(
    tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade, unlade_root: Path
) -> None:
    info = tricky_image.info
    assert isinstance(info, images.ImageInfo)
    first = _pull_json(run_unlade, tricky_image.ref, tmp_path / "one")
    assert first["manifest_digest"] == tricky_image.digest == info.manifest_digest
    assert first["config_digest"] == info.config_digest
    layers = first["layers"]
    assert isinstance(layers, list)
    assert [x["digest"] for x in layers] == info.layer_digests
    assert [x["diff_id"] for x in layers] == info.diff_ids
    assert [x["size"] for x in layers] == [d["size"] for d in info.manifest["layers"]]
    assert all(x["fetched"] for x in layers)
    assert first["bytes_fetched"] == sum(x["size"] for x in layers)
    assert isinstance(first["seconds"], float)
    for digest in [info.manifest_digest, info.config_digest, *info.layer_digests]:
        assert (unlade_root / "blobs" / "sha256" / digest[7:]).is_file()

    # A second pull from the same store downloads nothing and builds the same tree.
    second = _pull_json(run_unlade, tricky_image.digest_ref, tmp_path / "two")
    assert second["bytes_fetched"] == 0
    assert not any(x["fetched"] for x in second["layers"])  # type: ignore[union-attr]
    assert_same_tree(tmp_path / "one", tmp_path / "two")
    # devices and setuid files of the image are not exposed to other users
    assert (tmp_path / "one").stat().st_mode & 0o777 == 0o700

    # Store only, no rootfs.
    third = _pull_json(run_unlade, tricky_image.ref, None, root=tmp_path / "store2")
    assert third["rootfs"] is None
    assert third["bytes_fetched"] == first["bytes_fetched"]


def test_human_output_is_one_summary_line(
    tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade
) -> None:
    proc = run_unlade("pull", "--plain-http", tricky_image.ref, "--rootfs", tmp_path / "r",
                      check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"pulled {tricky_image.ref} (sha256:")
    assert str(tmp_path / "r") in lines[0]
    assert proc.stderr == ""  # no bars when not on a terminal


def test_platform_selection_from_index(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    index = images.build_index_layout(layout, "multi")
    images.push(layout, "multi", registry, "multi/arch")
    for key, tag in (("linux/amd64", "amd64"), ("linux/arm64/v8", "arm64")):
        desc = {k: v for k, v in index.images[key].descriptor.items() if k != "platform"}
        images.tag_descriptor(layout, tag, desc)  # so umoci can unpack each platform
    ref = f"{registry.host}/multi/arch:multi"
    host = _pull_json(run_unlade, ref, tmp_path / "host")
    assert (tmp_path / "host" / "etc" / "arch").read_text() == "amd64\n"
    assert host["platform"] == "linux/amd64"
    arm = _pull_json(run_unlade, ref, tmp_path / "arm", "--platform", "linux/arm64")
    assert (tmp_path / "arm" / "etc" / "arch").read_text() == "arm64\n"
    assert arm["platform"] == "linux/arm64/v8"
    _assert_like_umoci(layout, "amd64", tmp_path / "host", tmp_path)
    _assert_like_umoci(layout, "arm64", tmp_path / "arm", tmp_path)
    _assert_overlay_like(run_unlade, ref, tmp_path / "host", tmp_path)
    _assert_overlay_like(run_unlade, ref, tmp_path / "arm", tmp_path, "--platform",
                         "linux/arm64")
    proc = run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "s390",
                      "--platform", "linux/s390x")
    assert proc.returncode == 1
    assert "no manifest for platform linux/s390x" in proc.stderr
    assert "linux/amd64, linux/arm64/v8" in proc.stderr


def test_tls_registry_with_cert_dir(
    tmp_path: Path, tls_registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    images.build_layout(layout, "t", [[images.file("hello", "tls")]])
    images.push(layout, "t", tls_registry, "tls/img")
    ref = f"{tls_registry.host}/tls/img:t"
    proc = run_unlade("pull", ref, "--rootfs", tmp_path / "no")
    assert proc.returncode == 1
    assert "TLS error" in proc.stderr and "certificate verify failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    run_unlade("pull", "--cert-dir", tls_registry.cert_dir, ref, "--rootfs", tmp_path / "yes",
               check=True)
    assert (tmp_path / "yes" / "hello").read_text() == "tls"
    _assert_like_umoci(layout, "t", tmp_path / "yes", tmp_path)


def _auth_env(tmp_path: Path) -> dict[str, str | None]:
    """A home with no credentials, so the real user's files never leak in."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {"HOME": str(home), "XDG_RUNTIME_DIR": str(home / "run"),
            "XDG_CONFIG_HOME": str(home / ".config"), "REGISTRY_AUTH_FILE": None,
            "DOCKER_CONFIG": None}


def test_basic_auth_from_creds_authfile_and_env(
    tmp_path: Path, auth_registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    images.build_layout(layout, "t", [[images.file("secret", "basic")]])
    images.push(layout, "t", auth_registry, "private/img")
    ref = f"{auth_registry.host}/private/img:t"
    env = _auth_env(tmp_path)
    user, password = auth_registry.credentials  # type: ignore[misc]

    proc = run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "anon", env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("unlade: error: unauthorized")
    assert not (tmp_path / "anon").exists()

    run_unlade("pull", "--plain-http", "--creds", f"{user}:{password}", ref,
               "--rootfs", tmp_path / "creds", env=env, check=True)
    wrong = run_unlade("pull", "--plain-http", "--creds", f"{user}:wrong", ref,
                       "--rootfs", tmp_path / "wrong", env=env)
    assert wrong.returncode == 1 and "unauthorized" in wrong.stderr

    import base64

    authfile = tmp_path / "auth.json"
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {auth_registry.host: {"auth": token}}}))
    run_unlade("pull", "--plain-http", "--authfile", authfile, ref, "--rootfs",
               tmp_path / "authfile", env=env, check=True)
    run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "envfile",
               env={**env, "REGISTRY_AUTH_FILE": str(authfile)}, check=True)
    docker_dir = Path(str(env["HOME"])) / ".docker"
    docker_dir.mkdir()
    (docker_dir / "config.json").write_text(authfile.read_text())
    run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "docker", env=env,
               check=True)
    for name in ("creds", "authfile", "envfile", "docker"):
        assert (tmp_path / name / "secret").read_text() == "basic"
        _assert_like_umoci(layout, "t", tmp_path / name, tmp_path)


def test_token_auth_anonymous_and_cached_per_scope(
    tmp_path: Path, token_registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    layers = [[images.file(f"f{i}", str(i))] for i in range(3)]
    images.build_layout(layout, "t", layers)
    images.push(layout, "t", token_registry, "tokens/img")
    before = token_registry.tokens_issued
    doc = _pull_json(run_unlade, f"{token_registry.host}/tokens/img:t", tmp_path / "r",
                     env=_auth_env(tmp_path))
    assert len(doc["layers"]) == 3  # type: ignore[arg-type]
    # manifest, config and three blobs: one token for the repository's pull scope
    assert token_registry.tokens_issued - before == 1
    assert (tmp_path / "r" / "f2").read_text() == "2"
    _assert_like_umoci(layout, "t", tmp_path / "r", tmp_path)


def test_broken_blob_stream_resumes_with_range(
    tmp_path: Path, registry: Registry, run_unlade: RunUnlade
) -> None:
    layout = tmp_path / "layout"
    payload = os.urandom(3 << 20)
    images.build_layout(layout, "t", [[images.file("blob.bin", payload)]])
    images.push(layout, "t", registry, "faults/resume")
    with FaultProxy(registry.host, cut_blob_after=1 << 20) as proxy:
        doc = _pull_json(run_unlade, f"{proxy.host}/faults/resume:t", tmp_path / "r")
        ranged = [r for r in proxy.requests if "Range" in r.headers]
    assert proxy.cuts == 1
    assert ranged and ranged[0].headers["Range"].startswith("bytes=")
    assert int(ranged[0].headers["Range"][6:].rstrip("-")) > 0
    assert (tmp_path / "r" / "blob.bin").read_bytes() == payload
    _assert_like_umoci(layout, "t", tmp_path / "r", tmp_path)
    assert doc["bytes_fetched"] == doc["size"]


def test_ctrl_c_leaves_nothing_half_written(
    tmp_path: Path, registry: Registry, unlade_root: Path
) -> None:
    import signal
    import sys
    import time

    layout = tmp_path / "layout"
    images.build_layout(layout, "t", [[images.file("big.bin", os.urandom(8 << 20))]])
    images.push(layout, "t", registry, "faults/slow")
    target = tmp_path / "rootfs"
    # 64 KiB/s: a download thread sits in a socket read for a long time; Ctrl-C must not
    # wait for it (the read is shut down), so the whole exit takes seconds, not minutes.
    with FaultProxy(registry.host, rate=64 << 10) as proxy:
        env = {**os.environ, "UNLADE_ROOT": str(unlade_root)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "unlade", "pull", "--plain-http",
             f"{proxy.host}/faults/slow:t", "--rootfs", str(target)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".rootfs.unlade-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.strip().startswith("unlade:") and len(err.strip().splitlines()) == 1
    assert not target.exists()
    assert list(tmp_path.glob(".rootfs*")) == []
    assert list((unlade_root / "ingest").iterdir()) == []
    layer = images.tagged_descriptor(layout, "t")
    assert layer  # the manifest may be stored; partial layer blobs may not
    for blob in (unlade_root / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        import hashlib

        assert hashlib.sha256(data).hexdigest() == blob.name


def test_rootfs_must_be_absent_or_empty(
    tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade
) -> None:
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep").write_text("mine")
    proc = run_unlade("pull", "--plain-http", tricky_image.ref, "--rootfs", target)
    assert proc.returncode == 1 and "is not empty" in proc.stderr
    assert [p.name for p in target.iterdir()] == ["keep"]
    empty = tmp_path / "empty"
    empty.mkdir()
    run_unlade("pull", "--plain-http", tricky_image.ref, "--rootfs", empty, check=True)
    assert any(empty.iterdir())


def test_library_api(tmp_path: Path, tricky_image: PushedImage) -> None:
    from unlade import Client, PullResult

    client = Client(tmp_path / "store", plain_http=True)
    result = client.pull(tricky_image.ref, rootfs=tmp_path / "lib")
    assert isinstance(result, PullResult)
    assert result.manifest_digest == tricky_image.digest
    assert result.rootfs == str(tmp_path / "lib")
    assert shutil.disk_usage(tmp_path / "lib")


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_errors_are_retried(
    status: int, tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade
) -> None:
    with FaultProxy(tricky_image.registry.host, fail_first=2, fail_status=status) as proxy:
        ref = tricky_image.ref.replace(tricky_image.registry.host, proxy.host)
        _pull_json(run_unlade, ref, tmp_path / "r")
    assert proxy.injected == 2
    first_three = [r.path for r in proxy.requests[:3]]
    assert first_three[0] == first_three[1] == first_three[2]  # the same request, retried


def test_persistent_server_error_fails_with_status(
    tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade
) -> None:
    with FaultProxy(tricky_image.registry.host, fail_first=100, fail_status=503) as proxy:
        ref = tricky_image.ref.replace(tricky_image.registry.host, proxy.host)
        proc = run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "r")
    assert proc.returncode == 1
    assert "answered HTTP 503" in proc.stderr
    assert 2 <= proxy.injected <= 10  # bounded retries


def test_blob_redirect_to_another_host_drops_authorization(
    tmp_path: Path, auth_registry: Registry, registry: Registry, run_unlade: RunUnlade
) -> None:
    """Blobs redirected (as to a CDN) are fetched without the registry's credentials."""
    layout = tmp_path / "layout"
    images.build_layout(layout, "t", [[images.file("f", "redirected")]])
    images.push(layout, "t", auth_registry, "redir/img")
    images.push(layout, "t", registry, "redir/img")  # the "CDN" serves the same blobs
    user, password = auth_registry.credentials  # type: ignore[misc]
    with FaultProxy(registry.host, bind="127.0.0.2") as cdn, \
            FaultProxy(auth_registry.host, redirect_blobs_to=cdn.host) as front:
        run_unlade("pull", "--plain-http", "--creds", f"{user}:{password}",
                   f"{front.host}/redir/img:t", "--rootfs", tmp_path / "r", check=True)
    assert (tmp_path / "r" / "f").read_text() == "redirected"
    _assert_like_umoci(layout, "t", tmp_path / "r", tmp_path)
    assert any("Authorization" in r.headers for r in front.requests)
    blob_gets = [r for r in cdn.requests if "/blobs/" in r.path]
    assert len(blob_gets) == 2  # config and layer
    assert not any("Authorization" in r.headers for r in cdn.requests)


def test_two_processes_pulling_into_one_store_both_succeed(
    tmp_path: Path, registry: Registry, unlade_root: Path
) -> None:
    import sys

    layout = tmp_path / "layout"
    layers = [[images.file(f"f{i}", os.urandom(2 << 20))] for i in range(3)]
    images.build_layout(layout, "t", layers)
    images.push(layout, "t", registry, "concurrent/img")
    env = {**os.environ, "UNLADE_ROOT": str(unlade_root)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "unlade", "pull", "--plain-http", "-q",
                          f"{registry.host}/concurrent/img:t", "--rootfs", str(tmp_path / n)],
                         env=env, stderr=subprocess.PIPE, text=True)
        for n in ("a", "b")
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert_same_tree(tmp_path / "a", tmp_path / "b")
    _assert_like_umoci(layout, "t", tmp_path / "a", tmp_path)
    assert list((unlade_root / "ingest").iterdir()) == []


def test_work_dirs_left_by_killed_pulls_are_swept(
    tmp_path: Path, tricky_image: PushedImage, run_unlade: RunUnlade
) -> None:
    """A pull killed with SIGKILL leaves its hidden work directory beside the target; the
    next pull to that target removes it, but never one a running pull holds."""
    import fcntl

    stale = tmp_path / ".r.unlade-dead1234"
    busy = tmp_path / ".r.unlade-busy5678"
    for d in (stale, busy):
        (d / "etc").mkdir(parents=True)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _pull_json(run_unlade, tricky_image.ref, tmp_path / "r")
        assert not stale.exists() and busy.exists()
    finally:
        os.close(fd)
