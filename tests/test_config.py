"""``unlade.toml``: the documented example parses to what it says, files are found in the
documented order, mistakes are one-line errors naming key and file, and flags win."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

import unlade.config as config_module
from unlade.config import (
    DEFAULT_MAX_CONCURRENT_DOWNLOADS,
    ProxyConfig,
    UnladeConfig,
    find_config,
    load_config,
)
from unlade.errors import ConfigError
from unlade.limits import Limits
from unlade.resources import DEFAULT_CDH_ADDRESS, CdhResourceProvider


def documented_example() -> str:
    """The TOML block of the module docstring (what the README shows)."""
    doc = config_module.__doc__ or ""
    block = doc.split("so a typo never silently falls back to a default)::\n", 1)[1]
    block = block.split("\nPaths (", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines())


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


# -- parsing -------------------------------------------------------------------------------


def test_documented_example_parses(tmp_path: Path) -> None:
    conf = write(tmp_path / "unlade.toml", documented_example())
    c = UnladeConfig.from_file(conf)
    assert c == UnladeConfig(
        root=Path("/var/lib/unlade"),
        snapshotter="auto",
        policy="kbs:///default/security-policy/test",
        registries_d="file:///etc/containers/registries.d",
        authfile="kbs:///default/credential/test",
        registries_conf=Path("/etc/containers/registries.conf"),
        max_concurrent_downloads=3,
        unpack_workers=4,
        insecure_policy=False,
        kbs_address="127.0.0.1:50000",
        proxy=ProxyConfig(https_proxy="http://proxy.example:3128",
                          http_proxy="http://proxy.example:3128",
                          no_proxy="localhost,127.0.0.1,.internal"),
        plain_http_registries=("127.0.0.1:5000", "registry.local"),
        cert_dir=Path("/etc/unlade/certs.d"),
        require_encrypted=("registry.example/confidential", "*.secure.example"),
    )
    assert c.source == conf


def test_every_key_is_documented() -> None:
    documented = set(re.findall(r"^(\w+) =", documented_example(), re.MULTILINE))
    fields = {f for f in UnladeConfig.__dataclass_fields__ if f != "source"}
    assert fields - {"proxy", "limits", "network"} <= documented
    assert "\n[network]\n" in documented_example()
    assert "\n[limits]\n" in documented_example()
    for f in dataclasses.fields(Limits):
        assert f.name in documented, f.name
    assert {"https_proxy", "http_proxy", "no_proxy"} <= documented


def test_defaults() -> None:
    c = UnladeConfig.from_toml("")
    assert c == UnladeConfig()
    assert (c.root, c.policy, c.snapshotter) == (None, None, "auto")
    assert c.max_concurrent_downloads == DEFAULT_MAX_CONCURRENT_DOWNLOADS == 3
    assert c.kbs_address == DEFAULT_CDH_ADDRESS and c.proxy == ProxyConfig()


def test_relative_paths_are_relative_to_the_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    conf = write(tmp_path / "etc" / "unlade.toml",
                 'root = "store"\ncert_dir = "~/certs"\npolicy = "policy.json"\n'
                 'authfile = "file:///run/auth.json"\nregistries_d = "kbs:///d/sig/1"\n')
    c = UnladeConfig.from_file(conf)
    assert c.root == tmp_path / "etc" / "store"
    assert c.cert_dir == tmp_path / "home" / "certs"
    assert c.policy == str(tmp_path / "etc" / "policy.json")
    assert (c.authfile, c.registries_d) == ("file:///run/auth.json", "kbs:///d/sig/1")


def test_sigstore_config_is_another_name_for_registries_d(tmp_path: Path) -> None:
    c = UnladeConfig.from_toml('sigstore_config = "kbs:///default/sigstore-config/test"')
    assert c.registries_d == "kbs:///default/sigstore-config/test"
    with pytest.raises(ConfigError) as err:
        UnladeConfig.from_toml('registries_d = "/a"\nsigstore_config = "/b"', "x.toml")
    assert "same setting" in one_line(err) and "x.toml" in str(err.value)


# -- mistakes ------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ('polcy = "/etc/policy.json"', "unknown key 'polcy'"),
    ('[proxy]\nftp_proxy = "x"', "unknown key 'proxy.ftp_proxy'"),
    ('[registry]\nx = 1', "unknown key 'registry'"),
    ('max_concurrent_downloads = "3"', "max_concurrent_downloads: expected an integer, got a "
                                       "string"),
    ("max_concurrent_downloads = true", "max_concurrent_downloads: expected an integer, got "
                                        "a boolean"),
    ("max_concurrent_downloads = 0", "max_concurrent_downloads: must be at least 1, not 0"),
    ("unpack_workers = 2.5", "unpack_workers: expected an integer, got a number"),
    ('insecure_policy = "yes"', "insecure_policy: expected true or false, got a string"),
    ("root = 1", "root: expected a string, got an integer"),
    ('root = ""', "root: must not be empty"),
    ('snapshotter = "zfs"', "unknown snapshotter 'zfs'; choose overlayfs, native, auto"),
    ('plain_http_registries = "127.0.0.1:5000"', "plain_http_registries: expected an array"),
    ("plain_http_registries = [1]", "plain_http_registries[0]: expected a string"),
    ('plain_http_registries = ["http://r:5000"]', "is not a registry host"),
    ('policy = "kbs://kbs.example/default/policy/1"', "policy: invalid kbs resource URI"),
    ('authfile = "kbs:///default/../x"', "authfile: invalid kbs resource URI"),
    ('registries_d = "https://example.com/r.d"', "unsupported resource URI scheme 'https'"),
    ('kbs_address = "https://cdh:50000"', "kbs_address: invalid resource provider address"),
    ('proxy = "http://p:3128"', "proxy: expected a table, got a string"),
    ("[proxy]\nno_proxy = 1", "proxy.no_proxy: expected a string"),
    ("root = ", "invalid TOML"),
])
def test_mistakes_are_one_line_errors_naming_key_and_file(tmp_path: Path, text: str,
                                                          expected: str) -> None:
    conf = write(tmp_path / "unlade.toml", text + "\n")
    with pytest.raises(ConfigError) as err:
        UnladeConfig.from_file(conf)
    message = one_line(err)
    assert message.startswith(f"{conf}: "), message
    assert expected in message


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        UnladeConfig.from_file(tmp_path / "missing.toml")
    assert "missing.toml" in one_line(err) and "No such file" in str(err.value)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'root = "/caf\xe9"\n')
    with pytest.raises(ConfigError) as err:
        UnladeConfig.from_file(bad)
    assert "not UTF-8" in one_line(err)


# -- where the file is -----------------------------------------------------------------------


def test_search_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    system = tmp_path / "etc" / "unlade.toml"
    env = {"HOME": str(home)}
    assert find_config(env=env, system=system) is None
    assert load_config(env=env, system=system) == UnladeConfig()

    write(system, 'snapshotter = "native"\n')
    assert find_config(env=env, system=system) == system
    assert load_config(env=env, system=system).snapshotter == "native"

    home_conf = write(home / ".config" / "unlade" / "unlade.toml", 'snapshotter = "auto"\n')
    assert find_config(env=env, system=system) == home_conf

    xdg_conf = write(xdg / "unlade" / "unlade.toml", 'snapshotter = "overlayfs"\n')
    assert find_config(env=env, system=system) == home_conf  # XDG_CONFIG_HOME unset
    env["XDG_CONFIG_HOME"] = str(xdg)
    assert find_config(env=env, system=system) == xdg_conf
    assert load_config(env=env, system=system).snapshotter == "overlayfs"  # not merged

    env_conf = write(tmp_path / "env.toml", "unpack_workers = 2\n")
    env["UNLADE_CONFIG"] = str(env_conf)
    assert find_config(env=env, system=system) == env_conf

    flag_conf = write(tmp_path / "flag.toml", "unpack_workers = 7\n")
    assert find_config(flag_conf, env=env, system=system) == flag_conf
    assert load_config(flag_conf, env=env, system=system).unpack_workers == 7


def test_explicit_config_must_exist(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "UNLADE_CONFIG": str(tmp_path / "gone.toml")}
    with pytest.raises(ConfigError) as err:
        load_config(env=env, system=tmp_path / "none")
    assert "gone.toml" in one_line(err)
    with pytest.raises(ConfigError, match="typo.toml"):
        load_config(tmp_path / "typo.toml", env={"HOME": str(tmp_path)},
                    system=tmp_path / "none")


def test_uses_the_real_environment_by_default(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "c.toml", "insecure_policy = true\n")
    monkeypatch.setenv("UNLADE_CONFIG", str(conf))
    assert load_config().insecure_policy is True


# -- the command line on top -----------------------------------------------------------------


def test_flags_override_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = write(tmp_path / "unlade.toml", documented_example())
    c = UnladeConfig.from_file(conf)
    monkeypatch.chdir(tmp_path)
    flags = {
        "root": Path("here"),            # a PathLike, relative to the cwd
        "snapshotter": "native",
        "policy": None,                  # not given: the file's stays
        "authfile": "/root/auth.json",
        "insecure_policy": True,
        "unpack_workers": None,
        "max_concurrent_downloads": 8,
        "plain_http_registries": ("localhost:5000",),
        "kbs_address": "unix:///run/cdh.sock",
        "https_proxy": "http://other:8080",
        "no_proxy": None,
    }
    m = c.merged(flags)
    assert m.root == tmp_path / "here"
    assert m.snapshotter == "native"
    assert m.policy == "kbs:///default/security-policy/test"
    assert m.authfile == "/root/auth.json"
    assert m.insecure_policy is True
    assert m.unpack_workers == 4
    assert m.max_concurrent_downloads == 8
    assert m.plain_http_registries == ("localhost:5000",)
    assert m.kbs_address == "unix:///run/cdh.sock"
    assert m.proxy == ProxyConfig(https_proxy="http://other:8080",
                                  http_proxy="http://proxy.example:3128",
                                  no_proxy="localhost,127.0.0.1,.internal")
    assert c.snapshotter == "auto"  # the original is untouched
    assert c.merged({}) == c and c.merged({"root": None, "policy": None}) == c


def test_flag_false_overrides_file_true() -> None:
    c = UnladeConfig.from_toml("insecure_policy = true")
    assert c.merged({"insecure_policy": None}).insecure_policy is True
    assert c.merged({"insecure_policy": False}).insecure_policy is False


def test_bad_flags() -> None:
    with pytest.raises(ConfigError) as err:
        UnladeConfig().merged({"max_concurrent_downloads": 0})
    assert one_line(err) == "command line: max_concurrent_downloads: must be at least 1, not 0"
    with pytest.raises(ConfigError, match="command line: policy: invalid kbs resource URI"):
        UnladeConfig().merged({"policy": "kbs:///a/b"})
    with pytest.raises(TypeError, match="unknown setting 'polcy'"):
        UnladeConfig().merged({"polcy": "/x"})


# -- helpers -------------------------------------------------------------------------------


def test_plain_http_for() -> None:
    c = UnladeConfig(plain_http_registries=("127.0.0.1:5000", "Registry.Local", "[::1]"))
    assert c.plain_http_for("127.0.0.1:5000")
    assert not c.plain_http_for("127.0.0.1:5001")
    assert c.plain_http_for("registry.local:443")  # a bare host covers its ports
    assert c.plain_http_for("[::1]:5000")
    assert not c.plain_http_for("docker.io")


def test_resource_provider_uses_kbs_address() -> None:
    p = UnladeConfig.from_toml('kbs_address = "unix:///run/cdh.sock"').resource_provider(3)
    assert isinstance(p, CdhResourceProvider)
    assert (p.address, p.timeout) == ("unix:///run/cdh.sock", 3.0)


# -- [network]: retries and timeouts --------------------------------------------------------


def test_network_table() -> None:
    from unlade.config import NETWORK_DEFAULTS
    from unlade.registry import RegistryOptions

    c = UnladeConfig.from_toml("[network]\nretries = 2\nread_timeout = 5\n"
                               "low_speed_limit = 0\nbackoff = '0.5'\n")
    assert c.network == {**NETWORK_DEFAULTS, "retries": 2, "read_timeout": 5.0,
                         "low_speed_limit": 0, "backoff": 0.5}
    options = RegistryOptions(**c.registry_options())
    assert (options.retry.attempts, options.retry.backoff) == (2, 0.5)
    assert (options.read_timeout, options.low_speed_limit, options.proxy) == (5.0, 0, None)
    merged = c.merged({"retries": 7, "read_timeout": 1.5, "header_timeout": 1.5})
    assert (merged.network["retries"], merged.network["header_timeout"]) == (7, 1.5)
    assert UnladeConfig().registry_options()["retry"].attempts == 5
    proxied = UnladeConfig.from_toml('[proxy]\nhttps_proxy = "http://p:3128"\n')
    assert proxied.registry_options()["proxy"] == {"https_proxy": "http://p:3128"}
    for text, message in [("[network]\nretry = 2\n", "unknown key 'retry'"),
                          ("[network]\nretries = 0\n", "retries: must be positive"),
                          ("[network]\nretries = 1.5\n", "expected a whole number"),
                          ("[network]\nread_timeout = -1\n", "must be positive"),
                          ("[network]\nread_timeout = true\n", "expected a number"),
                          ("network = 3\n", "expected a table")]:
        with pytest.raises(ConfigError, match=message):
            UnladeConfig.from_toml(text, "u.toml")


def test_timeout_and_retries_flags(registry: Any, run_unlade: Any, tmp_path: Path) -> None:
    """--timeout and --retries reach the registry client: a registry that never answers
    fails after one try of one second, naming the timeout."""
    import time

    from harness import images as im
    from harness.faultproxy import Fault, FaultProxy

    im.build_and_push(tmp_path / "layout", registry, "net/app", "v1", [[im.file("f", b"x")]],
                      raw=True)
    with FaultProxy(registry.host, faults=[Fault("stall", kind="any", at=None,
                                                 times=None)]) as proxy:
        start = time.monotonic()
        proc = run_unlade("pull", "--plain-http", "--timeout", "1", "--retries", "1",
                          f"{proxy.host}/net/app:v1", "--rootfs", tmp_path / "r")
        elapsed = time.monotonic() - start
    assert proc.returncode == 1
    assert "timed out" in proc.stderr and "(after 1 attempt)" in proc.stderr, proc.stderr
    assert elapsed < 15, elapsed


def test_client_takes_the_network_settings(tmp_path: Path) -> None:
    """``connection`` carries [network]/[proxy] into the client; an explicit ``retry``
    wins over the one it carries."""
    from unlade import Client
    from unlade.registry import RetryPolicy

    options = UnladeConfig.from_toml("[network]\nretries = 3\nread_timeout = 7\n"
                                     ).registry_options()
    client = Client(tmp_path / "store", connection=options)
    assert client.registry.options.retry.attempts == 3
    assert client.registry.options.read_timeout == 7.0
    client = Client(tmp_path / "store", retry=RetryPolicy(attempts=9), connection=options)
    assert client.registry.options.retry.attempts == 9
