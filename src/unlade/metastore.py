"""The meta store: what the store holds, in SQLite (stdlib ``sqlite3``, WAL).

Records are only ever written inside a transaction that also makes them true: a snapshot
is recorded ``preparing`` before its directory is filled and flipped to ``committed`` in
one statement afterwards, so after a crash the store never claims more than it has. The
schema is versioned with ``PRAGMA user_version``; migrations run in order, each in its own
transaction, and a store written by a newer unlade is refused rather than damaged.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError

SCHEMA_VERSION = 2

#: Migration N brings a store from version N-1 to N. Never edit a released entry: add one.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE blobs (
            digest TEXT PRIMARY KEY,
            size INTEGER NOT NULL CHECK (size >= 0),
            media_type TEXT NOT NULL DEFAULT '',
            added REAL NOT NULL)""",
        """CREATE TABLE images (
            manifest_digest TEXT PRIMARY KEY REFERENCES blobs(digest),
            config_digest TEXT NOT NULL REFERENCES blobs(digest),
            media_type TEXT NOT NULL,
            platform TEXT NOT NULL,
            size INTEGER NOT NULL,
            snapshotter TEXT NOT NULL,
            created REAL NOT NULL)""",
        """CREATE TABLE image_layers (
            manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest)
                ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            blob_digest TEXT NOT NULL REFERENCES blobs(digest),
            diff_id TEXT NOT NULL,
            chain_id TEXT NOT NULL,
            PRIMARY KEY (manifest_digest, idx))""",
        """CREATE TABLE refs (
            name TEXT PRIMARY KEY,
            manifest_digest TEXT NOT NULL REFERENCES images(manifest_digest),
            updated REAL NOT NULL)""",
        """CREATE TABLE snapshots (
            chain_id TEXT PRIMARY KEY,
            parent TEXT REFERENCES snapshots(chain_id),
            dir TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL CHECK (state IN ('preparing', 'committed')),
            created REAL NOT NULL)""",
        "CREATE INDEX image_layers_chain ON image_layers(chain_id)",
        "CREATE INDEX refs_image ON refs(manifest_digest)",
    ),
    # Snapshots of every snapshotter in the one store (keyed by kind and chainID), and the
    # mounts made from them, so prune and check see everything in one transaction.
    2: (
        """CREATE TABLE snapshots_v2 (
            snapshotter TEXT NOT NULL,
            chain_id TEXT NOT NULL,
            parent TEXT,
            dir TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL CHECK (state IN ('preparing', 'committed')),
            created REAL NOT NULL,
            PRIMARY KEY (snapshotter, chain_id),
            FOREIGN KEY (snapshotter, parent) REFERENCES snapshots_v2(snapshotter, chain_id))""",
        """INSERT INTO snapshots_v2 SELECT '', chain_id, parent, dir, size, state, created
            FROM snapshots""",
        "DROP TABLE snapshots",
        "ALTER TABLE snapshots_v2 RENAME TO snapshots",
        "CREATE INDEX snapshots_parent ON snapshots(snapshotter, parent)",
        """CREATE TABLE mounts (
            target TEXT PRIMARY KEY,
            snapshotter TEXT NOT NULL,
            chain_id TEXT NOT NULL,
            manifest_digest TEXT,
            active TEXT,
            created REAL NOT NULL,
            FOREIGN KEY (snapshotter, chain_id) REFERENCES snapshots(snapshotter, chain_id))""",
    ),
}


@dataclass(frozen=True)
class Snapshot:
    """One layer chain unpacked by one snapshotter; ``dir`` is relative to the store root
    (absolute if it lies outside it)."""

    snapshotter: str
    chain_id: str
    parent: str | None
    dir: str
    size: int
    state: str


@dataclass(frozen=True)
class MountRecord:
    """A mount made from a snapshot chain (``chain_id`` its top), kept until unmounted so
    that prune leaves its snapshots alone and ``rm`` knows the image is in use."""

    target: str
    snapshotter: str
    chain_id: str
    manifest_digest: str | None
    active: str | None
    created: float


@dataclass(frozen=True)
class ImageRecord:
    manifest_digest: str
    config_digest: str
    media_type: str
    platform: str
    size: int
    snapshotter: str
    created: float


@dataclass(frozen=True)
class LayerRecord:
    blob_digest: str
    diff_id: str
    chain_id: str


_SNAP_COLS = "snapshotter, chain_id, parent, dir, size, state"


