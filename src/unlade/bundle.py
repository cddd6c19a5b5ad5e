"""OCI runtime bundles: a ``config.json`` generated from an image config, next to ``rootfs``.

The conversion follows the OCI image spec's ``conversion.md``; the defaults (mounts,
namespaces, masked and read-only paths, capabilities, rlimits, device cgroup, hostname) are
those of ``runc spec`` 1.1, without a terminal:

- ``process.args`` is ``Entrypoint + Cmd`` (``args=`` replaces ``Cmd``, as the arguments of
  ``docker run IMAGE ARGS`` do); an empty result is an error.
- ``process.env`` is ``Env`` verbatim, plus ``PATH`` (runc's default) and ``HOME`` (from
  ``/etc/passwd``, else ``/``) when ``Env`` has none, and ``TERM=xterm`` with a terminal.
- ``process.cwd`` is ``WorkingDir`` (``/`` when empty; a relative one is taken from ``/``).
- ``process.user`` resolves ``User`` as runc's ``user.GetExecUser`` does (containerd and
  Docker use it too), reading the image's own ``/etc/passwd`` and ``/etc/group``.
- ``annotations`` holds the ``org.opencontainers.image.*`` keys of conversion.md (os,
  architecture, variant, os.version, os.features, author, created, stopSignal,
  exposedPorts) and the ``Labels`` in that namespace, which take precedence. Other labels
  are left out: runtimes act on annotations of their own namespaces (``io.katacontainers.*``,
  ``run.oci.*``), and an image must not be able to configure the runtime that way.

The image's files are read only through :class:`unlade.layer.RootFS`: symlinks (``/etc``,
``/etc/passwd`` itself) are resolved against the rootfs as the container would see them,
never against the host, and only regular files of at most :data:`MAX_DB_SIZE` are read.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .layer import MAX_SYMLINKS, RootFS, _Fail

__all__ = ["DEFAULT_PATH", "MAX_DB_SIZE", "ExecUser", "read_root_file", "resolve_user",
           "runtime_spec", "write_bundle"]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Largest ``/etc/passwd`` or ``/etc/group`` read from an image.
MAX_DB_SIZE = 4 << 20
_MAX_ID = (1 << 31) - 1  # runc's maxID
_NUMERIC = re.compile(r"[+-]?[0-9]+")  # what Go's strconv.Atoi takes
_ANNOTATION_PREFIX = "org.opencontainers.image."

_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def _runc_defaults() -> dict[str, Any]:
    """What ``runc spec`` (1.1) writes, except the process fields taken from the image."""
    return {
        "capabilities": {k: list(_CAPS) for k in ("bounding", "effective", "permitted",
                                                  "ambient")},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                         "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
            ],
        },
    }


# ----------------------------------------------------------------------------------------------
# Reading the image's /etc/passwd and /etc/group


def read_root_file(rootfs: str | os.PathLike[str], name: str,
                   limit: int = MAX_DB_SIZE) -> bytes | None:
    """The bytes of regular file ``name`` (e.g. ``"/etc/passwd"``) of ``rootfs`` as the
    container sees it, or None when it does not exist there.

    Every symlink on the way, the file's own included, is resolved inside the root (an
    absolute target or ``..`` never leaves it). Anything but a regular file, a chain of
    more than 255 symlinks, or a file larger than ``limit`` is a :class:`ConfigError`;
    nothing but a regular file is ever opened.
    """
    shown = "/" + name.strip("/")
    try:
        fs = RootFS(rootfs)
    except OSError as err:
        raise ConfigError(f"cannot open rootfs {os.fspath(rootfs)!r}: {err.strerror}") from None
    try:
        path, links = name, 0
        while True:
            parent, base = posixpath.split(posixpath.normpath("/" + path).lstrip("/"))
            if not base:
                raise ConfigError(f"{shown} in the image is the root directory")
            try:
                canon = fs.resolve_dir(parent, create=False)
                pfd = fs.fd(canon)
                st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            except (_Fail, FileNotFoundError, NotADirectoryError):
                return None  # a parent is missing or not a directory, or no such file
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise ConfigError(f"{shown} in the image: too many levels of symbolic links")
                target = os.readlink(base, dir_fd=pfd)
                path = target if target.startswith("/") else "/".join((*canon, target))
                continue
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"{shown} in the image is not a regular file")
            return _read_regular(pfd, base, st, limit, shown)
    except OSError as err:
        raise ConfigError(f"cannot read {shown} in the image: {err.strerror}") from None
    finally:
        fs.close()


def _read_regular(pfd: int, base: str, st: os.stat_result, limit: int, shown: str) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(base, flags, dir_fd=pfd)
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode) or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise ConfigError(f"{shown} in the image changed while being read")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise ConfigError(f"{shown} in the image is larger than {limit} bytes")
    return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class _Passwd:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True, slots=True)
class _Group:
    name: str
    gid: int
    members: tuple[str, ...]


def _lines(data: bytes) -> list[list[str]]:
    out = []
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def _int(text: str) -> int | None:
    return int(text) if _NUMERIC.fullmatch(text) else None


def _parse_passwd(data: bytes) -> list[_Passwd]:
    """``name:password:uid:gid:gecos:home:shell`` lines; lines whose uid or gid is not a
    number are skipped (runc would read them as 0, i.e. root)."""
    users = []
    for f in _lines(data):
        f += [""] * (7 - len(f))
        uid, gid = _int(f[2]), _int(f[3])
        if uid is not None and gid is not None:
            users.append(_Passwd(f[0], uid, gid, f[5]))
    return users


def _parse_group(data: bytes) -> list[_Group]:
    """``name:password:gid:member,member`` lines (same rule for the gid as above)."""
    groups = []
    for f in _lines(data):
        f += [""] * (4 - len(f))
        gid = _int(f[2])
        if gid is not None:
            groups.append(_Group(f[0], gid, tuple(m for m in f[3].split(",") if m)))
    return groups


# ----------------------------------------------------------------------------------------------
# User resolution


@dataclass(frozen=True, slots=True)
class ExecUser:
    """The resolved ``User`` of an image: ids, supplementary groups and home directory."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"


