"""Hostile networks and broken registries (issue 9, "Faults"): a fault-injecting proxy on
127.0.0.1 in front of the real registry, one case per fault.

For each fault the pull either completes -- retried with backoff, resumed with Range, its
rootfs equal to a clean pull's -- or fails within a bounded time with a one-line error
naming the fault. Either way the store holds only verified blobs (re-hashed, and
``check`` clean) and no rootfs, hidden work directory or snapshot is left half-made.

Timeouts are set small here through the library (``RegistryOptions``); the bounds on
elapsed time are generous: they catch hangs, they do not measure speed.
"""

from __future__ import annotations

import dataclasses
import random
import socket
import time
import tracemalloc
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from harness import images
from harness.faultproxy import Fault, FaultProxy
from harness.protocols import RegistryFactory, RunUnlade
from harness.registry import Registry
from harness.storecheck import bad_blobs
from harness.tree import assert_same_tree

from unlade import Client, PullResult
from unlade.errors import (
    ConfigError,
    DigestMismatch,
    ManifestError,
    RegistryError,
    RegistryTimeout,
    UnladeError,
)
from unlade.registry import RegistryClient, RegistryOptions, RetryPolicy

pytestmark = [pytest.mark.root, pytest.mark.tools]

#: Small, so that failing cases end in seconds: 3 tries, 50 ms backoff.
FAST = RetryPolicy(attempts=3, backoff=0.05, max_backoff=0.2)
#: For faults that fail by timing out: 2 tries are enough to show the retry.
TWICE = RetryPolicy(attempts=2, backoff=0.05, max_backoff=0.2)
#: A byte a second is no silence: read_timeout above that, so the trickle rules trip.
SLOW_READS: dict[str, Any] = {"read_timeout": 3.0}
#: Timeouts of a second or two (a clean local pull takes a fraction of that).
TIMEOUTS: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 1.0, "header_timeout": 2.0,
                            "low_speed_limit": 200, "low_speed_time": 1.0}
BOUND = 30.0  # seconds: any case taking longer hangs somewhere
BIG = 3 << 20  # bytes of the big (uncompressed) layer


@dataclass
class Image:
    registry: Registry
    repo: str
    info: images.ImageInfo
    reference: Path  # the rootfs of a clean pull

    def ref(self, host: str | None = None) -> str:
        return f"{host or self.registry.host}/{self.repo}:t"

    @property
    def big(self) -> str:
        """The digest of the big layer blob (3 MiB, uncompressed)."""
        return self.info.layer_digests[0]

    @property
    def size(self) -> int:
        return sum(d["size"] for d in self.info.manifest["layers"])


def _layers() -> list[list[images.Entry]]:
    rng = random.Random(9)
    return [[images.file("big.bin", rng.randbytes(BIG))],
            [images.directory("etc"), images.file("etc/motd", "faults\n"),
             images.symlink("etc/link", "motd")]]


def _push(layout: Path, registry: Registry, repo: str) -> images.ImageInfo:
    info = images.build_layout(layout, "t", _layers(), compression=["none", "gzip"])
    images.push_raw(layout, "t", registry, repo)
    return info


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> Image:
    """Two layers (3 MiB uncompressed, and a small gzip one) pushed byte-exact, and the
    rootfs a pull without faults makes."""
    work = tmp_path_factory.mktemp("faults")
    info = _push(work / "layout", registry, "faults/img")
    reference = work / "reference"
    _client(work / "store").pull(f"{registry.host}/faults/img:t", rootfs=reference)
    return Image(registry, "faults/img", info, reference)


def _client(root: Path, retry: RetryPolicy = FAST, **options: Any) -> Client:
    """A library client with small timeouts (the CLI does not reach them all yet)."""
    client = Client(root, plain_http=True, retry=retry)
    client.registry = RegistryClient(
        RegistryOptions(plain_http=True, retry=retry, **{**TIMEOUTS, **options}))
    return client


@dataclass
class Outcome:
    error: UnladeError | None
    seconds: float
    root: Path
    target: Path | None
    result: PullResult | None = None


