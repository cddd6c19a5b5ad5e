"""HTTP(S) proxies (issue 10): a real forward proxy (tinyproxy) on loopback. A guest that
cannot reach a registry directly pulls through it: plain-HTTP registries with absolute-form
requests, TLS registries through ``CONNECT`` (the TLS session is end to end, verified
against the registry's own CA). ``NO_PROXY`` and the config file's ``[proxy]`` are
honoured; a proxy that is down is a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import images as im
from harness.forwardproxy import ForwardProxy
from harness.protocols import RegistryFactory, RunUnlade
from harness.registry import Registry, free_port
from harness.tools import require_tool

from unlade.registry import _no_proxy, _proxy_for, _proxy_settings

NO_ENV = {k: None for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy",
                            "https_proxy", "no_proxy", "ALL_PROXY", "all_proxy")}


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[ForwardProxy]:
    require_tool("tinyproxy")
    with ForwardProxy(tmp_path / "tinyproxy") as p:
        yield p


def image(registry: Registry, tmp_path: Path) -> str:
    im.build_and_push(tmp_path / "layout", registry, "proxied/app", "v1",
                      [[im.file("hello", b"through the proxy\n")]], raw=True)
    return f"{registry.host}/proxied/app:v1"


def test_plain_http_registry_through_the_proxy(registry: Registry, proxy: ForwardProxy,
                                               run_unlade: RunUnlade, tmp_path: Path) -> None:
    ref = image(registry, tmp_path)
    run_unlade("pull", "--plain-http", "-q", ref, "--rootfs", tmp_path / "r",
               env={**NO_ENV, "HTTP_PROXY": proxy.url}, check=True)
    assert (tmp_path / "r" / "hello").read_bytes() == b"through the proxy\n"
    seen = proxy.requests()
    assert ("GET", f"http://{registry.host}/v2/proxied/app/manifests/v1") in seen
    assert any(m == "GET" and "/blobs/sha256:" in t for m, t in seen)


def test_tls_registry_through_connect(make_registry: RegistryFactory, proxy: ForwardProxy,
                                      run_unlade: RunUnlade, tmp_path: Path) -> None:
    registry = make_registry("tls")
    ref = image(registry, tmp_path)
    assert registry.cert_dir is not None
    run_unlade("pull", "-q", "--cert-dir", registry.cert_dir, ref, "--rootfs", tmp_path / "r",
               env={**NO_ENV, "https_proxy": proxy.host}, check=True)  # no scheme: http://
    assert (tmp_path / "r" / "hello").exists()
    seen = proxy.requests()
    assert seen and all(m == "CONNECT" and t == registry.host for m, t in seen), seen


def test_no_proxy_goes_direct(registry: Registry, proxy: ForwardProxy, run_unlade: RunUnlade,
                              tmp_path: Path) -> None:
    ref = image(registry, tmp_path)
    port = registry.host.rsplit(":", 1)[1]
    for no_proxy in ("127.0.0.1", f"127.0.0.1:{port}", "127.0.0.0/8", "*"):
        run_unlade("pull", "--plain-http", "-q", ref, "--rootfs", tmp_path / no_proxy.replace(
            "/", "_"), env={**NO_ENV, "HTTP_PROXY": proxy.url, "NO_PROXY": no_proxy},
            root=tmp_path / f"s-{no_proxy.replace('/', '_')}", check=True)
    assert proxy.requests() == []


def test_config_file_proxy_replaces_the_environment(registry: Registry, proxy: ForwardProxy,
                                                    run_unlade: RunUnlade,
                                                    tmp_path: Path) -> None:
    ref = image(registry, tmp_path)
    conf = tmp_path / "unlade.toml"
    conf.write_text(f'[proxy]\nhttp_proxy = "{proxy.url}"\n')
    dead = f"http://127.0.0.1:{free_port()}"
    run_unlade("--config", conf, "pull", "--plain-http", "-q", ref, "--rootfs", tmp_path / "r",
               env={**NO_ENV, "HTTP_PROXY": dead}, check=True)
    assert any(m == "GET" for m, _ in proxy.requests())


def test_proxy_down_is_a_clear_error(registry: Registry, run_unlade: RunUnlade,
                                     tmp_path: Path) -> None:
    ref = image(registry, tmp_path)
    dead = f"127.0.0.1:{free_port()}"
    proc = run_unlade("pull", "--plain-http", "--retries", "1", ref, "--rootfs", tmp_path / "r",
                      env={**NO_ENV, "HTTP_PROXY": f"http://{dead}"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unlade: error: "), proc.stderr
    assert dead in lines[0] and "proxy" in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_mirror_through_the_proxy_json(make_registry: RegistryFactory, proxy: ForwardProxy,
                                       run_unlade: RunUnlade, tmp_path: Path) -> None:
    """A guest behind a proxy, pulling through a pull-through cache: both hops work
    together and --json names the mirror."""
    origin = make_registry()
    ref = image(origin, tmp_path)
    cache = make_registry(extra_config={"proxy": {"remoteurl": origin.url}})
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{origin.host}"\ninsecure = true\n'
                    f'[[registry.mirror]]\nlocation = "{cache.host}"\ninsecure = true\n')
    proc = run_unlade("pull", "--json", "--registries-conf", conf, ref, "--rootfs",
                      tmp_path / "r", env={**NO_ENV, "HTTP_PROXY": proxy.url,
                                           "HTTPS_PROXY": proxy.url}, check=True)
    doc = json.loads(proc.stdout)
    assert doc["manifest_endpoint"] == cache.host
    assert cache.host in proxy.hosts() and origin.host not in proxy.hosts()


@pytest.mark.parametrize(("no_proxy", "target", "bypass"), [
    ("", "registry.example:443", False),
    ("*", "registry.example:443", True),
    ("example", "registry.example:443", True),
    (".example", "registry.example:443", True),
    ("registry.example", "registry.example:443", True),
    ("other.example", "registry.example:443", False),
    ("xample", "registry.example:443", False),
    ("registry.example:5000", "registry.example:443", False),
    ("registry.example:443", "registry.example:443", True),
    ("10.0.0.0/8", "10.1.2.3:5000", True),
    ("10.0.0.0/8", "11.1.2.3:5000", False),
    ("::1", "[::1]:5000", True),
    (" a , registry.example ", "registry.example", True),
])
def test_no_proxy_rules(no_proxy: str, target: str, bypass: bool) -> None:
    assert _no_proxy(no_proxy, target) is bypass


def test_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in NO_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.example:3128")
    monkeypatch.setenv("https_proxy", "http://lower.example:3128")
    monkeypatch.setenv("NO_PROXY", "localhost")
    env = _proxy_settings(None)
    assert env == {"https": "http://lower.example:3128", "no": "localhost"}
    assert _proxy_for(env, "https", "registry.example:443") == "http://lower.example:3128"
    assert _proxy_for(env, "http", "registry.example:80") is None
    assert _proxy_for(env, "https", "localhost:5000") is None
    conf = _proxy_settings({"http_proxy": "http://p:1", "no_proxy": ""})
    assert conf == {"http": "http://p:1"}  # the environment is not read then
