"""Build the benchmark images from real content, and serve them from a local registry.

A benchmark of pulls is only as good as its image: synthetic layers of random bytes say
little about the mix of many small files, a few huge ones, symlinks, hardlinks and
compressible text that real images carry. So the images here are made of real software,
fetched only from package registries (Debian's mirror and PyPI), never from an image
registry:

* **full** (``build_image(small=False)``): a Debian bookworm ``minbase`` layer
  (``debootstrap``), then one layer of real Python packages in
  ``usr/local/lib/python3.11/site-packages``: numpy, scipy, pandas, pyarrow, scikit-learn
  and their deps, plus the PyTorch CPU wheel and its pure-Python deps when it is at hand.
* **small** (``build_image(small=True)``): the same two-layer shape in tens of MB, built in
  seconds for CI: a busybox rootfs (the host's static busybox and its applet links), then
  numpy, pandas and pandas' pure-Python deps.

Layers are GNU tar streams (sorted names, numeric owners, xattrs, mtimes clamped to a fixed
epoch) compressed with ``pigz -6 -n`` (``gzip -6 -n`` without pigz; same format, and pigz's
output does not depend on its thread count). The result is an OCI image layout that
``skopeo`` pushes to a ``docker-registry`` on 127.0.0.1 (:class:`LocalRegistry`,
:func:`push`).

While packing, each tar stream is read once: hashed for the diffID, counted (entries and
regular-file bytes, with :mod:`tarfile`, independently of unlade's own tar reader) and fed
to the compressor. Those counts land in ``image.json`` so that a benchmark can check that a
pull applied exactly what was built.

Everything slow is cached in the work directory: the finished layout (a second
:func:`build_image` returns at once), the debootstrap rootfs and the downloaded wheels.
The packages layer and the busybox layer are byte-reproducible (same digests from another
work directory). The debootstrap layer is reproducible only from its cached rootfs: a new
debootstrap run writes logs and dpkg state of its own, and the mirror moves on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import UnladeError

__all__ = [
    "BenchImage",
    "BuildError",
    "LayerInfo",
    "LocalRegistry",
    "build_image",
    "push",
]

#: Bumped whenever the recipe changes in a way that changes the image, so that a cached
#: build from an older recipe is rebuilt rather than silently reused.
RECIPE_VERSION = 1

DEBIAN_SUITE = "bookworm"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def apt_mirror() -> str:
    """The Debian mirror this machine's apt already uses (debootstrap takes it from there,
    so the benchmark reaches no host the machine is not set up for)."""
    files: list[Path] = []
    for src in APT_SOURCES:
        if src.is_dir():
            files += sorted(p for p in src.iterdir() if p.suffix in (".sources", ".list"))
        elif src.is_file():
            files.append(src)
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            words = line.split()
            if path.suffix == ".sources" and words[:1] == ["URIs:"]:
                uris = words[1:]
            elif words[:1] == ["deb"]:
                uris = [w for w in words[1:] if "://" in w][:1]
            else:
                continue
            for uri in uris:
                if uri.startswith(("http://", "https://")) and "security" not in uri:
                    return uri.rstrip("/")
    raise BuildError("no Debian mirror found in the apt sources (needed by debootstrap)")
PYTHON_VERSION = "3.11"
SITE_PACKAGES = f"usr/local/lib/python{PYTHON_VERSION}/site-packages"
WHEEL_DIR = Path("/opt/wheels")

#: Fixed mtime ceiling (2025-05-20T00:00:00Z, an arbitrary date). Files newer than it --
#: everything pip or debootstrap wrote during the build -- get this mtime, so rebuilding does
#: not change the layers for that reason alone. ``SOURCE_DATE_EPOCH`` overrides it.
DEFAULT_EPOCH = 1_747_699_200

# Pinned, so that a rebuild next year still benchmarks the same bytes. All have cp311
# manylinux wheels (2014 or 2_28) for x86_64 (aarch64 is untested).
SMALL_PACKAGES = (
    "numpy==2.2.6",
    "pandas==2.2.3",
    "python-dateutil==2.9.0.post0",
    "pytz==2025.2",
    "tzdata==2025.2",
    "six==1.17.0",
)
FULL_PACKAGES = (
    *SMALL_PACKAGES,
    "scipy==1.15.3",
    "pyarrow==20.0.0",
    "scikit-learn==1.6.1",
    "joblib==1.5.1",
    "threadpoolctl==3.6.0",
)
#: torch's own requirements (pure Python, but for MarkupSafe), installed with it.
TORCH_DEPS = (
    "sympy==1.14.0",
    "mpmath==1.3.0",
    "networkx==3.4.2",
    "jinja2==3.1.6",
    "markupsafe==3.0.2",
    "filelock==3.18.0",
    "fsspec==2025.5.1",
    "typing-extensions==4.14.0",
)

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

_ARCHES = {  # uname -m: (OCI architecture, pip platform tags, newest first)
    "x86_64": ("amd64", ("manylinux_2_28_x86_64", "manylinux2014_x86_64")),
    "aarch64": ("arm64", ("manylinux_2_28_aarch64", "manylinux2014_aarch64")),
}
_CHUNK = 1 << 20
Log = Callable[[str], None]


class BuildError(UnladeError):
    """A step of building or pushing the benchmark image failed (a tool, a download)."""


# ----------------------------------------------------------------------------------------------
# Results


@dataclass
class LayerInfo:
    """One built layer. ``entries`` and ``file_bytes`` count what a pull must apply: every
    tar entry (the root ``./`` included) and the bytes of regular files (hardlinks are
    entries without bytes)."""

    digest: str
    diff_id: str
    size_compressed: int
    size_uncompressed: int
    entries: int
    file_bytes: int
    comment: str = ""


@dataclass
class BenchImage:
    """A built benchmark image: the OCI layout holding it under ``tag``, and its figures.

    Saved as ``image.json`` next to the layout; :func:`build_image` reuses it while the
    recipe is unchanged.
    """

    layout: Path
    tag: str
    layers: list[LayerInfo]
    total_compressed: int
    total_uncompressed: int
    entries: int
    file_bytes: int
    small: bool = False
    manifest_digest: str = ""
    config_digest: str = ""
    architecture: str = ""
    packages: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compressor: str = ""
    build_seconds: float = 0.0
    recipe: str = ""

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (paths as strings)."""
        doc = asdict(self)
        doc["layout"] = str(self.layout)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BenchImage:
        """The inverse of :meth:`to_json`."""
        doc = dict(doc)
        doc["layout"] = Path(doc["layout"])
        doc["layers"] = [LayerInfo(**layer) for layer in doc["layers"]]
        return cls(**doc)