def _pull(tmp_path: Path, ref: str, *, mode: str = "rootfs", retry: RetryPolicy = FAST,
          **options: Any) -> Outcome:
    """Pull ``ref`` with the library into a fresh store (and, in rootfs mode, a target);
    the error is returned, not raised."""
    root = tmp_path / "store"
    target = tmp_path / "out" / "rootfs" if mode == "rootfs" else None
    if target is not None:
        target.parent.mkdir(parents=True)
    client = _client(root, retry, **options)
    start = time.monotonic()
    result = None
    try:
        result = client.pull(ref, rootfs=target)
        error = None
    except UnladeError as err:
        error = err
    return Outcome(error, time.monotonic() - start, root, target, result)


def _assert_store_clean(root: Path) -> None:
    """Only verified blobs; no ingest leftovers; ``check`` finds nothing wrong and no
    half-unpacked snapshot."""
    if not root.exists():
        return
    assert bad_blobs(root) == []
    ingest = root / "ingest"
    assert not ingest.exists() or [p.name for p in ingest.iterdir()
                                   if p.suffix == ".part"] == []
    result = Client(root, plain_http=True).check()
    assert result.ok, result.problems
    assert not [n for n in result.notes if "half-unpacked" in n], result.notes


def _assert_completed(out: Outcome, image: Image) -> None:
    assert out.error is None, f"{type(out.error).__name__}: {out.error}"
    assert out.seconds < BOUND
    if out.target is not None:
        assert_same_tree(image.reference, out.target)
        assert list(out.target.parent.glob(f".{out.target.name}.unlade-*")) == []
    _assert_store_clean(out.root)


def _assert_failed(out: Outcome, *needles: str) -> UnladeError:
    error = out.error
    assert error is not None, "the pull completed"
    message = str(error)
    assert "\n" not in message and message.strip() == message
    for needle in needles:
        assert needle in message, message
    assert out.seconds < BOUND, (out.seconds, message)
    if out.target is not None:
        assert not out.target.exists()
        assert list(out.target.parent.glob(f".{out.target.name}.unlade-*")) == []
    _assert_store_clean(out.root)
    return error


def _bind(faults: list[Fault], image: Image) -> list[Fault]:
    """Fresh copies of ``faults`` (the tables are shared), with the placeholders BIG and
    CONFIG in ``match`` replaced by the image's big layer and config digests."""
    return [dataclasses.replace(f, hits=0, sent=0,
                                match=_sub(f.match, image) if f.match else None)
            for f in faults]


def _sub(text: str, image: Image) -> str:
    return text.replace("BIG", image.big).replace("CONFIG", image.info.config_digest)


# ----------------------------------------------------------------------------------------------
# Faults a pull gets over


@dataclass
class Recovers:
    """A fault the pull must get over; ``ranges``: the Range offsets its big blob must be
    asked for again from (``None``: not checked, e.g. a reset loses bytes in flight)."""

    faults: list[Fault]
    ranges: list[int] | None = None
    options: dict[str, Any] | None = None
    resumed_after: int | None = None  # the big blob resumed from at least this offset


def _recovers() -> dict[str, Recovers]:
    big = "BIG"  # replaced by the big layer's digest
    return {
        # connection reset (RST) mid-blob, at several offsets
        "reset before the response": Recovers([Fault("reset", at=None, match=big)]),
        "reset after the headers": Recovers([Fault("reset", at=0, match=big)]),
        "reset mid-blob": Recovers([Fault("reset", at=1 << 20, match=big)]),
        "reset before the last byte": Recovers([Fault("reset", at=-1, match=big)]),
        "reset mid-manifest": Recovers([Fault("reset", kind="manifest", at=100)]),
        "reset mid-config": Recovers([Fault("reset", at=50, match="CONFIG")]),
        # 5xx, 429 (Retry-After honoured: see test_retry_after_is_honoured)
        "500 on the manifest": Recovers([Fault("status", kind="manifest", times=2, status=500)]),
        "502 on a blob": Recovers([Fault("status", times=2, status=502, match=big)]),
        "503 on every kind": Recovers([Fault("status", kind="any", times=2, status=503)]),
        "429 with Retry-After": Recovers([Fault("status", kind="any", times=2, status=429,
                                                retry_after="0")]),
        # a body shorter than its Content-Length: resumed exactly where it stopped
        "short blob": Recovers([Fault("short", at=1 << 20, match=big)], [1 << 20]),
        "short blob, every time": Recovers(
            [Fault("short", at=1 << 20, times=None, match=big)],
            [1 << 20, 2 << 20, 3 << 20]),
        "short manifest": Recovers([Fault("short", kind="manifest", at=50)]),
        # a body longer than its Content-Length: the extra bytes are not taken
        "long blobs": Recovers([Fault("long", times=None)]),
        "long manifest": Recovers([Fault("long", kind="manifest", times=None)]),
        # a trickle: the headers (header_timeout), a body (low_speed_limit) -> resumed
        "headers at 20 B/s": Recovers([Fault("trickle", kind="manifest", at=None, rate=20)]),
        "blob at 1 B/s": Recovers([Fault("trickle", at=1000, rate=1, match=big)],
                                  options=SLOW_READS,
                                  resumed_after=1000),  # and the bytes that trickled in
        # a stall before the headers (read_timeout), and one shorter than the timeouts
        "stall before the headers": Recovers([Fault("stall", at=None, match=big)]),
        "stall mid-blob": Recovers([Fault("stall", at=1 << 20, match=big)], [1 << 20]),
        "short stalls": Recovers([Fault("stall", kind="any", at=None, seconds=0.4,
                                        times=2)]),
        # redirects: a few to itself (not a loop), then served
        "three redirects": Recovers([Fault("redirect", kind="any", times=3)]),
    }


