"""Images kept in a store: records of what was pulled, and the operations on them (list,
inspect, remove, prune, check).

Pulls hold the store lock shared and prune holds it exclusively. A prune therefore never
removes a blob that a running pull has written but not yet recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .content import ContentStore
from .errors import NotFound, StoreError
from .manifest import MAX_MANIFEST, chain_ids, parse, parse_config
from .metastore import ImageRecord, LayerRecord, MetaStore
from .reference import parse_reference


@contextlib.contextmanager
def store_lock(root: Path, *, exclusive: bool) -> Iterator[None]:
    """Shared by pulls, exclusive for prune (an flock on ``ROOT/lock``)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ImageSummary:
    ref: str
    manifest_digest: str
    size: int
    platform: str
    created: float


@dataclass
class PruneResult:
    images: int = 0
    blobs: int = 0
    bytes: int = 0
    snapshots: int = 0
    snapshot_bytes: int = 0
    mounts: int = 0  # records of mounts that are gone (after a reboot, or unmounted by hand)


@dataclass
class CheckResult:
    """What ``check`` found. ``problems`` are records that claim what is not true (the
    store is damaged); ``notes`` are leftovers of interrupted work that the records
    already mark as unfinished (``prune`` removes them)."""

    blobs: int = 0
    images: int = 0
    snapshots: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def record_pull(meta: MetaStore, store: ContentStore, ref: str, manifest_digest: str,
                extra_blobs: list[str], snapshotter: str = "") -> None:
    """Record a verified pull: its blobs, the image, its layers (with chain IDs) and the ref.
    Called only after every blob is in place, so the records are true when written."""
    manifest = parse(store.read_small(manifest_digest, MAX_MANIFEST), None)
    if not hasattr(manifest, "config"):
        raise StoreError(f"{manifest_digest} is not an image manifest")
    config = parse_config(store.read_small(manifest.config.digest, MAX_MANIFEST))
    diff_ids = [str(d) for d in config.get("rootfs", {}).get("diff_ids", [])]
    plat = "/".join(str(config.get(k, "")) for k in ("os", "architecture", "variant")
                    ).rstrip("/")
    for digest in (*extra_blobs, manifest_digest, manifest.config.digest,
                   *(d.digest for d in manifest.layers)):
        meta.add_blob(digest, store.path(digest).stat().st_size)
    layers = [LayerRecord(d.digest, diff_id, chain)
              for d, diff_id, chain in zip(manifest.layers, diff_ids, chain_ids(diff_ids),
                                           strict=True)]
    size = sum(d.size for d in manifest.layers)
    meta.put_image(ImageRecord(manifest_digest, manifest.config.digest, manifest.media_type,
                               plat, size, snapshotter, time.time()), layers, ref)


def resolve(meta: MetaStore, ref: str) -> str:
    """A ref as given, canonicalised, or a manifest digest (or its unique prefix)."""
    digest = meta.resolve(ref)
    if digest is None:
        with contextlib.suppress(Exception):
            digest = meta.resolve(str(parse_reference(ref)))
    if digest is None:
        matches = {d for _, d, _ in meta.refs() if d.startswith(ref) or d[7:].startswith(ref)}
        if len(matches) == 1:
            digest = matches.pop()
    if digest is None:
        raise NotFound(f"image {ref!r} is not in the store (see `unlade images`)")
    return digest


def list_images(meta: MetaStore) -> list[ImageSummary]:
    out = []
    for name, digest, _ in meta.refs():
        image = meta.image(digest)
        if image is not None:
            out.append(ImageSummary(name, digest, image.size, image.platform, image.created))
    return out