# ----------------------------------------------------------------------------------------------
# Building


def build_image(
    workdir: Path,
    *,
    small: bool,
    log: Log = print,
    mirror: str | None = None,
    wheel_dir: Path = WHEEL_DIR,
) -> BenchImage:
    """Build the benchmark image into ``workdir/layout`` (tag ``small`` or ``full``).

    Returns at once when ``workdir/image.json`` describes a complete build of the same
    recipe; otherwise builds, reusing the debootstrap rootfs (``workdir/cache/rootfs-*``) and
    wheels (``workdir/cache/wheels``) of earlier builds. The full image needs root (for
    debootstrap) and a Debian mirror (``mirror``, default: the one apt uses); both need
    PyPI unless the wheels are
    cached. The PyTorch wheel is taken from ``wheel_dir`` (``torch-*-cp311-*.whl``); when it
    is absent the full image is built without it, and ``notes`` says so.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    arch, pip_platforms = _arch()
    torch = None if small else _find_torch(wheel_dir)
    packages = list(SMALL_PACKAGES if small else FULL_PACKAGES)
    notes: list[str] = []
    if not small:
        if torch is None:
            notes.append(f"no torch-*-cp311 wheel for {arch} in {wheel_dir}: built without "
                         "PyTorch, so the image is about 700 MB smaller")
        else:
            packages += [*TORCH_DEPS, f"torch=={_wheel_version(torch)}"]
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or DEFAULT_EPOCH)
    recipe = _recipe_id(small, arch, packages, torch, epoch)
    tag = "small" if small else "full"

    cached = _load_cached(workdir, recipe)
    if cached is not None:
        log(f"bench image {tag}: cached in {cached.layout}")
        return cached
    with _locked(workdir / ".lock"):  # another process may be building the same thing
        cached = _load_cached(workdir, recipe)
        if cached is not None:
            log(f"bench image {tag}: cached in {cached.layout}")
            return cached
        return _build(workdir, small, tag, arch, pip_platforms, packages, torch, notes,
                      epoch, recipe, mirror or ("" if small else apt_mirror()), log)


def _build(workdir: Path, small: bool, tag: str, arch: str, pip_platforms: Sequence[str],
           packages: list[str], torch: Path | None, notes: list[str], epoch: int, recipe: str,
           mirror: str, log: Log) -> BenchImage:
    for note in notes:
        log(f"note: {note}")
    started = time.monotonic()
    cache = workdir / "cache"
    cache.mkdir(exist_ok=True)
    layout = workdir / "layout"
    (workdir / "image.json").unlink(missing_ok=True)
    if layout.exists():
        shutil.rmtree(layout)
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    layers: list[LayerInfo] = []
    history: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="stage-", dir=workdir) as stage_dir:
        stage = Path(stage_dir)
        if small:
            base = stage / "busybox"
            base_comment = _busybox_rootfs(base)
            base_owner = True
        else:
            base = _debootstrap(cache, mirror, log)
            base_comment = f"debootstrap --variant=minbase {DEBIAN_SUITE} ({arch})"
            base_owner = False
        log(f"packing layer 1: {base_comment}")
        layers.append(_pack_layer(base, blobs, epoch, base_comment, log,
                                  root_owned=base_owner))
        history.append({"created_by": base_comment})

        wheels = _download_wheels(cache / "wheels", packages, torch, pip_platforms, log)
        pkg_root = stage / "packages"
        _install_wheels(pkg_root, wheels, packages, pip_platforms, log)
        pkg_comment = "pip install --no-deps --target /" + SITE_PACKAGES + " " + " ".join(
            packages)
        log(f"packing layer 2: {len(packages)} Python packages")
        layers.append(_pack_layer(pkg_root, blobs, epoch, pkg_comment, log, root_owned=True))
        history.append({"created_by": pkg_comment})

    manifest_digest, config_digest = _write_layout(layout, tag, arch, layers, history, epoch)
    image = BenchImage(
        layout=layout,
        tag=tag,
        layers=layers,
        total_compressed=sum(la.size_compressed for la in layers),
        total_uncompressed=sum(la.size_uncompressed for la in layers),
        entries=sum(la.entries for la in layers),
        file_bytes=sum(la.file_bytes for la in layers),
        small=small,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        architecture=arch,
        packages=packages,
        notes=notes,
        compressor=_compressor()[0],
        build_seconds=round(time.monotonic() - started, 1),
        recipe=recipe,
    )
    _atomic_write(workdir / "image.json", json.dumps(image.to_json(), indent=1).encode())
    log(f"bench image {tag}: {len(layers)} layers, {_mib(image.total_compressed)} compressed, "
        f"{_mib(image.total_uncompressed)} uncompressed, {image.entries} entries, "
        f"built in {image.build_seconds:.1f} s into {layout}")
    return image


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _arch() -> tuple[str, tuple[str, ...]]:
    machine = platform.machine()
    if machine not in _ARCHES:
        raise BuildError(f"benchmark images are built for x86_64 or aarch64, not {machine}")
    return _ARCHES[machine]


def _find_torch(wheel_dir: Path) -> Path | None:
    """The newest local PyTorch cp311 wheel for this machine, if any."""
    found = sorted(wheel_dir.glob(f"torch-*-cp311-cp311-*_{platform.machine()}.whl"))
    return found[-1] if found else None


def _wheel_version(wheel: Path) -> str:
    return wheel.name.split("-")[1]


def _recipe_id(small: bool, arch: str, packages: Sequence[str], torch: Path | None,
               epoch: int) -> str:
    doc = {
        "version": RECIPE_VERSION, "small": small, "arch": arch, "packages": list(packages),
        "torch": [torch.name, torch.stat().st_size] if torch else None, "epoch": epoch,
        "suite": DEBIAN_SUITE, "python": PYTHON_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def _load_cached(workdir: Path, recipe: str) -> BenchImage | None:
    """The saved image if it is of this recipe and its layout is complete."""
    try:
        image = BenchImage.from_json(json.loads((workdir / "image.json").read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if image.recipe != recipe or image.layout != workdir / "layout":
        return None
    blobs = image.layout / "blobs" / "sha256"
    wanted = [(image.manifest_digest, None), (image.config_digest, None)]
    wanted += [(la.digest, la.size_compressed) for la in image.layers]
    for digest, size in wanted:
        try:
            st = (blobs / digest.removeprefix("sha256:")).stat()
        except OSError:
            return None
        if size is not None and st.st_size != size:
            return None
    return image


# -- the base layer ---------------------------------------------------------------------------


def _busybox_rootfs(root: Path) -> str:
    """A minimal busybox system: the host's static busybox, a link for each applet (as
    ``busybox --install -s`` makes them) and just enough ``/etc`` for a shell."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise BuildError("busybox not found (apt-get install busybox-static)")
    for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                    ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777), ("var", 0o755),
                    ("home", 0o755), ("dev", 0o755), ("proc", 0o755), ("sys", 0o755)):
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / d, mode)
    os.chmod(root, 0o755)
    shutil.copyfile(busybox, root / "bin" / "busybox")
    os.chmod(root / "bin" / "busybox", 0o755)
    applets = _run([busybox, "--list-full"], "busybox --list-full").split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "hostname").write_text("unlade-bench\n")
    version = _run([busybox], "busybox").splitlines()[0] if applets else "busybox"
    return f"{version.split(' multi-call')[0].strip()} with {len(applets)} applet links"


