"""OCI runtime bundles (``unlade.bundle``): the spec generated from an image config, user
resolution inside the rootfs (never the host's files), and a real ``runc run`` of a pulled
busybox image."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import images as im
from harness.images import PushedImage
from harness.registry import Registry
from harness.tools import require_tool, unavailable

from unlade import Client
from unlade.bundle import (
    DEFAULT_PATH,
    MAX_DB_SIZE,
    ExecUser,
    read_root_file,
    resolve_user,
    runtime_spec,
    write_bundle,
)
from unlade.errors import ConfigError, UnladeError

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
alice:x:1000:1000:Alice:/home/alice:/bin/sh
bob:x:1001:1001::/home/bob:/bin/sh
nohome:x:1002:1002::
mallory:x:abc:0::/:/bin/sh
alice:x:2000:2000:second alice, ignored:/nowhere:/bin/sh
"""

GROUP = """\
root:x:0:
wheel:x:10:alice,root
alice:x:1000:
bob:x:1001:
# a comment line
staff:x:50:bob,alice
audio:x:29:alice
alsoaudio:x:29:carol
"""

#: What a host's passwd might say: an image symlinking to it must not see these.
HOSTILE_PASSWD = "alice:x:0:0:host root:/root:/bin/sh\nevil:x:0:0::/evil:/bin/sh\n"


def make_rootfs(tmp_path: Path, passwd: str | None = PASSWD,
                group: str | None = GROUP) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    if passwd is not None:
        (root / "etc" / "passwd").write_text(passwd)
    if group is not None:
        (root / "etc" / "group").write_text(group)
    return root


def image_config(**config: Any) -> dict[str, Any]:
    return {"architecture": "amd64", "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": []}}


# ----------------------------------------------------------------------------------------------
# User resolution