def inspect_image(meta: MetaStore, store: ContentStore, ref: str) -> dict[str, Any]:
    digest = resolve(meta, ref)
    image = meta.image(digest)
    assert image is not None  # refs reference images (foreign key)
    manifest = json.loads(store.read_small(digest, MAX_MANIFEST))
    config = json.loads(store.read_small(image.config_digest, MAX_MANIFEST))
    return {
        "refs": [name for name, d, _ in meta.refs() if d == digest],
        "manifest_digest": digest,
        "config_digest": image.config_digest,
        "platform": image.platform,
        "size": image.size,
        "snapshotter": image.snapshotter,
        "created": image.created,
        "layers": [{"digest": lay.blob_digest, "diff_id": lay.diff_id,
                    "chain_id": lay.chain_id} for lay in meta.layers(digest)],
        "manifest": manifest,
        "config": config,
    }


def remove_image(meta: MetaStore, ref: str) -> str:
    """Drop a ref; the content stays until ``prune``. Refused while it is the image's last
    ref and the image is mounted (its snapshots would lose their owner under a live
    container)."""
    name = ref if meta.resolve(ref) is not None else _canonical(ref)
    digest = meta.resolve(name)
    if digest is None:
        raise NotFound(f"image {ref!r} is not in the store (see `unlade images`)")
    others = [n for n, d, _ in meta.refs() if d == digest and n != name]
    if not others:
        for mount in meta.mounts():
            if mount.manifest_digest == digest and _mounted(mount.target):
                raise StoreError(f"image {ref!r} is in use: mounted at {mount.target} "
                                 f"(`unlade unmount {mount.target}` first)")
    meta.remove_ref(name)
    return digest


def _canonical(ref: str) -> str:
    try:
        return str(parse_reference(ref))
    except Exception:
        return ref


def _mounted(target: str) -> bool:
    from .snapshot import _is_mountpoint

    return _is_mountpoint(target)


def prune(root: Path, meta: MetaStore, store: ContentStore) -> PruneResult:
    """Remove images no ref points to, then every blob no remaining image uses, every
    snapshot no remaining image or live mount uses (and those left half-made by a crash),
    and stale mount records, ingest files and directories without records. Holds the
    store lock exclusively: running pulls and mounts finish first, and none start."""
    result = PruneResult()
    with store_lock(root, exclusive=True):
        for mount in meta.mounts():
            if not _mounted(mount.target):
                meta.remove_mount(mount.target)
                if mount.active is not None:
                    shutil.rmtree(root / mount.active, ignore_errors=True)
                result.mounts += 1
        with meta.transaction() as db:
            result.images = db.execute(
                "DELETE FROM images WHERE manifest_digest NOT IN "
                "(SELECT manifest_digest FROM refs)").rowcount
            used = {row[0] for row in db.execute(
                "SELECT manifest_digest FROM images UNION SELECT config_digest FROM images "
                "UNION SELECT blob_digest FROM image_layers")}
            db.execute("DELETE FROM blobs WHERE digest NOT IN "
                       "(SELECT manifest_digest FROM images UNION SELECT config_digest "
                       "FROM images UNION SELECT blob_digest FROM image_layers)")
        for digest in list(store.blobs()):
            if digest in used:
                continue
            path = store.path(digest)
            with contextlib.suppress(FileNotFoundError):
                result.bytes += path.stat().st_size
                path.unlink()
                result.blobs += 1
        clean = getattr(store, "clean_ingest", None)
        if clean is not None:
            clean()
        _prune_snapshots(root, meta, result)
    return result