RECOVERS = _recovers()


@pytest.mark.parametrize("name", list(RECOVERS))
def test_pull_completes_despite(name: str, image: Image, tmp_path: Path) -> None:
    case = RECOVERS[name]
    faults = _bind(case.faults, image)
    with FaultProxy(image.registry.host, faults=faults) as proxy:
        out = _pull(tmp_path, image.ref(proxy.host), **(case.options or {}))
    _assert_completed(out, image)
    assert all(f.hits for f in faults), "the fault never happened"
    big_gets = [r for r in proxy.requests if r.method == "GET" and image.big in r.path]
    ranges = [int(r.headers["Range"][6:-1]) for r in big_gets if "Range" in r.headers]
    if case.ranges is not None:
        assert ranges == case.ranges
    if case.resumed_after is not None:
        assert len(ranges) == 1 and case.resumed_after <= ranges[0] < case.resumed_after + 10
    # nothing lost: what arrived is kept, only the rest is asked for again, and no byte
    # was written twice
    assert all(0 < offset < image.info.manifest["layers"][0]["size"] for offset in ranges)
    assert out.result is not None and out.result.bytes_fetched == image.size


def test_retry_after_is_honoured(image: Image, tmp_path: Path) -> None:
    """429 with ``Retry-After: 1`` (and an HTTP date): the retry waits that long, though
    the backoff alone would be 50 ms; then the pull completes."""
    when = formatdate(time.time() + 4, usegmt=True)  # the manifest's retry comes first
    faults = [Fault("status", kind="manifest", times=1, status=429, retry_after="1"),
              Fault("status", kind="blob", times=1, status=429, retry_after=when)]
    retry = RetryPolicy(attempts=3, backoff=0.05, max_backoff=5.0)
    with FaultProxy(image.registry.host, faults=faults) as proxy:
        out = _pull(tmp_path, image.ref(proxy.host), retry=retry)
    _assert_completed(out, image)
    manifests = [r.time for r in proxy.requests if r.kind == "manifest"]
    assert manifests[1] - manifests[0] >= 0.9
    blobs = [r for r in proxy.requests if r.kind == "blob"]
    assert blobs[0].fault == "status"
    retried = next(r for r in blobs[1:] if r.path == blobs[0].path)
    assert retried.time - blobs[0].time >= 0.9  # the date is still 1.5-3 s ahead


