"""Mirrors and pull-through caches (issue 10), with real registries on loopback.

The origin is a ``docker-registry``; the cache is another ``docker-registry`` in proxy
mode (``proxy.remoteurl`` = the origin), which is how a pull-through cache is usually run.
unlade reaches the cache as a ``[[registry.mirror]]`` of the origin in registries.conf, and
the origin's access log tells what reached the origin.

distribution 2.8 (Debian's docker-registry) fetches a blob from the origin twice on its
first miss (once to store it, once to answer the request; its own source says so), and
passes concurrent misses straight through to the origin while the first fetch runs. The
counts asserted here are those of that cache; see README "Running at scale".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import images as im
from harness.faultproxy import FaultProxy
from harness.protocols import RegistryFactory, RunUnlade
from harness.registry import Registry
from harness.tree import assert_same_tree

SRC = Path(__file__).resolve().parent.parent / "src"


def conf_for(tmp_path: Path, origin: str, mirrors: list[str], *, extra: str = "",
             name: str = "registries.conf") -> Path:
    lines = ["[[registry]]", f'location = "{origin}"', "insecure = true", extra]
    for m in mirrors:
        lines += ["[[registry.mirror]]", f'location = "{m}"', "insecure = true"]
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def blob_gets(registry: Registry) -> Counter[str]:
    """Blob GETs the registry answered with 200, by digest."""
    return Counter(e.path.rsplit("/", 1)[1] for e in registry.requests()
                   if e.method == "GET" and "/blobs/" in e.path and e.status == 200)


class Setup:
    def __init__(self, origin: Registry, cache: Registry, ref: str, layers: list[str],
                 work: Path) -> None:
        self.origin, self.cache, self.ref, self.layers, self.work = (origin, cache, ref,
                                                                     layers, work)


@pytest.fixture
def setup(make_registry: RegistryFactory, tmp_path: Path) -> Iterator[Setup]:
    origin = make_registry()
    pushed = im.build_and_push(tmp_path / "layout", origin, "team/app", "v1",
                               [[im.file(f"layer{i}/data", os.urandom(300_000 + i))]
                                for i in range(3)], raw=True)
    assert isinstance(pushed.info, im.ImageInfo)
    cache = make_registry(extra_config={"proxy": {"remoteurl": origin.url}})
    origin.mark()
    yield Setup(origin, cache, f"{origin.host}/team/app:v1",
                [d["digest"] for d in pushed.info.manifest["layers"]], tmp_path)


def pull_json(run_unlade: RunUnlade, root: Path, *args: str | Path, plain: bool = True
              ) -> dict:
    proc = run_unlade("pull", *(["--plain-http"] if plain else []), "--json", *args,
                      root=root, check=True)
    return json.loads(proc.stdout)


def test_pulls_through_the_mirror(setup: Setup, run_unlade: RunUnlade) -> None:
    """No --plain-http: registries.conf's ``insecure`` lets unlade fall back to HTTP for
    the two registries (after trying HTTPS), as containers/image does."""
    conf = conf_for(setup.work, setup.origin.host, [setup.cache.host])
    doc = pull_json(run_unlade, setup.work / "s1", "--registries-conf", conf, setup.ref,
                    "--rootfs", setup.work / "via-mirror", plain=False)
    assert doc["manifest_endpoint"] == setup.cache.host
    assert [la["endpoint"] for la in doc["layers"]] == [setup.cache.host] * 3
    # the origin saw the cache, never unlade
    assert all("unlade" not in e.user_agent for e in setup.origin.requests())
    first = blob_gets(setup.origin)
    assert set(setup.layers) <= set(first)
    # a second pull (another machine: another store) is served by the cache alone
    setup.origin.mark()
    doc = pull_json(run_unlade, setup.work / "s2", "--registries-conf", conf, setup.ref,
                    "--rootfs", setup.work / "again")
    assert not blob_gets(setup.origin), "the cache did not serve the second pull"
    run_unlade("pull", "--plain-http", "-q", setup.ref, "--rootfs", setup.work / "direct",
               root=setup.work / "s3", check=True)
    assert_same_tree(setup.work / "direct", setup.work / "via-mirror")
    assert_same_tree(setup.work / "direct", setup.work / "again")


def test_concurrent_pulls_through_a_cold_cache(setup: Setup, tmp_path: Path) -> None:
    """N processes at once, each with its own store: all complete, every rootfs is the
    image; the origin's blob GETs are counted (distribution 2.8 passes concurrent misses
    through and fetches twice on a miss of its own, so they are between one and 2N per
    blob)."""
    n = 5
    conf = conf_for(tmp_path, setup.origin.host, [setup.cache.host])
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "unlade", "--root", str(tmp_path / f"store{i}"), "pull",
         "--plain-http", "-q", "--registries-conf", str(conf), setup.ref, "--rootfs",
         str(tmp_path / f"rootfs{i}")], env=env, stderr=subprocess.PIPE, text=True)
        for i in range(n)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, errors
    for i in range(1, n):
        assert_same_tree(tmp_path / "rootfs0", tmp_path / f"rootfs{i}")
    gets = blob_gets(setup.origin)
    assert all(1 <= gets[d] <= 2 * n for d in setup.layers), gets


def test_mirror_down_mid_pull_falls_back_to_the_origin(
        setup: Setup, run_unlade: RunUnlade, tmp_path: Path) -> None:
    """The cache dies while the layers stream through it (slowed by a proxy): the pull
    resumes each unfinished layer from the origin and completes."""
    slow = FaultProxy(setup.cache.host, rate=100_000).__enter__()
    mirror = slow.host
    conf = conf_for(tmp_path, setup.origin.host, [mirror])
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unlade", "--root", str(tmp_path / "store"), "pull",
         "--plain-http", "--json", "--registries-conf", str(conf), setup.ref,
         "--rootfs", str(tmp_path / "rootfs")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not slow.blob_gets(setup.layers).total() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    setup.cache.stop()  # the mirror goes away mid-pull: its connections drop,
    slow.__exit__(None, None, None)  # and nothing listens there any more
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["manifest_endpoint"] == mirror
    endpoints = {la["endpoint"] for la in doc["layers"]}
    assert setup.origin.host in endpoints, doc["layers"]
    run_unlade("pull", "--plain-http", "-q", setup.ref, "--rootfs", tmp_path / "direct",
               root=tmp_path / "s-direct", check=True)
    assert_same_tree(tmp_path / "direct", tmp_path / "rootfs")


def test_mirror_that_is_down_from_the_start(setup: Setup, run_unlade: RunUnlade,
                                            tmp_path: Path) -> None:
    setup.cache.stop()
    conf = conf_for(tmp_path, setup.origin.host, [setup.cache.host])
    doc = pull_json(run_unlade, tmp_path / "s", "--registries-conf", conf, setup.ref,
                    "--rootfs", tmp_path / "r")
    assert doc["manifest_endpoint"] == setup.origin.host
    assert {la["endpoint"] for la in doc["layers"]} == {setup.origin.host}


def test_blocked_registry_is_refused(setup: Setup, run_unlade: RunUnlade,
                                     tmp_path: Path, unlade_root: Path) -> None:
    conf = conf_for(tmp_path, setup.origin.host, [], extra="blocked = true")
    proc = run_unlade("pull", "--plain-http", "--registries-conf", conf, setup.ref,
                      "--rootfs", tmp_path / "r")
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"unlade: error: {setup.ref}: registry "
                                   f"{setup.origin.host} is blocked in {conf}")
    assert not setup.origin.requests(), "a blocked registry was contacted"
    assert not (tmp_path / "r").exists()


def test_blocked_origin_pulled_only_through_its_mirror(setup: Setup, run_unlade: RunUnlade,
                                                       tmp_path: Path) -> None:
    """``blocked`` on the origin with a mirror: never contact the source directly, as
    containers/image reads it."""
    conf = conf_for(tmp_path, setup.origin.host, [setup.cache.host], extra="blocked = true")
    doc = pull_json(run_unlade, tmp_path / "s", "--registries-conf", conf, setup.ref,
                    "--rootfs", tmp_path / "r")
    assert {la["endpoint"] for la in doc["layers"]} == {setup.cache.host}
    setup.cache.stop()
    proc = run_unlade("pull", "--plain-http", "--registries-conf", conf, setup.ref,
                      "--rootfs", tmp_path / "r2", root=tmp_path / "s2")
    assert proc.returncode == 1 and "cannot connect to" in proc.stderr, proc.stderr


def test_digest_only_mirror(setup: Setup, run_unlade: RunUnlade, tmp_path: Path) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{setup.origin.host}"\n'
                    f'[[registry.mirror]]\nlocation = "{setup.cache.host}"\n'
                    'pull-from-mirror = "digest-only"\n')
    by_tag = pull_json(run_unlade, tmp_path / "s1", "--registries-conf", conf, setup.ref,
                       "--rootfs", tmp_path / "a")
    assert by_tag["manifest_endpoint"] == setup.origin.host
    digest_ref = f"{setup.origin.host}/team/app@{by_tag['manifest_digest']}"
    by_digest = pull_json(run_unlade, tmp_path / "s2", "--registries-conf", conf,
                          digest_ref, "--rootfs", tmp_path / "b")
    assert by_digest["manifest_endpoint"] == setup.cache.host


def test_the_mirror_never_gets_the_origins_credentials(make_registry: RegistryFactory,
                                                        run_unlade: RunUnlade,
                                                        tmp_path: Path) -> None:
    """An origin behind a password; the cache logs in to it with credentials of its own.
    unlade is given the origin's credentials: the mirror must not receive them."""
    origin = make_registry("token")  # distribution 2.8's proxy logs in by token only
    im.build_and_push(tmp_path / "layout", origin, "team/app", "v1",
                      [[im.file("f", b"secret layer")]], raw=True)
    cache = make_registry(extra_config={"proxy": {
        "remoteurl": origin.url, "username": origin.username, "password": origin.password}})
    with FaultProxy(cache.host) as spy:
        conf = conf_for(tmp_path, origin.host, [spy.host])
        doc = pull_json(run_unlade, tmp_path / "s", "--registries-conf", conf,
                        "--creds", f"{origin.username}:{origin.password}",
                        f"{origin.host}/team/app:v1", "--rootfs", tmp_path / "r")
        assert doc["manifest_endpoint"] == spy.host
        assert spy.requests, "nothing went through the mirror"
        leaked = [r for r in spy.requests if "authorization" in {k.lower() for k in r.headers}]
        assert not leaked, leaked