def _debootstrap(cache: Path, mirror: str, log: Log) -> Path:
    """A Debian minbase rootfs, built once into the cache and reused.

    Cleaned as Debian's own container images are (debuerreotype): no downloaded ``.deb``
    files, no apt lists, nothing in ``/dev`` (the runtime provides it)."""
    final = cache / f"rootfs-{DEBIAN_SUITE}-minbase"
    if final.is_dir():
        log(f"debootstrap: cached rootfs {final}")
        return final
    if shutil.which("debootstrap", path=_SBIN_PATH) is None:
        raise BuildError("debootstrap not found (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise BuildError("building the full benchmark image needs root (debootstrap)")
    tmp = cache / f".rootfs-{uuid.uuid4().hex[:8]}"
    log(f"debootstrap --variant=minbase {DEBIAN_SUITE} from {mirror} (about 30 s)...")
    started = time.monotonic()
    try:
        _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(tmp), mirror],
             "debootstrap", env={**os.environ, "PATH": _SBIN_PATH, "LC_ALL": "C"})
        _refuse_mounts(tmp)
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "dev"):
            d = tmp / sub
            for child in d.iterdir() if d.is_dir() else ():
                if child.name in ("partial", "lock") and sub != "dev":
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        tmp.rename(final)
    except BaseException:
        if not _mounts_under(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"debootstrap: done in {time.monotonic() - started:.1f} s")
    return final