def _prune_snapshots(root: Path, meta: MetaStore, result: PruneResult) -> None:
    """Snapshots to keep: every chain of a remaining image (in every snapshotter) and
    every chain below a live mount. The rest go, children first; then directories no
    record names (left by a crash between mkdir and the record, or by a discard)."""
    keep = {row.chain_id for image in meta.images() for row in meta.layers(
        image.manifest_digest)}
    records = meta.snapshots()
    by_key = {(s.snapshotter, s.chain_id): s for s in records}
    for mount in meta.mounts():
        key: tuple[str, str | None] = (mount.snapshotter, mount.chain_id)
        while key[1] is not None and key in by_key:
            keep.add(key[1])
            key = (key[0], by_key[key].parent)  # type: ignore[index]
    kept: set[tuple[str, str]] = set()
    for snap in reversed(records):  # children before their parents
        if snap.state == "committed" and (snap.chain_id in keep or
                                          (snap.snapshotter, snap.chain_id) in kept):
            if snap.parent is not None:
                kept.add((snap.snapshotter, snap.parent))
            continue
        meta.remove_snapshot(snap.snapshotter, snap.chain_id)
        result.snapshot_bytes += snap.size
        result.snapshots += 1
        shutil.rmtree(root / snap.dir, ignore_errors=True)
        lock = root / f"snapshots-{snap.snapshotter}" / "locks" / (
            hashlib.sha256(snap.chain_id.encode()).hexdigest()[:32] + ".lock")
        lock.unlink(missing_ok=True)
    named = {os.path.normpath(root / s.dir) for s in meta.snapshots()}
    active = {os.path.normpath(root / m.active) for m in meta.mounts() if m.active}
    for kind_dir in root.glob("snapshots-*"):
        for trial in kind_dir.glob(".overlay-check-*"):  # left by a killed support check
            shutil.rmtree(trial, ignore_errors=True)
        for sub, recorded in (("snapshots", named), ("active", active)):
            base = kind_dir / sub
            if not base.is_dir():
                continue
            for entry in base.iterdir():
                if os.path.normpath(entry) not in recorded and not _mounted_below(entry):
                    shutil.rmtree(entry, ignore_errors=True)


def _mounted_below(path: Path) -> bool:
    """Is anything mounted from inside ``path`` (a writable layer in use)? Checked by
    the mount table's options, as a safety net under the mount records."""
    try:
        table = Path("/proc/self/mountinfo").read_text(errors="surrogateescape")
    except OSError:
        return False
    return str(path) + "/" in table


def check(root: Path, meta: MetaStore, store: ContentStore) -> CheckResult:
    """Re-hash every blob and make sure every record points at content that exists."""
    result = CheckResult()
    on_disk = set()
    for digest in store.blobs():
        on_disk.add(digest)
        result.blobs += 1
        algo, _, hexpart = digest.partition(":")
        h = hashlib.new(algo)
        with store.open(digest) as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        if h.hexdigest() != hexpart:
            result.problems.append(f"blob {digest}: content hashes to {algo}:{h.hexdigest()}")
    for digest, _size in meta.blobs():
        if digest not in on_disk:
            result.problems.append(f"blob {digest} is recorded but missing")
    for name, digest, _ in meta.refs():
        image = meta.image(digest)
        if image is None:
            result.problems.append(f"ref {name} points to unknown image {digest}")
            continue
        result.images += 1
        needed = [digest, image.config_digest, *(lay.blob_digest for lay in meta.layers(digest))]
        result.problems += [f"image {name}: blob {d} is missing" for d in needed
                            if d not in on_disk]
    _check_snapshots(root, meta, result)
    return result


def _check_snapshots(root: Path, meta: MetaStore, result: CheckResult) -> None:
    records = {(s.snapshotter, s.chain_id): s for s in meta.snapshots()}
    for snap in records.values():
        where = f"{snap.snapshotter} snapshot {snap.chain_id[:19]}"
        if snap.state != "committed":
            result.notes.append(f"{where}: left half-unpacked by an interrupted pull "
                                "(marked preparing; never used, prune removes it)")
            continue
        result.snapshots += 1
        if not (root / snap.dir / "fs").is_dir():
            result.problems.append(f"{where}: directory {snap.dir}/fs is missing")
        if snap.parent is not None:
            parent = records.get((snap.snapshotter, snap.parent))
            if parent is None or parent.state != "committed":
                result.problems.append(f"{where}: its parent {snap.parent[:19]} is not "
                                       "committed")
    for mount in meta.mounts():
        if not _mounted(mount.target):
            result.notes.append(f"mount at {mount.target} is recorded but gone "
                                "(prune forgets it)")