def test_retry_policy_backoff_jitter_and_caps() -> None:
    """Exponential backoff with equal jitter, capped; Retry-After (seconds or an HTTP
    date) replaces it, capped too; garbage is ignored."""
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=3.0)
    for attempt, full in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = {policy.delay(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # jittered
    assert policy.delay(0, "2") == 2.0
    assert policy.delay(0, "3600") == 3.0
    assert 0.5 <= policy.delay(0, formatdate(time.time() + 2, usegmt=True)) <= 2.0
    assert policy.delay(0, formatdate(time.time() - 60, usegmt=True)) == 0.0
    assert 0.25 <= policy.delay(0, "soon") <= 0.5
    defaults = RegistryOptions()
    assert (defaults.connect_timeout, defaults.read_timeout, defaults.header_timeout,
            defaults.low_speed_limit, defaults.low_speed_time) == (30, 60, 60, 1024, 60)
    assert (RetryPolicy().attempts, RetryPolicy().backoff, RetryPolicy().max_backoff) == \
        (5, 0.25, 8.0)
    for bad in ({"attempts": 0}, {"backoff": -1.0}, {"max_backoff": float("nan")}):
        with pytest.raises(ConfigError, match=f"RetryPolicy.{next(iter(bad))} must be"):
            RetryPolicy(**bad)
    for bad in ({"read_timeout": 0}, {"header_timeout": -1}, {"low_speed_limit": 1.5},
                {"connect_timeout": True}):
        with pytest.raises(ConfigError, match=f"RegistryOptions.{next(iter(bad))} must be"):
            RegistryOptions(**bad)
    assert RegistryOptions(low_speed_limit=0).low_speed_limit == 0  # the check turned off


# ----------------------------------------------------------------------------------------------
# Faults a pull fails on, cleanly and in bounded time


@dataclass
class Fails:
    faults: list[Fault]
    needles: tuple[str, ...]
    error: type[UnladeError] = RegistryError
    retry: RetryPolicy = FAST
    options: dict[str, Any] | None = None


def _fails() -> dict[str, Fails]:
    big = "BIG"
    return {
        "reset, every time": Fails([Fault("reset", at=None, times=None)],
                                   ("connection reset by peer", "after 3 attempts")),
        "reset mid-blob, every time": Fails(
            [Fault("reset", at=100, times=None, match=big)],
            ("download of BIG failed", "connection reset by peer", "after 3 attempts")),
        "500, every time": Fails([Fault("status", kind="manifest", times=None, status=500)],
                                 ("answered HTTP 500", "for manifest", "after 3 attempts")),
        "502, every time": Fails([Fault("status", times=None, status=502, match=big)],
                                 ("answered HTTP 502 Bad Gateway", "for blob BIG",
                                  "after 3 attempts")),
        "503, every time": Fails([Fault("status", kind="any", times=None, status=503)],
                                 ("answered HTTP 503 Service Unavailable",
                                  "after 3 attempts")),
        "429, every time": Fails([Fault("status", kind="any", times=None, status=429,
                                        retry_after="0")],
                                 ("answered HTTP 429 Too Many Requests", "after 3 attempts")),
        "short blob, every time": Fails(
            [Fault("short", at=100, times=None, match=big)],
            ("download of BIG failed", "connection closed before the end of the body",
             "short of its Content-Length")),
        "short manifest, every time": Fails(
            [Fault("short", kind="manifest", at=50, times=None)],
            ("reading the manifest", "connection closed before the end of the body")),
        "blob at 1 B/s, every time": Fails(
            [Fault("trickle", at=0, rate=1, times=None, match=big)],
            ("download of BIG failed", "timed out", "low_speed_limit", "after 2 attempts"),
            RegistryTimeout, TWICE, SLOW_READS),
        "headers at 1 B/s, every time": Fails(
            [Fault("trickle", kind="manifest", at=None, rate=1, times=None)],
            ("timed out", "no complete response headers within 2 s", "after 2 attempts"),
            RegistryTimeout, TWICE, SLOW_READS),
        "stall before the headers, every time": Fails(
            [Fault("stall", kind="any", at=None, times=None)],
            ("timed out", "no data for 1 s", "after 2 attempts"), RegistryTimeout, TWICE),
        "stall mid-blob, every time": Fails(
            [Fault("stall", at=1000, times=None, match=big)],
            ("download of BIG failed", "timed out", "no data for 1 s"), RegistryTimeout,
            TWICE),
        "wrong bytes in a layer": Fails([Fault("corrupt", at=12345, match=big)],
                                        ("digest mismatch", "expected BIG"), DigestMismatch),
        "wrong last byte of a layer": Fails([Fault("corrupt", at=-1, match=big)],
                                            ("digest mismatch", "expected BIG"),
                                            DigestMismatch),
        "wrong bytes in the config": Fails([Fault("corrupt", at=10, match="CONFIG")],
                                           ("digest mismatch", "expected CONFIG"),
                                           DigestMismatch),
        "redirect loop on a blob": Fails([Fault("redirect", times=None, match=big)],
                                         ("too many redirects (5 followed)", "blobs/BIG")),
        "redirect loop on the manifest": Fails(
            [Fault("redirect", kind="manifest", times=None)],
            ("too many redirects (5 followed)", "manifests/t")),
    }


FAILS = _fails()


@pytest.mark.parametrize(("name", "mode"), [
    (name, mode) for name, case in FAILS.items() for mode in ("rootfs", "snapshots")
    # the timeouts do not depend on where layers go: once is enough for them
    if mode == "rootfs" or case.retry is not TWICE])
def test_pull_fails_cleanly_on(name: str, mode: str, image: Image, tmp_path: Path) -> None:
    case = FAILS[name]
    faults = _bind(case.faults, image)
    with FaultProxy(image.registry.host, faults=faults) as proxy:
        out = _pull(tmp_path, image.ref(proxy.host), mode=mode, retry=case.retry,
                    **(case.options or {}))
    error = _assert_failed(out, *(_sub(n, image) for n in case.needles))
    assert isinstance(error, case.error), type(error)
    assert all(f.hits for f in faults), "the fault never happened"
    assert len(proxy.requests) <= 30  # bounded retries


def test_connect_timeout(tmp_path: Path) -> None:
    """A host that never completes the TCP handshake (its listen queue is full, so the
    kernel drops our SYNs): connect_timeout per attempt, then a clear error."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.2)
        out = _pull(tmp_path, f"127.0.0.1:{port}/faults/img:t", retry=TWICE)
    finally:
        for s in [*fillers, server]:
            s.close()
    error = _assert_failed(out, f"cannot connect to 127.0.0.1:{port}", "timed out",
                           "no connection within 1 s", "after 2 attempts")
    assert isinstance(error, RegistryTimeout)
    assert out.seconds >= 1.5  # both attempts waited out their connect timeout


# ----------------------------------------------------------------------------------------------
# Redirects to another host: never the registry's credentials


def _cdn_pull(tmp_path: Path, registry: Registry, cdn_upstream: Registry, *,
              creds: tuple[str, str] | None) -> tuple[Outcome, FaultProxy, FaultProxy]:
    _push(tmp_path / "layout", registry, "faults/cdn")
    _push(tmp_path / "layout-cdn", cdn_upstream, "faults/cdn")  # the "CDN" has the blobs
    with FaultProxy(cdn_upstream.host, bind="127.0.0.2") as cdn, \
            FaultProxy(registry.host, faults=[Fault("redirect", times=None,
                                                    location=cdn.host)]) as front:
        root = tmp_path / "store"
        target = tmp_path / "out" / "rootfs"
        target.parent.mkdir()
        client = Client(root, plain_http=True, retry=FAST,
                        creds=":".join(creds) if creds else None)
        client.registry = RegistryClient(RegistryOptions(
            plain_http=True, retry=FAST, credentials=client.registry.options.credentials,
            **TIMEOUTS))
        start = time.monotonic()
        try:
            client.pull(f"{front.host}/faults/cdn:t", rootfs=target)
            error = None
        except UnladeError as err:
            error = err
    return Outcome(error, time.monotonic() - start, root, target), front, cdn


def _assert_no_credentials(cdn: FaultProxy, *secrets: str) -> None:
    assert cdn.requests, "nothing was redirected"
    for seen in cdn.requests:
        assert "authorization" not in {k.lower() for k in seen.headers}, seen
        for secret in secrets:
            assert secret.encode() not in seen.raw, seen


@pytest.mark.parametrize("mode", ["htpasswd", "token"])
def test_redirect_to_another_host_gets_no_credentials(
        mode: str, tmp_path: Path, make_registry: RegistryFactory, registry: Registry) -> None:
    """Blobs redirected to another host (a second listener, 127.0.0.2) are fetched
    without the Authorization header (basic credentials or the bearer token) the
    registry itself gets."""
    private = make_registry(mode, anonymous_pull=False) if mode == "token" \
        else make_registry(mode)
    user, password = private.credentials  # type: ignore[misc]
    out, front, cdn = _cdn_pull(tmp_path, private, registry, creds=(user, password))
    assert out.error is None, out.error
    _assert_store_clean(out.root)
    assert (out.target / "etc" / "motd").read_text() == "faults\n"  # type: ignore[operator]
    sent = [r.headers["Authorization"] for r in front.requests if "Authorization" in r.headers]
    assert sent and all(a.startswith("Bearer " if mode == "token" else "Basic ") for a in sent)
    assert len([r for r in cdn.requests if r.kind == "blob"]) == 3  # config and two layers
    _assert_no_credentials(cdn, password, *{a.split(" ", 1)[1] for a in sent})


def test_redirect_to_a_host_asking_for_credentials_fails(
        tmp_path: Path, make_registry: RegistryFactory) -> None:
    """The other host answers 401 with its own challenge: it gets no credentials, and the
    pull fails saying so."""
    private = make_registry("htpasswd")
    other = make_registry("htpasswd")
    user, password = private.credentials  # type: ignore[misc]
    out, _, cdn = _cdn_pull(tmp_path, private, other, creds=(user, password))
    _assert_failed(out, "unauthorized", "redirected to 127.0.0.2:",
                   "the registry's are not sent to another host")
    _assert_no_credentials(cdn, password)


# ----------------------------------------------------------------------------------------------
# The token endpoint fails or is slow


def _token_image(tmp_path: Path, make_registry: RegistryFactory) -> tuple[Registry, str]:
    reg = make_registry("token")
    _push(tmp_path / "layout", reg, "faults/token")
    return reg, f"{reg.host}/faults/token:t"


def test_token_endpoint_failing_at_first(tmp_path: Path, make_registry: RegistryFactory,
                                         ) -> None:
    reg, ref = _token_image(tmp_path, make_registry)
    assert reg.token_server is not None
    reg.token_server.fail_first = 2
    out = _pull(tmp_path, ref)
    assert out.error is None, out.error
    assert [r.status for r in reg.token_server.requests][:3] == [503, 503, 200]
    _assert_store_clean(out.root)


def test_token_endpoint_failing(tmp_path: Path, make_registry: RegistryFactory) -> None:
    reg, ref = _token_image(tmp_path, make_registry)
    assert reg.token_server is not None
    reg.token_server.fail_status = 500
    out = _pull(tmp_path, ref)
    _assert_failed(out, f"token service 127.0.0.1:{reg.token_server.port} answered HTTP 500",
                   "after 3 attempts")
    assert len(reg.token_server.requests) == 3


def test_token_endpoint_slow(tmp_path: Path, make_registry: RegistryFactory) -> None:
    """Slow but within the timeouts: the pull waits; slow once past them: retried."""
    reg, ref = _token_image(tmp_path, make_registry)
    assert reg.token_server is not None
    reg.token_server.delay = 0.5
    out = _pull(tmp_path, ref)
    assert out.error is None, out.error
    reg.token_server.delay, reg.token_server.delay_first = 5.0, 1
    reg.token_server.reset_counters()
    out = _pull(tmp_path / "again", ref)
    assert out.error is None, out.error
    assert reg.token_server.received == 2  # the first answer was too late: asked again
    assert 1.0 <= out.seconds < BOUND
    _assert_store_clean(out.root)


def test_token_endpoint_too_slow(tmp_path: Path, make_registry: RegistryFactory) -> None:
    reg, ref = _token_image(tmp_path, make_registry)
    assert reg.token_server is not None
    reg.token_server.delay = 5.0
    out = _pull(tmp_path, ref, retry=TWICE)
    error = _assert_failed(out, f"token service 127.0.0.1:{reg.token_server.port}",
                           "timed out", "after 2 attempts")
    assert isinstance(error, RegistryTimeout)


# ----------------------------------------------------------------------------------------------
# Huge manifests


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_manifest_of_100_mb(chunked: bool, image: Image, tmp_path: Path) -> None:
    """100 MB served as the manifest: refused unread when its Content-Length says so, or
    after the limit (4 MiB) when it does not; never held in memory whole."""
    fault = Fault("body", kind="manifest", times=None, status=200, size=100 << 20,
                  chunked=chunked)
    with FaultProxy(image.registry.host, faults=[fault]) as proxy:
        tracemalloc.start()
        try:
            out = _pull(tmp_path, image.ref(proxy.host))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    error = _assert_failed(out, "manifest", "exceeds the limit of 4,194,304 bytes")
    assert isinstance(error, ManifestError)
    assert fault.hits == 1  # not retried
    assert peak < 32 << 20, peak
    assert fault.sent < 32 << 20, fault.sent  # the client hung up long before the end


def test_manifest_listing_10000_layers(tmp_path: Path, registry: Registry) -> None:
    """A real (pushed, byte-exact) manifest of 10 000 layers -- all the same tiny blob, so
    it is small (1.5 MB) and valid: refused before any layer is fetched."""
    tar = images.layer_tar([images.file("f", "x")])
    layer = {"mediaType": images.LAYER_MEDIA_TYPES["none"],
             "digest": registry.upload_blob("faults/layers", tar), "size": len(tar)}
    config = images.canonical_json({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [images.sha256_digest(tar)] * 10_000}})
    manifest = images.canonical_json({
        "schemaVersion": 2, "mediaType": images.MT_OCI_MANIFEST,
        "config": {"mediaType": images.MT_OCI_CONFIG, "size": len(config),
                   "digest": registry.upload_blob("faults/layers", config)},
        "layers": [layer] * 10_000})
    registry.put_manifest("faults/layers", "t", manifest, images.MT_OCI_MANIFEST)
    with FaultProxy(registry.host) as proxy:
        out = _pull(tmp_path, f"{proxy.host}/faults/layers:t")
    _assert_failed(out, "10,000 layers")
    assert not [r for r in proxy.requests if layer["digest"] in r.path]


# ----------------------------------------------------------------------------------------------
# The command line: the same faults, one line on stderr, exit 1 (default settings)


def _cli_cases() -> dict[str, tuple[list[Fault], str]]:
    return {
        "503, every time": ([Fault("status", kind="manifest", times=None, status=503)],
                            "answered HTTP 503 Service Unavailable for manifest (UNAVAILABLE: "
                            "injected by the fault proxy) (after 5 attempts)"),
        "reset mid-blob, every time": ([Fault("reset", at=100, times=None, match="BIG")],
                                       "connection reset by peer (after 5 attempts)"),
        "wrong bytes": ([Fault("corrupt", at=777, match="BIG")], "digest mismatch"),
        "redirect loop": ([Fault("redirect", times=None)], "too many redirects"),
        "manifest of 100 MB": ([Fault("body", kind="manifest", times=None, status=200,
                                     size=100 << 20)],
                               "manifest of 104,857,600 bytes from 127.0.0.1:"),
    }


CLI = _cli_cases()


@pytest.mark.parametrize("name", list(CLI))
def test_cli_one_line_error(name: str, image: Image, tmp_path: Path, run_unlade: RunUnlade,
                            unlade_root: Path) -> None:
    faults, needle = CLI[name]
    faults = _bind(faults, image)
    target = tmp_path / "rootfs"
    with FaultProxy(image.registry.host, faults=faults) as proxy:
        start = time.monotonic()
        proc = run_unlade("pull", "--plain-http", image.ref(proxy.host), "--rootfs", target,
                          timeout=120)
        seconds = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlade: error: "), proc.stderr
    assert needle in lines[0], lines[0]
    assert seconds < 60
    assert not target.exists() and list(tmp_path.glob(".rootfs.unlade-*")) == []
    if unlade_root.exists():
        _assert_store_clean(unlade_root)


def test_cli_token_endpoint_failing(tmp_path: Path, make_registry: RegistryFactory,
                                    run_unlade: RunUnlade, unlade_root: Path) -> None:
    reg, ref = _token_image(tmp_path, make_registry)
    assert reg.token_server is not None
    reg.token_server.fail_status = 502
    home = tmp_path / "home"
    home.mkdir()
    proc = run_unlade("pull", "--plain-http", ref, "--rootfs", tmp_path / "r",
                      env={"HOME": str(home), "REGISTRY_AUTH_FILE": None,
                           "XDG_RUNTIME_DIR": str(home), "DOCKER_CONFIG": None})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlade: error: "), proc.stderr
    assert f"token service 127.0.0.1:{reg.token_server.port} answered HTTP 502 Bad Gateway " \
        "(after 5 attempts)" in lines[0]
    assert not (tmp_path / "r").exists()
    if unlade_root.exists():
        _assert_store_clean(unlade_root)