def _check_id(value: int, what: str, spec: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise ConfigError(f"image user {spec!r}: {what} {value} is out of range "
                          f"(0 to {_MAX_ID})")
    return value


def resolve_user(spec: str, rootfs: str | os.PathLike[str] | None) -> ExecUser:
    """Resolve an image's ``User`` (``""``, ``name``, ``uid``, ``name:group``, ``uid:gid``,
    ``name:gid``, ``uid:group``) against ``rootfs``'s ``/etc/passwd`` and ``/etc/group``.

    The rules are runc's ``user.GetExecUser``: a numeric user is a uid (its passwd entry,
    if any, gives gid and home; without one the gid is 0); ``""`` is uid 0; a name must be
    in passwd. An explicit group sets the gid (a number need not be in ``/etc/group``, a
    name must); without one, a user found in passwd gets the gids of the groups listing
    them as a member as supplementary groups. The first matching entry wins. HOME is the
    passwd entry's, else ``/``. With ``rootfs=None`` nothing is read: only numbers resolve.
    Unknown names and ids out of range raise :class:`ConfigError`.
    """
    if spec.count(":") > 1:
        raise ConfigError(f"image user {spec!r} is not user[:group]")
    user_arg, _, group_arg = spec.partition(":")
    uid_arg, gid_arg = _int(user_arg), _int(group_arg)

    passwd = read_root_file(rootfs, "etc/passwd") if rootfs is not None else None
    group = read_root_file(rootfs, "etc/group") if rootfs is not None else None
    users = _parse_passwd(passwd) if passwd is not None else []

    uid, gid, home = 0, 0, "/"
    if not user_arg:
        match = next((u for u in users if u.uid == 0), None)
    elif uid_arg is not None:
        match = next((u for u in users if u.uid == uid_arg), None)
    else:
        match = next((u for u in users if u.name == user_arg), None)
    if match is not None:
        uid, gid, home = match.uid, match.gid, match.home or "/"
    elif uid_arg is not None:
        uid = _check_id(uid_arg, "uid", spec)
    elif user_arg:
        where = _missing(rootfs, passwd, "/etc/passwd")
        raise ConfigError(f"image user {spec!r}: no user {user_arg!r} in {where}")

    additional: tuple[int, ...] = ()
    if group_arg or match is not None:
        groups = _parse_group(group) if group is not None else []
        if group_arg:
            if gid_arg is not None:
                found = next((g for g in groups if g.gid == gid_arg), None)
            else:
                found = next((g for g in groups if g.name == group_arg), None)
            if found is not None:
                gid = found.gid
            elif gid_arg is not None:
                gid = _check_id(gid_arg, "gid", spec)
            else:
                where = _missing(rootfs, group, "/etc/group")
                raise ConfigError(f"image user {spec!r}: no group {group_arg!r} in {where}")
        elif match is not None:
            gids = [g.gid for g in groups if match.name in g.members]
            additional = tuple(dict.fromkeys(gids))
    return ExecUser(uid, gid, additional, home)


def _missing(rootfs: str | os.PathLike[str] | None, data: bytes | None, name: str) -> str:
    if rootfs is None:
        return f"the image's {name} (no rootfs given to read it from)"
    if data is None:
        return f"the image's {name} (the image has none)"
    return f"the image's {name}"


# ----------------------------------------------------------------------------------------------
# The runtime spec


def _strings(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"image config: {what} is not a list of strings")
    return list(value)


def _string(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"image config: {what} is not a string")
    return value


def _annotations(image_config: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, str]:
    """conversion.md's implicit annotations, then the image's own labels in the
    ``org.opencontainers.image.`` namespace (which win)."""
    out: dict[str, str] = {}
    for field, key in (("os", "os"), ("architecture", "architecture"), ("variant", "variant"),
                       ("os.version", "os.version"), ("author", "author"),
                       ("created", "created")):
        value = image_config.get(field)
        if isinstance(value, str) and value:
            out[_ANNOTATION_PREFIX + key] = value
    features = image_config.get("os.features")
    if isinstance(features, list) and features and all(isinstance(f, str) for f in features):
        out[_ANNOTATION_PREFIX + "os.features"] = ",".join(features)
    signal = config.get("StopSignal")
    if isinstance(signal, str) and signal:
        out[_ANNOTATION_PREFIX + "stopSignal"] = signal
    ports = config.get("ExposedPorts")
    if isinstance(ports, Mapping) and ports:
        out[_ANNOTATION_PREFIX + "exposedPorts"] = ",".join(sorted(map(str, ports)))
    labels = config.get("Labels")
    if isinstance(labels, Mapping):
        for key, value in labels.items():
            if (isinstance(key, str) and isinstance(value, str)
                    and key.startswith(_ANNOTATION_PREFIX)):
                out[key] = value
    return out


def runtime_spec(
    image_config: Mapping[str, Any],
    rootfs: str | os.PathLike[str] | None,
    *,
    root_path: str = "rootfs",
    terminal: bool = False,
    readonly: bool = False,
    args: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The OCI runtime spec (``config.json`` content) for an image.

    ``image_config`` is the whole image config document (``architecture``, ``os``,
    ``config``: {``User``, ``Env``, ``Entrypoint``, ``Cmd``, ``WorkingDir``, ...}).
    ``rootfs`` is the unpacked image whose ``/etc/passwd`` and ``/etc/group`` resolve
    ``User`` (None: numeric users only). ``root_path`` becomes ``root.path``, ``readonly``
    ``root.readonly``. ``args``, when given, replace ``Cmd`` (``Entrypoint`` stays).
    Raises :class:`ConfigError` for a malformed config, an unknown user or group, or
    nothing to run.
    """
    if not isinstance(image_config, Mapping):
        raise ConfigError("image config is not a JSON object")
    config = image_config.get("config") or {}
    if not isinstance(config, Mapping):
        raise ConfigError("image config: config is not a JSON object")

    entrypoint = _strings(config.get("Entrypoint"), "Entrypoint")
    if isinstance(args, str | bytes):
        raise ConfigError("args must be a sequence of strings, not one string")
    cmd = _strings(config.get("Cmd"), "Cmd") if args is None else _strings(list(args), "args")
    argv = entrypoint + cmd
    if not argv:
        raise ConfigError("image config has neither Entrypoint nor Cmd: nothing to run "
                          "(give the command as args)")

    env = _strings(config.get("Env"), "Env")
    for entry in env:
        name = entry.partition("=")[0]
        if "=" not in entry or not name or "\0" in entry:
            raise ConfigError(f"image config: Env entry {entry!r} is not NAME=value")
    names = {entry.partition("=")[0] for entry in env}

    cwd = _string(config.get("WorkingDir"), "WorkingDir")
    if "\0" in cwd:
        raise ConfigError("image config: WorkingDir holds a NUL byte")
    if not cwd.startswith("/"):
        cwd = "/" + posixpath.normpath("/" + cwd).lstrip("/")

    user = resolve_user(_string(config.get("User"), "User"), rootfs)

    full_env = ([] if "PATH" in names else [f"PATH={DEFAULT_PATH}"]) + env
    if "HOME" not in names:
        full_env.append(f"HOME={user.home}")
    if terminal and "TERM" not in names:
        full_env.append("TERM=xterm")

    defaults = _runc_defaults()
    proc_user: dict[str, Any] = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        proc_user["additionalGids"] = list(user.additional_gids)
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": proc_user,
            "args": argv,
            "env": full_env,
            "cwd": cwd,
            "capabilities": defaults["capabilities"],
            "rlimits": defaults["rlimits"],
            "noNewPrivileges": True,
        },
        "root": {"path": root_path, "readonly": readonly},
        "hostname": defaults["hostname"],
        "mounts": defaults["mounts"],
        "linux": defaults["linux"],
    }
    annotations = _annotations(image_config, config)
    if annotations:
        spec["annotations"] = annotations
    return spec


def write_bundle(
    bundle_dir: str | os.PathLike[str],
    image_config: Mapping[str, Any],
    *,
    rootfs_ready: bool = True,
    terminal: bool = False,
    readonly: bool = False,
    args: Sequence[str] | None = None,
) -> Path:
    """Write ``BUNDLE/config.json`` (mode 0644) for the image unpacked in ``BUNDLE/rootfs``;
    return its path.

    With ``rootfs_ready`` (the default) ``BUNDLE/rootfs`` must be a directory: ``User`` is
    resolved through its ``/etc/passwd`` and ``/etc/group``, and its mode is set to 0755
    (an unlade rootfs is made 0700, and a non-root container process could not even look
    up ``/`` in it). Without, the rootfs is neither needed nor touched, and only a numeric
    ``User`` resolves. The bundle directory is created if missing and made 0700, so the
    image's setuid files stay out of other host users' reach. ``config.json`` is replaced
    atomically. ``terminal``, ``readonly`` and ``args`` are as for :func:`runtime_spec`.
    """
    bundle = Path(bundle_dir)
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(bundle, 0o700)
    rootfs = bundle / "rootfs"
    if rootfs_ready:
        try:
            st = os.lstat(rootfs)
        except FileNotFoundError:
            raise ConfigError(f"bundle {os.fspath(bundle)!r} has no rootfs directory") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{os.fspath(rootfs)!r} is not a directory")
    spec = runtime_spec(image_config, rootfs if rootfs_ready else None, terminal=terminal,
                        readonly=readonly, args=args)
    data = json.dumps(spec, indent=2).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=".config.json.", dir=bundle)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)
        os.replace(tmp, bundle / "config.json")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if rootfs_ready:
        dfd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(dfd, 0o755)
        finally:
            os.close(dfd)
    return bundle / "config.json"
