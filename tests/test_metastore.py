"""The SQLite meta store: versioned schema, all-or-nothing writes, several processes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from unlade.errors import StoreError
from unlade.metastore import (
    MIGRATIONS,
    SCHEMA_VERSION,
    ImageRecord,
    LayerRecord,
    MetaStore,
    MountRecord,
)

M, C, L1, L2 = ("sha256:" + c * 64 for c in "mcde")


def _image(store: MetaStore, ref: str | None = "r:1") -> None:
    for digest in (M, C, L1, L2):
        store.add_blob(digest, 10)
    store.put_image(ImageRecord(M, C, "oci", "linux/amd64", 20, "overlayfs", 1.0),
                    [LayerRecord(L1, "sha256:" + "1" * 64, "sha256:" + "a" * 64),
                     LayerRecord(L2, "sha256:" + "2" * 64, "sha256:" + "b" * 64)], ref)


def test_new_store_is_migrated_and_in_wal_mode(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "meta.db") as store:
        assert store.version == SCHEMA_VERSION
        mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    with MetaStore(tmp_path / "meta.db") as again:  # reopening migrates nothing
        assert again.version == SCHEMA_VERSION


def test_store_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    MetaStore(tmp_path / "meta.db").close()
    db = sqlite3.connect(tmp_path / "meta.db")
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer unlade"):
        MetaStore(tmp_path / "meta.db")


def test_image_layers_and_refs_round_trip(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "meta.db") as store:
        _image(store)
        assert store.resolve("r:1") == M
        record = store.image(M)
        assert record is not None and record.snapshotter == "overlayfs"
        assert [lay.blob_digest for lay in store.layers(M)] == [L1, L2]
        assert store.remove_ref("r:1") and not store.remove_ref("r:1")
        assert store.resolve("r:1") is None


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "meta.db") as store:
        with pytest.raises(RuntimeError), store.transaction() as db:
            db.execute("INSERT INTO blobs VALUES ('sha256:x', 1, '', 0)")
            raise RuntimeError("crash in the middle")
        assert store.blobs() == []
        # a ref to an image that is not recorded violates a foreign key: nothing is written
        with pytest.raises(sqlite3.IntegrityError):
            store.put_image(ImageRecord(M, C, "oci", "linux/amd64", 1, "native", 1.0), [], "r")
        assert store.image(M) is None and store.refs() == []


def test_snapshot_is_only_committed_once_prepared(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "meta.db") as store:
        assert store.prepare_snapshot("overlayfs", "sha256:a", None, "snapshots/1")
        assert not store.prepare_snapshot("overlayfs", "sha256:a", None, "snapshots/2")
        snap = store.snapshot("overlayfs", "sha256:a")
        assert snap is not None and snap.state == "preparing"
        assert store.snapshot("native", "sha256:a") is None  # kinds are apart
        store.commit_snapshot("overlayfs", "sha256:a", 4096)
        snap = store.snapshot("overlayfs", "sha256:a")
        assert snap is not None and (snap.state, snap.size) == ("committed", 4096)
        with pytest.raises(StoreError, match="not being prepared"):
            store.commit_snapshot("overlayfs", "sha256:a", 1)
        # a parent must exist (in the same snapshotter)
        with pytest.raises(StoreError, match="parent sha256:a is not recorded for native"):
            store.prepare_snapshot("native", "sha256:b", "sha256:a", "snapshots/3")
        assert store.prepare_snapshot("overlayfs", "sha256:b", "sha256:a", "snapshots/2")
        store.remove_snapshot("overlayfs", "sha256:b")
        assert [s.chain_id for s in store.snapshots()] == ["sha256:a"]


def test_mount_records_pin_their_snapshot(tmp_path: Path) -> None:
    with MetaStore(tmp_path / "meta.db") as store:
        assert store.prepare_snapshot("overlayfs", "sha256:a", None, "snapshots/1")
        store.commit_snapshot("overlayfs", "sha256:a", 1)
        store.add_mount(MountRecord("/mnt/x", "overlayfs", "sha256:a", M, "active/1", 1.0))
        assert store.mounts() == [MountRecord("/mnt/x", "overlayfs", "sha256:a", M,
                                              "active/1", 1.0)]
        with pytest.raises(sqlite3.IntegrityError):  # a mounted snapshot cannot be dropped
            store.remove_snapshot("overlayfs", "sha256:a")
        store.remove_mount("/mnt/x")
        store.remove_snapshot("overlayfs", "sha256:a")
        assert store.mounts() == [] and store.snapshots() == []


def test_version_1_store_is_migrated(tmp_path: Path) -> None:
    """A store written by the first schema keeps its records through the migration."""
    db = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO blobs VALUES ('sha256:x', 3, '', 0)")
    db.execute("INSERT INTO snapshots VALUES ('sha256:a', NULL, 'd/1', 5, 'committed', 0)")
    db.execute("PRAGMA user_version=1")
    db.close()
    with MetaStore(tmp_path / "meta.db") as store:
        assert store.version == SCHEMA_VERSION == 2
        assert store.blobs() == [("sha256:x", 3)]
        assert [(s.snapshotter, s.chain_id, s.dir) for s in store.snapshots()] == [
            ("", "sha256:a", "d/1")]
        assert store.prepare_snapshot("overlayfs", "sha256:a", None, "d/2")


def test_processes_writing_at_once_all_succeed(tmp_path: Path) -> None:
    code = (
        "import sys; from unlade.metastore import MetaStore\n"
        "s = MetaStore(sys.argv[1])\n"
        "for i in range(200): s.add_blob(f'sha256:{sys.argv[2]}-{i}', i)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "meta.db"), str(n)])
             for n in range(4)]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    with MetaStore(tmp_path / "meta.db") as store:
        assert len(store.blobs()) == 800