class MetaStore:
    """One connection to ``ROOT/meta.db``; safe to use from several processes at once
    (WAL, write transactions taken up front with ``BEGIN IMMEDIATE``, a busy timeout) and
    from several threads (one connection runs one statement or transaction at a time, so
    calls are serialised on a lock of this object)."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"meta store {self.path}: {err}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> MetaStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def _migrate(self) -> None:
        with self.transaction():
            current = self.version
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.path.parent} was written by a newer unlade (schema {current}, "
                f"this one knows up to {SCHEMA_VERSION}); upgrade unlade"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            with self.transaction():
                if self.version >= version:  # another process migrated meanwhile
                    continue
                for statement in MIGRATIONS[version]:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={version}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All or nothing: the block's writes are committed together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- blobs -----------------------------------------------------------------------------
    def add_blob(self, digest: str, size: int, media_type: str = "") -> None:
        """Record a blob that is already verified and in place (idempotent)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?)",
                       (digest, size, media_type, time.time()))

    def blobs(self) -> list[tuple[str, int]]:
        return [(str(d), int(n)) for d, n in
                self._query("SELECT digest, size FROM blobs ORDER BY digest")]

    # -- images and refs -------------------------------------------------------------------
    def put_image(self, image: ImageRecord, layers: list[LayerRecord], ref: str | None) -> None:
        """Record an image, its layers and (optionally) a ref to it, in one transaction."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (image.manifest_digest, image.config_digest, image.media_type,
                        image.platform, image.size, image.snapshotter, image.created))
            db.execute("DELETE FROM image_layers WHERE manifest_digest = ?",
                       (image.manifest_digest,))
            db.executemany(
                "INSERT INTO image_layers VALUES (?, ?, ?, ?, ?)",
                [(image.manifest_digest, i, lay.blob_digest, lay.diff_id, lay.chain_id)
                 for i, lay in enumerate(layers)],
            )
            if ref is not None:
                db.execute("INSERT OR REPLACE INTO refs VALUES (?, ?, ?)",
                           (ref, image.manifest_digest, time.time()))

    def image(self, manifest_digest: str) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE manifest_digest = ?",
                           (manifest_digest,))
        return ImageRecord(*rows[0]) if rows else None

    def images(self) -> list[ImageRecord]:
        return [ImageRecord(*row) for row in self._query("SELECT * FROM images")]

    def layers(self, manifest_digest: str) -> list[LayerRecord]:
        return [LayerRecord(*row) for row in self._query(
            "SELECT blob_digest, diff_id, chain_id FROM image_layers "
            "WHERE manifest_digest = ? ORDER BY idx", (manifest_digest,))]

    def resolve(self, ref: str) -> str | None:
        rows = self._query("SELECT manifest_digest FROM refs WHERE name = ?", (ref,))
        return str(rows[0][0]) if rows else None

    def refs(self) -> list[tuple[str, str, float]]:
        return [(str(n), str(d), float(t)) for n, d, t in
                self._query("SELECT name, manifest_digest, updated FROM refs ORDER BY name")]

    def remove_ref(self, ref: str) -> bool:
        with self.transaction() as db:
            return db.execute("DELETE FROM refs WHERE name = ?", (ref,)).rowcount > 0

    # -- snapshots -------------------------------------------------------------------------
    def prepare_snapshot(self, snapshotter: str, chain_id: str, parent: str | None,
                         directory: str) -> bool:
        """Claim ``chain_id`` for unpacking; False if it exists already (committed, or
        being prepared by someone else). A crash leaves it ``preparing``: never used."""
        with self.transaction() as db:
            try:
                db.execute("INSERT INTO snapshots VALUES (?, ?, ?, ?, 0, 'preparing', ?)",
                           (snapshotter, chain_id, parent, directory, time.time()))
            except sqlite3.IntegrityError as err:
                if "FOREIGN KEY" in str(err):
                    raise StoreError(f"snapshot {chain_id}: its parent {parent} is not "
                                     f"recorded for {snapshotter}") from None
                return False
        return True

    def commit_snapshot(self, snapshotter: str, chain_id: str, size: int) -> None:
        with self.transaction() as db:
            changed = db.execute(
                "UPDATE snapshots SET state = 'committed', size = ? "
                "WHERE snapshotter = ? AND chain_id = ? AND state = 'preparing'",
                (size, snapshotter, chain_id)).rowcount
        if changed != 1:
            raise StoreError(f"snapshot {chain_id} is not being prepared")

    def snapshot(self, snapshotter: str, chain_id: str) -> Snapshot | None:
        rows = self._query(f"SELECT {_SNAP_COLS} FROM snapshots "
                           "WHERE snapshotter = ? AND chain_id = ?", (snapshotter, chain_id))
        return Snapshot(*rows[0]) if rows else None

    def snapshots(self, snapshotter: str | None = None) -> list[Snapshot]:
        """Snapshots (of one snapshotter, or all), parents before their children."""
        if snapshotter is None:
            rows = self._query(f"SELECT {_SNAP_COLS} FROM snapshots ORDER BY created, rowid")
        else:
            rows = self._query(f"SELECT {_SNAP_COLS} FROM snapshots WHERE snapshotter = ? "
                               "ORDER BY created, rowid", (snapshotter,))
        return [Snapshot(*row) for row in rows]

    def remove_snapshot(self, snapshotter: str, chain_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM snapshots WHERE snapshotter = ? AND chain_id = ?",
                       (snapshotter, chain_id))

    # -- mounts ----------------------------------------------------------------------------
    def add_mount(self, mount: MountRecord) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO mounts VALUES (?, ?, ?, ?, ?, ?)",
                       (mount.target, mount.snapshotter, mount.chain_id,
                        mount.manifest_digest, mount.active, mount.created))

    def mounts(self) -> list[MountRecord]:
        return [MountRecord(*row) for row in self._query(
            "SELECT target, snapshotter, chain_id, manifest_digest, active, created "
            "FROM mounts ORDER BY created")]

    def remove_mount(self, target: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM mounts WHERE target = ?", (target,))