_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _mounts_under(path: Path) -> list[str]:
    """Mount points inside ``path``: debootstrap mounts /proc, /sys and (in containers)
    binds the host's /dev nodes into its target, and unmounts them when it exits. Should
    one survive a killed debootstrap, deleting the tree would reach into the host's."""
    prefix = str(path.resolve()) + "/"
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = (line.split()[1].replace("\\040", " ") for line in lines if line.strip())
    return [p for p in points if p.startswith(prefix)]


def _refuse_mounts(path: Path) -> None:
    mounts = _mounts_under(path)
    if mounts:
        raise BuildError(f"debootstrap left mounts in {path} ({', '.join(mounts)}); "
                         "unmount them and remove the directory by hand")


# -- the packages layer -----------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _cached_wheel(wheels: Path, requirement: str) -> Path | None:
    name, _, version = requirement.partition("==")
    for wheel in sorted(wheels.glob("*.whl")):
        parts = wheel.name.split("-")
        if _norm(parts[0]) == _norm(name) and parts[1] == version:
            return wheel
    return None


def _pip_target_args(pip_platforms: Sequence[str]) -> list[str]:
    """Select cp311 wheels for the image's platform, whatever Python runs the build."""
    args = ["--only-binary=:all:", "--no-deps", "--implementation", "cp",
            "--python-version", PYTHON_VERSION,
            "--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    for plat in pip_platforms:
        args += ["--platform", plat]
    return args


def _download_wheels(wheels: Path, packages: Sequence[str], torch: Path | None,
                     pip_platforms: Sequence[str], log: Log) -> Path:
    """Fetch the pinned wheels from the package index into the cache (only missing ones)."""
    wheels.mkdir(parents=True, exist_ok=True)
    if torch is not None and not (wheels / torch.name).exists():
        # A link, not a copy: 190 MB that never changes.
        (wheels / torch.name).symlink_to(torch)
    missing = [p for p in packages if _cached_wheel(wheels, p) is None]
    if not missing:
        log(f"wheels: all {len(packages)} cached in {wheels}")
        return wheels
    log(f"pip download {' '.join(missing)}")
    started = time.monotonic()
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
          *_pip_target_args(pip_platforms), "--dest", str(wheels), *missing], "pip download")
    log(f"wheels: downloaded {len(missing)} in {time.monotonic() - started:.1f} s")
    return wheels