@pytest.mark.parametrize(("spec", "expected"), [
    ("", ExecUser(0, 0, (10,), "/root")),
    ("root", ExecUser(0, 0, (10,), "/root")),
    ("alice", ExecUser(1000, 1000, (10, 50, 29), "/home/alice")),
    ("1000", ExecUser(1000, 1000, (10, 50, 29), "/home/alice")),  # as runc's GetExecUser
    ("bob", ExecUser(1001, 1001, (50,), "/home/bob")),
    ("nohome", ExecUser(1002, 1002, (), "/")),
    ("alice:staff", ExecUser(1000, 50, (), "/home/alice")),
    ("alice:29", ExecUser(1000, 29, (), "/home/alice")),
    ("alice:alsoaudio", ExecUser(1000, 29, (), "/home/alice")),
    ("alice:4343", ExecUser(1000, 4343, (), "/home/alice")),  # numeric gid need not exist
    ("1000:1000", ExecUser(1000, 1000, (), "/home/alice")),
    ("1001:staff", ExecUser(1001, 50, (), "/home/bob")),
    ("4242", ExecUser(4242, 0, (), "/")),  # numeric uid need not exist: gid 0
    ("4242:4343", ExecUser(4242, 4343, (), "/")),
    ("4242:wheel", ExecUser(4242, 10, (), "/")),
    (":staff", ExecUser(0, 50, (), "/root")),
    ("+7", ExecUser(7, 0, (), "/")),
])
def test_user_forms(tmp_path: Path, spec: str, expected: ExecUser) -> None:
    assert resolve_user(spec, make_rootfs(tmp_path)) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("nobody", "no user 'nobody' in the image's /etc/passwd"),
    ("mallory", "no user 'mallory'"),  # its uid is not a number: the line is skipped
    ("alice:nogroup", "no group 'nogroup' in the image's /etc/group"),
    ("4242:nogroup", "no group 'nogroup'"),
    ("nobody:0", "no user 'nobody'"),
    ("-1", "uid -1 is out of range"),
    ("2147483648", "uid 2147483648 is out of range"),
    ("0:-5", "gid -5 is out of range"),
    ("a:b:c", r"is not user\[:group\]"),
])
def test_user_errors(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        resolve_user(spec, make_rootfs(tmp_path))
    assert isinstance(info.value, UnladeError)
    assert "\n" not in str(info.value)


def test_user_without_passwd_or_group(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None, group=None)
    assert resolve_user("", root) == ExecUser(0, 0, (), "/")
    assert resolve_user("1000:1000", root) == ExecUser(1000, 1000, (), "/")
    with pytest.raises(ConfigError, match=r"no user 'alice' in the image's /etc/passwd "
                                          r"\(the image has none\)"):
        resolve_user("alice", root)
    with pytest.raises(ConfigError, match=r"no group 'staff' .*has none"):
        resolve_user("0:staff", root)
    shutil.rmtree(root / "etc")  # no /etc at all
    assert resolve_user("5:6", root) == ExecUser(5, 6, (), "/")


def test_user_without_rootfs() -> None:
    assert resolve_user("1000:1000", None) == ExecUser(1000, 1000, (), "/")
    with pytest.raises(ConfigError, match="no rootfs given"):
        resolve_user("alice", None)


def test_missing_rootfs_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot open rootfs"):
        resolve_user("alice", tmp_path / "absent")


# Hostile images: /etc/passwd (or /etc) symlinked out of the root.


@pytest.fixture
def host_files(tmp_path: Path) -> Path:
    """A directory outside the rootfs standing for the host's /etc."""
    host = tmp_path / "host" / "etc"
    host.mkdir(parents=True)
    (host / "passwd").write_text(HOSTILE_PASSWD)
    (host / "group").write_text("evil:x:0:alice\n")
    return host


@pytest.mark.parametrize("how", ["absolute", "relative", "etc-absolute", "etc-relative",
                                 "chain"])
def test_symlinked_passwd_does_not_leave_the_root(tmp_path: Path, host_files: Path,
                                                  how: str) -> None:
    root = make_rootfs(tmp_path, passwd=None, group=None)
    etc = root / "etc"
    depth = "../" * (len(root.parts) + 3)
    if how == "absolute":
        (etc / "passwd").symlink_to(host_files / "passwd")
        (etc / "group").symlink_to(host_files / "group")
    elif how == "relative":
        (etc / "passwd").symlink_to(depth + str(host_files / "passwd").lstrip("/"))
        (etc / "group").symlink_to(depth + str(host_files / "group").lstrip("/"))
    elif how == "etc-absolute":
        etc.rmdir()
        etc.symlink_to(host_files)
    elif how == "etc-relative":
        etc.rmdir()
        etc.symlink_to(depth + str(host_files).lstrip("/"))
    else:  # in-root hops that end outside: /etc/passwd -> /lnk/passwd, /lnk -> host
        (etc / "passwd").symlink_to("/lnk/passwd")
        (root / "lnk").symlink_to(host_files)
    assert read_root_file(root, "/etc/passwd") is None
    with pytest.raises(ConfigError, match="no user 'evil'"):
        resolve_user("evil", root)
    with pytest.raises(ConfigError, match="no user 'alice'"):
        resolve_user("alice", root)
    assert resolve_user("1000", root) == ExecUser(1000, 0, (), "/")
    assert (host_files / "passwd").read_text() == HOSTILE_PASSWD


@pytest.mark.parametrize("how", ["absolute", "relative", "climbing", "etc-dir", "chain"])
def test_symlinked_passwd_is_followed_inside_the_root(tmp_path: Path, host_files: Path,
                                                      how: str) -> None:
    """The same links resolve as in the container when their target is in the image."""
    root = make_rootfs(tmp_path, passwd=None, group=None)
    real = root / "usr" / "lib" / "db"
    real.mkdir(parents=True)
    (real / "passwd").write_text(PASSWD)
    (real / "group").write_text(GROUP)
    etc = root / "etc"
    if how == "absolute":
        (etc / "passwd").symlink_to("/usr/lib/db/passwd")
        (etc / "group").symlink_to("/usr/lib/db/group")
    elif how == "relative":
        (etc / "passwd").symlink_to("../usr/lib/db/passwd")
        (etc / "group").symlink_to("../usr/lib/db/group")
    elif how == "climbing":  # `..` above the root stays at the root, as in the container
        (etc / "passwd").symlink_to("../../../../../../../../usr/lib/db/passwd")
        (etc / "group").symlink_to("/../../usr/lib/db/group")
    elif how == "etc-dir":
        etc.rmdir()
        etc.symlink_to("usr/lib/db")
    else:
        (etc / "passwd").symlink_to("p1")
        (etc / "p1").symlink_to("/usr/lib/../lib/db/p2")
        (real / "p2").symlink_to("passwd")
        (etc / "group").symlink_to(host_files / "group")  # absent inside: no groups
    expected_groups = () if how == "chain" else (10, 50, 29)
    assert resolve_user("alice", root) == ExecUser(1000, 1000, expected_groups, "/home/alice")


def test_passwd_symlink_loop(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "etc" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ConfigError, match="too many levels of symbolic links"):
        resolve_user("alice", root)


def test_passwd_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    os.mkfifo(root / "etc" / "passwd")
    with pytest.raises(ConfigError, match="/etc/passwd in the image is not a regular file"):
        resolve_user("alice", root)


def test_passwd_directory_is_refused(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path, passwd=None)
    (root / "etc" / "passwd").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        resolve_user("0", root)


def test_passwd_size_is_capped(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path)
    assert read_root_file(root, "etc/passwd", limit=len(PASSWD)) == PASSWD.encode()
    with pytest.raises(ConfigError, match=f"larger than {len(PASSWD) - 1} bytes"):
        read_root_file(root, "etc/passwd", limit=len(PASSWD) - 1)
    with open(root / "etc" / "passwd", "ab") as f:  # sparse: no 4 MiB written
        f.truncate(MAX_DB_SIZE + 1)
    with pytest.raises(ConfigError, match=f"/etc/passwd in the image is larger than "
                                          f"{MAX_DB_SIZE} bytes"):
        resolve_user("alice", root)


# ----------------------------------------------------------------------------------------------
# The spec


@pytest.mark.parametrize(("entrypoint", "cmd", "args", "expected"), [
    (["/entry", "-x"], None, None, ["/entry", "-x"]),
    (None, ["/bin/sh", "-c", "true"], None, ["/bin/sh", "-c", "true"]),
    (["/entry"], ["a", "b"], None, ["/entry", "a", "b"]),
    (["/entry"], [], None, ["/entry"]),
    ([], ["/cmd"], None, ["/cmd"]),
    (["/entry"], ["a"], ["x", "y"], ["/entry", "x", "y"]),  # args replace Cmd
    (["/entry"], ["a"], [], ["/entry"]),
    (None, ["a"], ["/other"], ["/other"]),
    (None, None, ["/given"], ["/given"]),
])
def test_args(entrypoint: list[str] | None, cmd: list[str] | None, args: list[str] | None,
              expected: list[str]) -> None:
    spec = runtime_spec(image_config(Entrypoint=entrypoint, Cmd=cmd), None, args=args)
    assert spec["process"]["args"] == expected


@pytest.mark.parametrize("config", [
    {},
    {"Entrypoint": None, "Cmd": None},
    {"Entrypoint": [], "Cmd": []},
])
def test_nothing_to_run(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="neither Entrypoint nor Cmd"):
        runtime_spec(image_config(**config), None)
    with pytest.raises(ConfigError, match="neither Entrypoint nor Cmd"):
        runtime_spec({"architecture": "amd64", "os": "linux"}, None)  # no "config" at all
    with pytest.raises(ConfigError, match="neither"):
        runtime_spec(image_config(Cmd=["x"]), None, args=[])


@pytest.mark.parametrize(("config", "message"), [
    ({"Cmd": "/bin/sh -c true"}, "Cmd is not a list of strings"),
    ({"Entrypoint": ["/x", 1]}, "Entrypoint is not a list of strings"),
    ({"Cmd": ["/x"], "Env": ["FOO"]}, "Env entry 'FOO' is not NAME=value"),
    ({"Cmd": ["/x"], "Env": ["=x"]}, "Env entry '=x'"),
    ({"Cmd": ["/x"], "Env": "A=b"}, "Env is not a list of strings"),
    ({"Cmd": ["/x"], "WorkingDir": 5}, "WorkingDir is not a string"),
    ({"Cmd": ["/x"], "User": 0}, "User is not a string"),
])
def test_malformed_config(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        runtime_spec(image_config(**config), None)
    with pytest.raises(ConfigError, match="not a JSON object"):
        runtime_spec({"config": ["Cmd"]}, None)
    with pytest.raises(ConfigError, match="not one string"):
        runtime_spec(image_config(Cmd=["/x"]), None, args="/bin/sh -c true")


def test_env_defaults(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path)
    spec = runtime_spec(image_config(Cmd=["/x"], Env=["A=1", "B=x=y"], User="alice"), root)
    assert spec["process"]["env"] == [f"PATH={DEFAULT_PATH}", "A=1", "B=x=y",
                                      "HOME=/home/alice"]
    spec = runtime_spec(image_config(Cmd=["/x"], Env=["PATH=/p", "HOME=/h", "TERM=vt100"],
                                     User="alice"), root, terminal=True)
    assert spec["process"]["env"] == ["PATH=/p", "HOME=/h", "TERM=vt100"]  # verbatim
    assert spec["process"]["terminal"] is True
    spec = runtime_spec(image_config(Cmd=["/x"], User="4242"), root, terminal=True)
    assert spec["process"]["env"] == [f"PATH={DEFAULT_PATH}", "HOME=/", "TERM=xterm"]


@pytest.mark.parametrize(("workdir", "cwd"), [
    (None, "/"), ("", "/"), ("/work", "/work"), ("/srv/app/", "/srv/app/"),
    ("rel/dir", "/rel/dir"), ("../x", "/x"), (".", "/"),
])
def test_cwd(workdir: str | None, cwd: str) -> None:
    spec = runtime_spec(image_config(Cmd=["/x"], WorkingDir=workdir), None)
    assert spec["process"]["cwd"] == cwd


def test_user_in_spec(tmp_path: Path) -> None:
    root = make_rootfs(tmp_path)
    spec = runtime_spec(image_config(Cmd=["/x"], User="alice"), root)
    assert spec["process"]["user"] == {"uid": 1000, "gid": 1000, "additionalGids": [10, 50, 29]}
    spec = runtime_spec(image_config(Cmd=["/x"], User="1001:1001"), root)
    assert spec["process"]["user"] == {"uid": 1001, "gid": 1001}
    with pytest.raises(ConfigError, match="no user 'ghost'"):
        runtime_spec(image_config(Cmd=["/x"], User="ghost"), root)


def test_root_and_flags() -> None:
    spec = runtime_spec(image_config(Cmd=["/x"]), None)
    assert spec["root"] == {"path": "rootfs", "readonly": False}
    assert spec["process"]["terminal"] is False
    spec = runtime_spec(image_config(Cmd=["/x"]), None, root_path="/abs/fs", readonly=True)
    assert spec["root"] == {"path": "/abs/fs", "readonly": True}


def test_annotations() -> None:
    cfg = image_config(
        Cmd=["/x"], StopSignal="SIGQUIT",
        ExposedPorts={"8080/tcp": {}, "53/udp": {}},
        Labels={"org.opencontainers.image.architecture": "label-wins",
                "org.opencontainers.image.title": "demo",
                "io.katacontainers.config.hypervisor.kernel_params": "evil",
                "run.oci.keep_original_groups": "1", "maintainer": "me"})
    cfg.update({"variant": "v8", "author": "someone", "created": "2020-09-13T12:26:40Z",
                "os.features": ["a", "b"]})
    spec = runtime_spec(cfg, None)
    assert spec["annotations"] == {
        "org.opencontainers.image.os": "linux",
        "org.opencontainers.image.architecture": "label-wins",
        "org.opencontainers.image.variant": "v8",
        "org.opencontainers.image.os.features": "a,b",
        "org.opencontainers.image.author": "someone",
        "org.opencontainers.image.created": "2020-09-13T12:26:40Z",
        "org.opencontainers.image.stopSignal": "SIGQUIT",
        "org.opencontainers.image.exposedPorts": "53/udp,8080/tcp",
        "org.opencontainers.image.title": "demo",
    }
    assert "annotations" not in runtime_spec({"config": {"Cmd": ["/x"]}}, None)


def test_defaults_are_runc_spec(tmp_path: Path) -> None:
    """Everything but the image's own fields is what `runc spec` writes on this machine;
    the only differences are the ones chosen (and documented) here."""
    require_tool("runc")
    subprocess.run(["runc", "spec", "--bundle", str(tmp_path)], check=True,
                   capture_output=True, timeout=60)
    ref = json.loads((tmp_path / "config.json").read_text())
    cfg = image_config(Cmd=["sh"], WorkingDir="/", Env=[f"PATH={DEFAULT_PATH}"])

    expected = json.loads(json.dumps(ref))
    expected["ociVersion"] = "1.0.2"                   # runc 1.1 writes "1.0.2-dev"
    expected["process"]["env"] = [f"PATH={DEFAULT_PATH}", "HOME=/", "TERM=xterm"]
    expected["annotations"] = {"org.opencontainers.image.os": "linux",
                               "org.opencontainers.image.architecture": "amd64"}
    assert runtime_spec(cfg, None, terminal=True, readonly=True) == expected

    expected["process"]["terminal"] = False             # no terminal by default
    expected["process"]["env"] = [f"PATH={DEFAULT_PATH}", "HOME=/"]
    expected["root"]["readonly"] = False                # a writable root by default
    assert runtime_spec(cfg, None) == expected


# ----------------------------------------------------------------------------------------------
# write_bundle


def test_write_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir(mode=0o755)
    make_rootfs(bundle)
    os.chmod(bundle / "rootfs", 0o700)  # as unlade unpacks it
    cfg = image_config(Cmd=["/bin/sh"], User="alice", WorkingDir="/work")
    old = os.umask(0o077)
    try:
        path = write_bundle(bundle, cfg)
    finally:
        os.umask(old)
    assert path == bundle / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((bundle / "rootfs").stat().st_mode) == 0o755
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == runtime_spec(cfg, bundle / "rootfs")
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "rootfs"]

    cfg["config"]["Cmd"] = ["/bin/true"]  # replaced in place
    write_bundle(bundle, cfg, terminal=True, readonly=True, args=["/bin/false"])
    spec = json.loads(path.read_text())
    assert spec["process"]["args"] == ["/bin/false"]
    assert spec["process"]["terminal"] is True
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    assert sorted(p.name for p in bundle.iterdir()) == ["config.json", "rootfs"]


def test_write_bundle_needs_the_rootfs(tmp_path: Path) -> None:
    cfg = image_config(Cmd=["/bin/sh"], User="1000:1000")
    with pytest.raises(ConfigError, match="has no rootfs directory"):
        write_bundle(tmp_path / "b1", cfg)
    (tmp_path / "b2").mkdir()
    (tmp_path / "b2" / "rootfs").symlink_to(make_rootfs(tmp_path))
    with pytest.raises(ConfigError, match="is not a directory"):
        write_bundle(tmp_path / "b2", cfg)
    assert not (tmp_path / "b2" / "config.json").exists()


def test_write_bundle_before_the_rootfs(tmp_path: Path) -> None:
    bundle = tmp_path / "new" / "bundle"
    path = write_bundle(bundle, image_config(Cmd=["/bin/sh"], User="1000:1000"),
                        rootfs_ready=False)
    assert json.loads(path.read_text())["process"]["user"] == {"uid": 1000, "gid": 1000}
    assert not (bundle / "rootfs").exists()
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o700
    with pytest.raises(ConfigError, match="no rootfs given"):
        write_bundle(bundle, image_config(Cmd=["/bin/sh"], User="alice"), rootfs_ready=False)


# ----------------------------------------------------------------------------------------------
# End to end: pull a busybox image with unlade, write the bundle, `runc run` it.

BUSYBOX = Path("/bin/busybox")
E2E_PASSWD = ("root:x:0:0:root:/root:/bin/sh\n"
              "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n")
E2E_GROUP = "root:x:0:\nwheel:x:10:alice\nalice:x:1000:\nstaff:x:50:alice\n"


@pytest.fixture(scope="module")
def busybox_image(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> PushedImage:
    require_tool("runc", "skopeo")
    if not BUSYBOX.is_file():
        unavailable("needs /bin/busybox (Debian's busybox-static)")
    applets = ["sh", "id", "pwd", "echo", "ls"]
    layer = [
        im.directory("bin"),
        im.file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *(im.symlink(f"bin/{a}", "busybox") for a in applets),
        im.directory("etc"),
        im.file("etc/passwd", E2E_PASSWD),
        im.file("etc/group", E2E_GROUP),
        im.directory("home"),
        im.directory("home/alice", mode=0o750, uid=1000, gid=1000),
        im.directory("work", mode=0o755, uid=1000, gid=1000),
        im.directory("tmp", mode=0o1777),
    ]
    layout = tmp_path_factory.mktemp("busybox-bundle") / "layout"
    return im.build_and_push(
        layout, registry, "bundle/busybox", "v1", [layer],
        config_overrides={"config": {
            "Cmd": ["/bin/sh", "-c", "echo hello-from-$(id -u):$(id -g) in $(pwd)"],
            "User": "1000:1000",
            "WorkingDir": "/work",
        }})


def _pull_bundle(image: PushedImage, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    bundle = tmp_path / "bundle"
    bundle.mkdir(mode=0o700)
    client = Client(tmp_path / "store", plain_http=True)
    result = client.pull(image.ref, rootfs=bundle / "rootfs")
    config = json.loads(client.store.read_small(result.config_digest, 1 << 20))
    return bundle, config


def _runc_run(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    state = tmp_path / "runc-state"
    cid = f"test-{secrets.token_hex(6)}"
    try:
        return subprocess.run(["runc", "--root", str(state), "run", "--bundle", str(bundle),
                               cid], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)
    finally:
        subprocess.run(["runc", "--root", str(state), "delete", "--force", cid],
                       capture_output=True, timeout=60)


@pytest.mark.root
@pytest.mark.tools
def test_runc_runs_the_pulled_image(busybox_image: PushedImage, tmp_path: Path) -> None:
    bundle, config = _pull_bundle(busybox_image, tmp_path)
    write_bundle(bundle, config)
    proc = _runc_run(bundle, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello-from-1000:1000 in /work\n"


@pytest.mark.root
@pytest.mark.tools
def test_runc_named_user_gets_its_groups_and_home(busybox_image: PushedImage,
                                                  tmp_path: Path) -> None:
    bundle, config = _pull_bundle(busybox_image, tmp_path)
    config["config"]["User"] = "alice"
    write_bundle(bundle, config, args=[
        "/bin/sh", "-c", 'echo "$(id -u)|$(id -g)|$(id -G)|$HOME|$PATH|$(pwd)"'])
    proc = _runc_run(bundle, tmp_path)
    assert proc.returncode == 0, proc.stderr
    uid, gid, groups, home, path, cwd = proc.stdout.rstrip("\n").split("|")
    assert (uid, gid, home, path, cwd) == ("1000", "1000", "/home/alice", DEFAULT_PATH, "/work")
    assert set(groups.split()) == {"1000", "10", "50"}


@pytest.mark.root
@pytest.mark.tools
def test_unlade_bundle_on_an_overlay_runs_under_runc(busybox_image: PushedImage,
                                                      tmp_path: Path) -> None:
    """`unlade bundle`: the image pulled into snapshots, mounted as an overlay at
    BUNDLE/rootfs, config.json generated; runc runs it; unmount cleans up."""
    client = Client(tmp_path / "store", plain_http=True)
    client.pull(busybox_image.ref)
    bundle = tmp_path / "bundle"
    client.bundle(busybox_image.ref, bundle)
    try:
        proc = _runc_run(bundle, tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "hello-from-1000:1000 in /work\n"
    finally:
        client.unmount(bundle / "rootfs")
    assert list((bundle / "rootfs").iterdir()) == []
