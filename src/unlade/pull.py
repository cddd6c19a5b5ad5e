"""The pull pipeline: resolve → manifest → config → layers → rootfs.

Every layer blob is downloaded into the content store by a small pool of threads while
the main thread applies layers in order, *following* each blob as it is written: socket
bytes are hashed and written once, then inflated, hashed again (diffID) and applied in the
same pass, so a layer is never held in memory and download overlaps application. The
rootfs is assembled in a hidden sibling directory and renamed into place only after every
digest and diffID checked out; on any failure or Ctrl-C it is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from .content import BlobWriter, ContentStore
from .decompress import CORRUPT_DATA_ERRORS, ReadAhead, open_decompressed
from .errors import (
    DecryptionError,
    DigestMismatch,
    Interrupted,
    LayerError,
    LayerLimitExceeded,
    LimitExceeded,
    MalformedLayer,
    ManifestError,
    ManifestTooLarge,
    RegistryError,
    StoreError,
    TruncatedLayer,
    UnladeError,
)
from .layer import apply_layer
from .limits import DEFAULT_LIMITS, Limits, format_size
from .manifest import (
    CONFIG_TYPES,
    MAX_MANIFEST,
    Descriptor,
    Index,
    Layer,
    Manifest,
    Platform,
    layers_of,
    parse,
    parse_config,
)
from .reference import Reference
from .registry import Cancellation, RegistryClient
from .tarstream import READ_SIZE

if TYPE_CHECKING:
    from .snapshot import Snapshotter

DOWNLOAD_WORKERS = 3
#: Inflated bytes are handed to the applier in buffers of this size, this many ahead (four
#: buffers in all per layer): measured here, 512 KiB × 2 was as fast as anything larger
#: and a little faster than 256 KiB × 4 (fewer GIL hand-offs between the threads).
INFLATE_CHUNK = 1 << 19
INFLATE_DEPTH = 2


class Progress(Protocol):
    """What a pull reports while it runs (the CLI draws bars from it)."""

    def layer_start(self, index: int, digest: str, size: int, cached: bool) -> None: ...
    def layer_bytes(self, index: int, nbytes: int) -> None: ...
    def layer_done(self, index: int) -> None: ...


class _NoProgress:
    def layer_start(self, index: int, digest: str, size: int, cached: bool) -> None:
        pass

    def layer_bytes(self, index: int, nbytes: int) -> None:
        pass

    def layer_done(self, index: int) -> None:
        pass


@dataclass
class LayerResult:
    digest: str
    diff_id: str
    size: int
    media_type: str
    fetched: bool
    entries: int = 0
    file_bytes: int = 0
    unpacked: bool | None = None  # into a snapshot by this pull (None: not into snapshots)
    endpoint: str | None = None  # the registry (or mirror) that served it, if fetched


@dataclass
class PullResult:
    reference: str
    manifest_digest: str
    manifest_media_type: str
    config_digest: str
    platform: str
    layers: list[LayerResult] = field(default_factory=list)
    bytes_fetched: int = 0
    seconds: float = 0.0
    rootfs: str | None = None
    policy: dict[str, Any] | None = None  # the signature policy's verdict (None: no policy)
    manifest_endpoint: str | None = None  # the registry (or mirror) that served the manifest

    def to_json(self) -> dict[str, object]:
        return {
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "manifest_media_type": self.manifest_media_type,
            "config_digest": self.config_digest,
            "platform": self.platform,
            "layers": [vars(layer) for layer in self.layers],
            "bytes_fetched": self.bytes_fetched,
            "size": sum(layer.size for layer in self.layers),
            "seconds": round(self.seconds, 3),
            "rootfs": self.rootfs,
            "policy": self.policy,
            "manifest_endpoint": self.manifest_endpoint,
        }


@dataclass(frozen=True)
class Source:
    """One place an image can be pulled from: the reference as that registry (or mirror)
    names it. :mod:`unlade.registries_conf` makes these from registries.conf."""

    reference: Reference
    mirror: bool = False
    insecure: bool = False  # plain HTTP or unverified TLS allowed (registries.conf)

    @property
    def location(self) -> str:
        return self.reference.registry


def _failed_sources(err: UnladeError, failed: list[tuple[Source, UnladeError]]) -> UnladeError:
    """``err`` (the last source's) with what the sources before it said, on one line."""
    if not failed:
        return err
    others = "; ".join(f"{s.location}: {e}" for s, e in failed)
    return type(err)(f"{err} (also tried {others})")


def _check_target(rootfs: Path) -> None:
    if rootfs.exists():
        if not rootfs.is_dir() or rootfs.is_symlink():
            raise StoreError(f"--rootfs {rootfs} exists and is not a directory")
        if any(rootfs.iterdir()):
            raise StoreError(f"--rootfs {rootfs} is not empty")
    elif not rootfs.parent.is_dir():
        raise StoreError(f"parent directory of --rootfs {rootfs} does not exist")


def _verify(data: bytes, digest: str, what: str, size: int | None = None) -> None:
    """Content fetched by digest must hash (with that digest's algorithm) to it."""
    algo = digest.partition(":")[0]
    actual = f"{algo}:{hashlib.new(algo, data).hexdigest()}"
    if actual != digest:
        raise DigestMismatch(f"{what} digest mismatch: expected {digest}, got {actual}")
    if size is not None and len(data) != size:
        raise DigestMismatch(f"{what} {digest}: got {len(data)} bytes, expected {size}")


def _label(index: int, layer: Layer) -> str:
    return f"layer {index + 1} ({layer.descriptor.digest[:19]})"


class Puller:
    """One pull; holds what must be cleaned up if it fails."""

    def __init__(self, store: ContentStore, registry: RegistryClient, progress: Progress | None):
        self.store = store
        self.registry = registry
        self.progress = progress or _NoProgress()
        self.cancel = Cancellation()
        self.bytes_fetched = 0
        self.extra_blobs: list[str] = []  # stored but not part of the image (an index)
        self.unpack_workers: int | None = None  # layers unpacked at once (None: CPU count)
        self.download_workers = DOWNLOAD_WORKERS  # layers downloaded at once
        # Where to pull from, in order (registries.conf mirrors, then the registry itself);
        # None: the reference's registry only.
        self.sources: Callable[[Reference], list[Source]] | None = None
        self._sources: list[Source] = []  # this pull's, the one that served the manifest first
        self.manifest_endpoint: str | None = None
        # Called with (ref, top-level manifest bytes, its digest) before anything else is
        # fetched or stored; raises to refuse the image (the signature policy).
        self.admit: Callable[[Reference, bytes, str], Any] | None = None
        self.admitted: Any = None  # what ``admit`` returned (the policy's verdict)
        self.decrypt: Any = None  # DecryptConfig: keys for ocicrypt-encrypted layers
        self.require_encrypted = False  # refuse an image with any plain layer
        self.limits: Limits = DEFAULT_LIMITS
        self._layer_options: dict[int, Any] = {}  # per encrypted layer: its cipher options
        self._lock = threading.Lock()

    def _fetch_small(self, ref: Reference, digest: str, size: int) -> bytes:
        limit = self.limits.config_size
        if size > limit:
            raise LimitExceeded(self.limits.exceeded(
                f"{ref}: config of {size:,} bytes", "config_size"))
        if self.store.has(digest):
            return self.store.read_small(digest, max(limit, MAX_MANIFEST))
        data, _ = self._from_sources(
            lambda r: self.registry.get_small_blob(r, digest, size, limit=limit), blobs=True)
        self.store.put(digest, data)
        return data

    def _check_layer_count(self, ref: Reference, parsed: Manifest | Index) -> None:
        """Before the manifest is stored: a refused image leaves nothing behind."""
        if isinstance(parsed, Manifest) and len(parsed.layers) > self.limits.layers:
            raise LimitExceeded(self.limits.exceeded(
                f"{ref} has {len(parsed.layers):,} layers", "layers"))

    def _from_sources(self, fetch: Callable[[Reference], Any], *, blobs: bool = False
                      ) -> tuple[Any, Source]:
        """``fetch`` from the first source that answers, in order; a failed mirror costs
        one fallback, never the pull, and the last source's error (with the others') is
        raised when all fail. For blobs only registry failures fall back: what a source
        sent is verified by digest, so a mirror that sends other bytes fails the pull
        rather than corrupting anything."""
        failed: list[tuple[Source, UnladeError]] = []
        passes: type[UnladeError] = RegistryError if blobs else UnladeError
        for source in self._sources:
            try:
                return fetch(source.reference), source
            except Interrupted:
                raise
            except UnladeError as err:
                if not isinstance(err, passes) or source is self._sources[-1]:
                    raise _failed_sources(err, failed) from None
                failed.append((source, err))
        raise AssertionError("no sources")  # _sources is never empty

    def resolve(self, ref: Reference, platform: Platform | None) -> tuple[str, Manifest, str]:
        """Fetch and verify the manifest (through an index if need be); store both."""
        self._sources = self.sources(ref) if self.sources is not None else [Source(ref)]
        for source in self._sources:
            if source.insecure:
                self.registry.insecure_hosts.add(source.reference.api_host)
            if source.mirror and source.reference.registry != ref.registry:
                self.registry.mirror_hosts.add(source.reference.registry)

        def fetch(r: Reference, child: Descriptor | None = None) -> tuple[bytes, str]:
            """The manifest (or the index's ``child``) from one source, verified against
            its digest if known (so a mirror answering other bytes is passed over),
            within the manifest_size limit (which the registry read enforces)."""
            digest = child.digest if child is not None else ref.digest
            try:
                data, content_type = self.registry.get_manifest(
                    r, digest if child is not None else None,
                    limit=self.limits.manifest_size)
            except ManifestTooLarge as err:
                raise ManifestTooLarge(self.limits.exceeded(f"{ref}: {err}", "manifest_size")
                                       ) from None
            if digest:
                _verify(data, digest, "manifest", child.size if child is not None else None)
            return data, content_type

        (data, content_type), served = self._from_sources(fetch)
        # the rest of the image from the same place first
        self._sources = [served, *(s for s in self._sources if s is not served)]
        self.manifest_endpoint = served.location
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        parsed = parse(data, content_type)
        self._check_layer_count(ref, parsed)
        if self.admit is not None:  # signatures are looked up by the digest as pulled
            self.admitted = self.admit(ref, data, ref.digest or digest)
        self.store.put(digest, data)
        if isinstance(parsed, Index):
            self.extra_blobs.append(digest)
            desc = parsed.select(platform)
            (data, content_type), _ = self._from_sources(lambda r: fetch(r, desc))
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            parsed = parse(data, content_type or desc.media_type)
            if isinstance(parsed, Index):
                raise ManifestError("an index inside an index is not supported")
            self._check_layer_count(ref, parsed)
            self.store.put(digest, data)
        return digest, parsed, parsed.media_type

    def pull(
        self, ref: Reference, *, rootfs: Path | None, platform: Platform | None,
        snapshotter: Snapshotter | None = None,
    ) -> PullResult:
        start = time.monotonic()
        if rootfs is not None:
            _check_target(rootfs)
        manifest_digest, manifest, media_type = self.resolve(ref, platform)
        cfg = manifest.config
        if cfg.media_type not in CONFIG_TYPES:
            raise ManifestError(
                f"{ref} is not a container image (config media type {cfg.media_type!r})"
            )
        config = parse_config(self._fetch_small(ref, cfg.digest, cfg.size))
        layers = layers_of(manifest, config)
        self._open_encrypted(layers)
        plat = Platform(str(config.get("os", "")), str(config.get("architecture", "")),
                        str(config.get("variant", "")))
        result = PullResult(str(ref), manifest_digest, media_type, cfg.digest, str(plat))
        result.manifest_endpoint = self.manifest_endpoint
        if self.admitted is not None and hasattr(self.admitted, "to_json"):
            result.policy = self.admitted.to_json()
        result.layers = [
            LayerResult(d.digest, lay.diff_id, d.size, d.media_type, fetched=False)
            for lay in layers
            for d in (lay.descriptor,)
        ]
        try:
            if rootfs is None and snapshotter is not None:
                self._unpack_snapshots(ref, layers, snapshotter, result)
            elif rootfs is None:
                self._download_all(ref, layers, result)
            else:
                self._unpack(ref, layers, rootfs, result)
                result.rootfs = str(rootfs)
        except KeyboardInterrupt:
            raise Interrupted("pull interrupted; nothing half-written was left") from None
        result.bytes_fetched = self.bytes_fetched
        result.seconds = time.monotonic() - start
        return result

    def _open_encrypted(self, layers: list[Layer]) -> None:
        """Unwrap every encrypted layer's key before anything is downloaded, so a missing
        key fails at once; and refuse plain layers when encryption is required (an attacker
        serving an unencrypted substitute is refused, not unpacked)."""
        if self.require_encrypted:
            plain = [str(i + 1) for i, layer in enumerate(layers) if not layer.encrypted]
            if plain:
                raise DecryptionError(
                    f"encryption is required, but layer{'s' if len(plain) > 1 else ''} "
                    f"{', '.join(plain)} of {len(layers)} {'are' if len(plain) > 1 else 'is'} "
                    "not encrypted")
        if not any(layer.encrypted for layer in layers):
            return
        from .decrypt import DecryptConfig, layer_options

        config = self.decrypt or DecryptConfig()
        for i, layer in enumerate(layers):
            if layer.encrypted:
                self._layer_options[i] = layer_options(layer.descriptor.annotations, config,
                                                       f"layer {i + 1}")

    # -- downloads -----------------------------------------------------------------------
    def _download(
        self, ref: Reference, index: int, writer: BlobWriter, layer: LayerResult
    ) -> None:
        """Fetch one blob under its ingest lock (waiting, cancellably, while another
        thread or process holds it): nothing if it is stored by then, else from where a
        dead writer's ``.part`` ends. Only bytes fetched here count in ``bytes_fetched``."""

        def advance(n: int) -> None:
            with self._lock:
                self.bytes_fetched += n
            self.progress.layer_bytes(index, n)

        try:
            if not writer.acquire(self.cancel, resume=True):
                layer.fetched = False  # another pull stored it while we waited
                self.progress.layer_bytes(index, layer.size)
                return
            if writer.resumed:
                self.progress.layer_bytes(index, writer.resumed)
            if writer.size is None or writer.written < writer.size:
                # A source that fails part-way hands over to the next, which resumes with
                # Range from the bytes already written (the digest covers them all).
                _, source = self._from_sources(
                    lambda r: self.registry.download(r, writer.digest, writer, advance,
                                                     self.cancel), blobs=True)
                layer.endpoint = source.location
            writer.commit()
        except BaseException as err:
            writer.fail(err)
            writer.close()  # drop the lock now: another pull may be waiting for it
            raise

    def _start_downloads(
        self, ref: Reference, layers: list[Layer], pool: ThreadPoolExecutor,
        started: dict[int, tuple[BlobWriter, Future[None]]], result: PullResult,
    ) -> None:
        """Fill ``started`` as it goes, so a failure part-way leaves nothing unowned."""
        seen: dict[str, int] = {}
        for i, layer in enumerate(layers):
            desc = layer.descriptor
            cached = self.store.has(desc.digest) or desc.digest in seen
            self.progress.layer_start(i, desc.digest, desc.size, cached)
            if cached:
                continue
            seen[desc.digest] = i
            result.layers[i].fetched = True
            writer = self.store.writer(desc.digest, desc.size)
            started[i] = (writer, pool.submit(self._download, ref, i, writer,
                                              result.layers[i]))

    def _download_all(self, ref: Reference, layers: list[Layer], result: PullResult) -> None:
        with self._downloads(ref, layers, result) as started:
            for i in range(len(layers)):
                if i in started:
                    started[i][1].result()
                self.progress.layer_done(i)

    @contextlib.contextmanager
    def _downloads(  # type: ignore[no-untyped-def]
        self, ref: Reference, layers: list[Layer], result: PullResult
    ):
        pool = ThreadPoolExecutor(self.download_workers, thread_name_prefix="unlade-download")
        started: dict[int, tuple[BlobWriter, Future[None]]] = {}
        try:
            self._start_downloads(ref, layers, pool, started, result)
            yield started
        finally:
            # Stop whatever still runs (at once: blocked reads are shut down), wait for the
            # threads, then drop unverified temp blobs. A second Ctrl-C must not skip this.
            self.cancel.cancel()
            while True:
                try:
                    pool.shutdown(wait=True, cancel_futures=True)
                    break
                except KeyboardInterrupt:
                    continue
            for writer, _ in started.values():
                writer.close()

    # -- application ---------------------------------------------------------------------
    def _unpack(
        self, ref: Reference, layers: list[Layer], rootfs: Path, result: PullResult
    ) -> None:
        _sweep_stale_work(rootfs)
        work = Path(tempfile.mkdtemp(prefix=f".{rootfs.name}.unlade-", dir=rootfs.parent))
        # Held while we work: a later pull to the same target tells our directory (busy)
        # from one a killed pull left (lock free, removed).
        held = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            # mkdtemp's 0700 stays: an image's device nodes and setuid files must not be
            # reachable by other users through a world-readable rootfs.
            with self._downloads(ref, layers, result) as started:
                writers = {layers[i].descriptor.digest: w for i, (w, _) in started.items()}
                for i, layer in enumerate(layers):
                    stats = self._apply_one(i, layer, writers.get(layer.descriptor.digest), work)
                    result.layers[i].entries = stats[0]
                    result.layers[i].file_bytes = stats[1]
                    self.progress.layer_done(i)
                for _, future in started.values():
                    future.result()
            os.rename(work, rootfs)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
            os.close(held)

    def _unpack_snapshots(
        self, ref: Reference, layers: list[Layer], snapshotter: Snapshotter,
        result: PullResult,
    ) -> None:
        """Stream every layer into its snapshot as it downloads (layers unpacked in
        parallel by the snapshotter); layers already unpacked are neither read nor
        unpacked again, and their blobs are still downloaded if the store lacks them."""
        from .manifest import chain_ids
        from .snapshot import ChainLayer

        chains = chain_ids([layer.diff_id for layer in layers])
        with self._downloads(ref, layers, result) as started:
            writers = {layers[i].descriptor.digest: w for i, (w, _) in started.items()}
            items = []
            for i, (layer, chain) in enumerate(zip(layers, chains, strict=True)):
                writer = writers.get(layer.descriptor.digest)

                options = self._layer_options.get(i)

                def opener(layer: Layer = layer, writer: BlobWriter | None = writer,
                           label: str = _label(i, layer),
                           options: Any = options) -> VerifyingStream:
                    raw = writer.follow() if writer is not None \
                        else self.store.open(layer.descriptor.digest)
                    return VerifyingStream.of(raw, layer.compression, layer.diff_id, label,
                                              options, self.limits)

                items.append(ChainLayer(chain, opener, _label(i, layer)))
            done = snapshotter.unpack_chain(items, workers=self.unpack_workers,
                                            abort=self.cancel.cancel)
            for _, future in started.values():
                future.result()
        for i, item in enumerate(items):
            result.layers[i].unpacked = done[i]
            if item.stats is not None:
                result.layers[i].entries = item.stats.entries
                result.layers[i].file_bytes = item.stats.file_bytes
            self.progress.layer_done(i)

    def _apply_one(
        self, index: int, layer: Layer, writer: BlobWriter | None, root: Path
    ) -> tuple[int, int]:
        label = _label(index, layer)
        raw: BinaryIO = writer.follow() if writer is not None \
            else self.store.open(layer.descriptor.digest)  # type: ignore[assignment]
        stream = VerifyingStream.of(raw, layer.compression, layer.diff_id, label,
                                    self._layer_options.get(index), self.limits)
        try:
            try:
                stats = apply_layer(stream, root, layer=label)  # type: ignore[arg-type]
            except LayerError as err:
                if label in str(err):  # it names the layer already
                    raise
                raise type(err)(f"{label}: {err}") from None
            stream.finish()
            return stats.entries, stats.file_bytes
        finally:
            stream.release()


def _sweep_stale_work(rootfs: Path) -> None:
    """Remove the hidden work directories (``.NAME.unlade-*``) that pulls to ``rootfs``
    killed with SIGKILL left beside it: those whose lock nobody holds."""
    try:
        names = os.listdir(rootfs.parent)
    except OSError:
        return
    prefix = f".{rootfs.name}.unlade-"
    for name in names:
        if not name.startswith(prefix):
            continue
        path = rootfs.parent / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a running pull's
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


class VerifyingStream:
    """A layer blob as its uncompressed tar, for a snapshotter: the diffID is checked
    when the stream is closed, and a mismatch raises so nothing is committed."""

    def __init__(self, store: ContentStore, digest: str, media_type: str, diff_id: str,
                 label: str = "layer", options: Any = None, limits: Limits | None = None):
        from .manifest import ENCRYPTED_LAYER_TYPES, LAYER_TYPES

        compression = LAYER_TYPES.get(media_type) or ENCRYPTED_LAYER_TYPES.get(media_type)
        if compression is None:
            raise ManifestError(f"unsupported layer media type {media_type!r}")
        self._setup(store.open(digest), compression, diff_id, label, options, limits)

    @classmethod
    def of(cls, raw: BinaryIO, compression: str, diff_id: str, label: str,
           options: Any = None, limits: Limits | None = None) -> VerifyingStream:
        """Over an open (possibly still growing) blob reader, which it closes. With
        ``options`` (an encrypted layer's, from :func:`unlade.decrypt.layer_options`) the
        blob is decrypted on the way, and its HMAC checked at its end. ``limits`` bound
        the uncompressed size here, and entries, paths and xattrs where the stream is
        applied (:attr:`limits`)."""
        self = cls.__new__(cls)
        self._setup(raw, compression, diff_id, label, options, limits)
        return self

    def _setup(self, raw: BinaryIO, compression: str, diff_id: str, label: str,
               options: Any = None, limits: Limits | None = None) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self._raw = raw
        self._diff_id = diff_id
        self._label = label
        self._algo = diff_id.partition(":")[0]
        self._finished = False
        self._cipher: Any = None
        try:
            ciphertext: Any = raw
            cipher: Any = None
            if options is not None:  # ocicrypt: decrypt (and MAC) before inflating
                from .decrypt import LayerCipher

                ciphertext = cipher = LayerCipher(raw.readinto, options, label)  # type: ignore[attr-defined]
            self._cipher = cipher
            source = open_decompressed(ciphertext, compression)
            budget = [self.limits.layer_size]  # uncompressed bytes still allowed

            def readinto(buf: memoryview) -> int:
                try:
                    n: int = source.readinto(buf)  # type: ignore[attr-defined]
                    budget[0] -= n
                    if budget[0] < 0:
                        raise LayerLimitExceeded(self.limits.exceeded(
                            f"{label}: larger than {format_size(self.limits.layer_size)} "
                            "uncompressed", "layer_size"))
                    return n
                except EOFError:
                    error: LayerError = TruncatedLayer(f"{compression} stream ends early")
                except CORRUPT_DATA_ERRORS as err:
                    error = MalformedLayer(f"corrupt {compression} data ({err})")
                if cipher is not None:  # tampered ciphertext decrypts to corrupt data
                    cipher.check_rest()
                raise error

            # Inflate and hash on threads of their own, so the applier gets the other core.
            self._stream = ReadAhead(readinto, hasher=hashlib.new(self._algo),
                                     chunk=INFLATE_CHUNK, depth=INFLATE_DEPTH,
                                     interrupt=getattr(raw, "abandon", None))
        except BaseException:
            raw.close()
            raise

    def read(self, size: int = -1, /) -> bytes | memoryview:
        """The next bytes, as a view valid until the next read."""
        return self._stream.read(size)

    def finish(self) -> None:
        """Read to the end and check the diffID; a mismatch raises."""
        if self._finished:
            return
        while self._stream.read(READ_SIZE):
            pass
        self._finished = True
        actual = f"{self._algo}:{self._stream.hexdigest()}"
        if actual != self._diff_id:
            raise DigestMismatch(f"{self._label}: diffID mismatch: config says "
                                 f"{self._diff_id}, content is {actual}")

    def close(self) -> None:
        """Verify (as :meth:`finish`) and release the blob; the snapshotter closes every
        stream it applied, so this is where its diffID is checked."""
        try:
            self.finish()
        finally:
            self.release()

    def release(self) -> None:
        """Stop reading and release the blob, without verifying."""
        self._stream.close()
        if self._cipher is not None:
            self._cipher.close()
        self._raw.close()