def _install_wheels(root: Path, wheels: Path, packages: Sequence[str],
                    pip_platforms: Sequence[str], log: Log) -> None:
    """``pip install --target`` the wheels into ``root/usr/local/lib/python3.11/...``.

    By requirement from the wheel cache (``--find-links``), not by file name, so pip writes
    no ``direct_url.json`` naming the cache path. No ``.pyc`` (``--no-compile``): they would
    embed build times. Scripts go to ``usr/local/bin`` with a ``#!/usr/local/bin/python3``
    line instead of the builder's interpreter, so the layer does not depend on where it
    was built."""
    target = root / SITE_PACKAGES
    target.mkdir(parents=True)
    started = time.monotonic()
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          "--no-index", "--find-links", str(wheels), "--no-compile",
          "--no-warn-script-location", *_pip_target_args(pip_platforms),
          "--target", str(target), *packages], "pip install")
    scripts = target / "bin"
    if scripts.is_dir():
        dest = root / "usr" / "local" / "bin"
        dest.mkdir(parents=True, exist_ok=True)
        for script in sorted(scripts.iterdir()):
            data = script.read_bytes()
            if data.startswith(b"#!") and b"python" in data.split(b"\n", 1)[0]:
                data = b"#!/usr/local/bin/python3\n" + data.split(b"\n", 1)[1]
            (dest / script.name).write_bytes(data)
            os.chmod(dest / script.name, 0o755)
        shutil.rmtree(scripts)
    for d in [root, *(p for p in target.parents if root in p.parents), target]:
        os.chmod(d, 0o755)
    log(f"pip install: {len(packages)} packages in {time.monotonic() - started:.1f} s")


# -- layers and the layout --------------------------------------------------------------------


def _compressor() -> list[str]:
    """``pigz`` if installed (same gzip stream, on every core), else ``gzip``."""
    tool = "pigz" if shutil.which("pigz") else "gzip"
    return [tool, "-6", "-n", "-c"]


class _Tee(io.RawIOBase):
    """Reads the tar stream from ``src``, hashing it and copying it to ``dst`` on the way."""

    def __init__(self, src: IO[bytes], dst: IO[bytes]) -> None:
        self.src = src
        self.dst = dst
        self.sha = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self.src.read(len(buf))
        if not data:
            return 0
        self.sha.update(data)
        self.dst.write(data)
        self.size += len(data)
        n = len(data)
        buf[:n] = data
        return n


def _pack_layer(src: Path, blobs: Path, epoch: int, comment: str, log: Log, *,
                root_owned: bool) -> LayerInfo:
    """Tar ``src`` with GNU tar, gzip it into ``blobs``, and count what the tar holds."""
    started = time.monotonic()
    tar_cmd = ["tar", "--create", "--file=-", f"--directory={src}", "--sort=name",
               "--format=posix",
               "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
               "--numeric-owner", "--xattrs", f"--mtime=@{epoch}", "--clamp-mtime"]
    if root_owned:
        tar_cmd += ["--owner=0", "--group=0"]
    tar_cmd.append(".")
    gz_cmd = _compressor()
    tmp_blob = blobs / f".tmp-{uuid.uuid4().hex}"
    entries = file_bytes = 0
    try:
        with open(tmp_blob, "wb") as out, tempfile.TemporaryFile() as tar_err, \
                tempfile.TemporaryFile() as gz_err:
            gz = subprocess.Popen(gz_cmd, stdin=subprocess.PIPE, stdout=out, stderr=gz_err)
            tar = subprocess.Popen(tar_cmd, stdout=subprocess.PIPE, stderr=tar_err,
                                   stdin=subprocess.DEVNULL, env={**os.environ, "LC_ALL": "C"})
            assert gz.stdin is not None and tar.stdout is not None
            tee = _Tee(tar.stdout, gz.stdin)
            try:
                reader = io.BufferedReader(tee, buffer_size=_CHUNK)
                with tarfile.open(fileobj=reader, mode="r|") as tf:
                    while (member := tf.next()) is not None:
                        entries += 1
                        if member.isreg():
                            file_bytes += member.size
                        tf.members.clear()  # keep memory flat over 30k entries
                while reader.read(_CHUNK):  # the end-of-archive blocks and record padding
                    pass
            finally:
                gz.stdin.close()
                tar.stdout.close()
                tar_rc, gz_rc = tar.wait(), gz.wait()
            for name, rc, err in (("tar", tar_rc, tar_err), (gz_cmd[0], gz_rc, gz_err)):
                if rc != 0:
                    err.seek(0)
                    msg = err.read()[-2000:].decode(errors="replace").strip()
                    raise BuildError(f"{name} failed (exit {rc}) packing {src}: {msg}")
        digest, size = _file_digest(tmp_blob)
        tmp_blob.rename(blobs / digest.removeprefix("sha256:"))
    except BaseException:
        tmp_blob.unlink(missing_ok=True)
        raise
    info = LayerInfo(digest=digest, diff_id="sha256:" + tee.sha.hexdigest(),
                     size_compressed=size, size_uncompressed=tee.size, entries=entries,
                     file_bytes=file_bytes, comment=comment)
    log(f"  {entries} entries, {_mib(info.size_uncompressed)} -> {_mib(size)} "
        f"in {time.monotonic() - started:.1f} s ({digest[:19]})")
    return info


def _file_digest(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return "sha256:" + sha.hexdigest(), size


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _put_blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _atomic_write(blobs / digest.removeprefix("sha256:"), data)
    return {"digest": digest, "size": len(data)}


def _write_layout(layout: Path, tag: str, arch: str, layers: Sequence[LayerInfo],
                  history: Sequence[dict[str, str]], epoch: int) -> tuple[str, str]:
    """Config, manifest, ``index.json`` and ``oci-layout``; returns the two digests."""
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    blobs = layout / "blobs" / "sha256"
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"org.opencontainers.image.title": f"unlade benchmark image ({tag})"},
        },
        "rootfs": {"type": "layers", "diff_ids": [la.diff_id for la in layers]},
        "history": [{"created": created, **h} for h in history],
    }
    config_desc = {"mediaType": MT_OCI_CONFIG, **_put_blob(blobs, _canonical(config))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config_desc,
        "layers": [{"mediaType": MT_OCI_LAYER_GZIP, "digest": la.digest,
                    "size": la.size_compressed} for la in layers],
    }
    manifest_desc = {"mediaType": MT_OCI_MANIFEST, **_put_blob(blobs, _canonical(manifest)),
                     "annotations": {REF_NAME: tag},
                     "platform": {"architecture": arch, "os": "linux"}}
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [manifest_desc]}
    _atomic_write(layout / "oci-layout", _canonical({"imageLayoutVersion": "1.0.0"}))
    _atomic_write(layout / "index.json", _canonical(index))
    return manifest_desc["digest"], config_desc["digest"]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _run(cmd: Sequence[str], what: str, env: dict[str, str] | None = None) -> str:
    """Run a build tool; on failure raise a :class:`BuildError` with the end of its output."""
    try:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise BuildError(f"{what}: {err.strerror}: {cmd[0]}") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise BuildError(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc.stdout


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


# ----------------------------------------------------------------------------------------------
# A registry on 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalRegistry:
    """Debian's ``docker-registry`` serving plain HTTP on ``127.0.0.1:<free port>``.

    Blobs live in ``storage`` and survive the registry, so a second benchmark run with the
    same directory pushes nothing new. The config, written to a temporary directory, keeps
    the registry quiet (log level error, no access log), so it costs the benchmark no I/O
    of its own. ``with LocalRegistry(dir) as reg:`` waits until ``/v2/`` answers and stops
    the process on exit.
    """

    def __init__(self, storage: Path, *, startup_timeout: float = 15.0) -> None:
        self.storage = Path(storage).absolute()
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp: Path | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, for references."""
        if self._proc is None:
            raise BuildError("the local registry is not running")
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LocalRegistry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalRegistry:
        """Start the registry (retrying other ports if one was taken meanwhile)."""
        if self._proc is not None:
            return self
        if shutil.which("docker-registry") is None:
            raise BuildError("docker-registry not found (apt-get install docker-registry)")
        self.storage.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="unlade-registry-"))
        log_path = self._tmp / "registry.log"
        last = ""
        for _attempt in range(5):
            self.port = _free_port()
            config = {
                "version": 0.1,
                "log": {"level": "error", "accesslog": {"disabled": True}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.storage)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": f"127.0.0.1:{self.port}", "secret": uuid.uuid4().hex},
                "health": {"storagedriver": {"enabled": False}},
            }
            cfg = self._tmp / "config.yml"
            cfg.write_text(json.dumps(config, indent=1))  # JSON is YAML
            with open(log_path, "ab") as err:
                self._proc = subprocess.Popen(
                    ["docker-registry", "serve", str(cfg)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=err,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(self._tmp)})
            if self._wait_ready():
                return self
            last = log_path.read_text(errors="replace")[-2000:].strip()
            self._kill()
            if "address already in use" not in last:
                break
        self.stop()
        raise BuildError(f"docker-registry did not start: {last or 'no output'}")

    def _wait_ready(self) -> bool:
        import http.client

        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            try:
                conn.request("GET", "/v2/")
                if conn.getresponse().status == 200:
                    return True
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        return False

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop the registry; the storage directory stays."""
        self._kill()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def push(image: BenchImage, registry: LocalRegistry, repo: str) -> str:
    """Push ``image`` to ``registry`` as ``repo:TAG`` with skopeo; return the reference.

    ``--preserve-digests`` makes skopeo refuse rather than re-compress or convert, so the
    registry serves exactly the blobs whose figures ``image`` holds; the pushed manifest
    digest is checked too."""
    if shutil.which("skopeo") is None:
        raise BuildError("skopeo not found (apt-get install skopeo)")
    ref = f"{registry.host}/{repo}:{image.tag}"
    with _tempdir("unlade-skopeo-") as td:
        digestfile = td / "digest"
        _run(["skopeo", "--insecure-policy", "copy", "--quiet", "--preserve-digests",
              "--format=oci", "--dest-tls-verify=false", "--dest-no-creds",
              f"--digestfile={digestfile}", f"oci:{image.layout}:{image.tag}",
              f"docker://{ref}"], "skopeo copy",
             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(td)})
        pushed = digestfile.read_text().strip()
    if image.manifest_digest and pushed != image.manifest_digest:
        raise BuildError(f"skopeo pushed manifest {pushed}, the layout has "
                         f"{image.manifest_digest}")
    return ref


@contextmanager
def _tempdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as td:
        yield Path(td)
