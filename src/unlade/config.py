"""``unlade.toml``: one file for what image-rs keeps in its ``ImageConfig``
(``image-rs/src/config.rs`` in confidential-containers/guest-components), so a guest image
can ship its pull settings -- store, policy, credentials, signature stores, the CDH
address -- in one place instead of in flags. Command-line flags override it.

Where it is found (the first that applies; files are not merged, so what one file says is
what holds):

1. ``--config FILE`` (must exist);
2. ``$UNLADE_CONFIG`` (must exist);
3. ``$XDG_CONFIG_HOME/unlade/unlade.toml`` (``~/.config/unlade/unlade.toml``), if present;
4. ``/etc/unlade/unlade.toml``, if present;
5. none: every key has its default.

Keys (all optional; unknown keys and wrong types are errors naming the key and the file,
so a typo never silently falls back to a default)::

    # The store: blobs, snapshots, records. image-rs: work_dir.
    # Default: $UNLADE_ROOT, else /var/lib/unlade (root) or ~/.local/share/unlade.
    root = "/var/lib/unlade"

    # Default kind of snapshots: "overlayfs", "native" or "auto" (overlayfs where the
    # kernel and filesystem allow it, else native). Default "auto".
    snapshotter = "auto"

    # Signature policy, containers-policy.json(5), as a resource URI (a path,
    # file:///abs/path or kbs:///repository/type/tag). image-rs: image_security_policy_uri.
    # Default: $UNLADE_POLICY, ~/.config/containers/policy.json,
    # /etc/containers/policy.json; none at all accepts every image.
    policy = "kbs:///default/security-policy/test"

    # Where signatures are, containers-registries.d(5): a resource URI of a registries.d
    # directory (local only) or of one YAML file. image-rs: sigstore_config_uri; the key
    # sigstore_config is accepted as another name for it.
    # Default: ~/.config/containers/registries.d, /etc/containers/registries.d.
    registries_d = "file:///etc/containers/registries.d"

    # Registry credentials, an auth.json / docker config.json, as a resource URI; only
    # this file is read. image-rs: authenticated_registry_credentials_uri.
    # Default: $REGISTRY_AUTH_FILE, containers auth.json, docker config.json.
    authfile = "kbs:///default/credential/test"

    # registries.conf(5) for mirrors and blocking (a path). image-rs:
    # registry_configuration_uri. Default: $CONTAINERS_REGISTRIES_CONF,
    # ~/.config/containers/registries.conf, /etc/containers/registries.conf.
    registries_conf = "/etc/containers/registries.conf"

    # Layers of one image downloaded at once, >= 1. image-rs:
    # max_concurrent_layer_downloads_per_image. Default 3.
    max_concurrent_downloads = 3

    # Layers of one image unpacked at once, >= 1. Default: the CPU count.
    unpack_workers = 4

    # Accept every image without consulting any policy (skopeo's --insecure-policy).
    # Default false.
    insecure_policy = false

    # The resource provider that serves kbs:/// URIs: the Confidential Data Hub's
    # GetResource gRPC API, at "host:port" or "unix:///path". Default "127.0.0.1:50000"
    # (the gRPC CDH's default).
    kbs_address = "127.0.0.1:50000"

    # Refuse images with any unencrypted layer (the guard against a registry serving a
    # plain substitute for an encrypted image): true for every image, or the policy.json
    # scopes it applies to -- "registry", "registry/namespace", "registry/repo",
    # "registry/repo:tag", "*.domain". --require-encrypted makes it true. Default false.
    require_encrypted = ["registry.example/confidential", "*.secure.example"]

    # Registries (host or host:port) spoken to over plain HTTP instead of HTTPS.
    # Default: none.
    plain_http_registries = ["127.0.0.1:5000", "registry.local"]

    # Extra CA certificates (*.crt) and client certificates (*.cert/*.key) for TLS.
    # image-rs: extra_root_certificates. Default: none.
    cert_dir = "/etc/unlade/certs.d"

    # Limits against hostile images (see unlade.limits); sizes take KiB/MiB/GiB/TiB.
    # --limit NAME=VALUE overrides one. Defaults as shown.
    [limits]
    layer_size = "64GiB"      # uncompressed bytes of one layer
    layer_entries = 5000000   # entries in one layer
    path_length = 4096        # bytes of a path or link target
    xattr_size = "64KiB"      # bytes of one xattr value
    manifest_size = "4MiB"    # bytes of a manifest or index
    config_size = "4MiB"      # bytes of an image config
    layers = 500              # layers in one image

    # Retries and timeouts of registry requests (seconds; sizes in bytes). Defaults as
    # shown. --retries and --timeout on the command line override the first and the
    # read/header timeouts.
    [network]
    retries = 5               # tries per request; broken blob streams in a row
    backoff = 0.25            # first delay between tries, doubling, with jitter
    max_backoff = 8           # cap on a delay, a server's Retry-After included
    connect_timeout = 30      # to open a connection (and each TLS step)
    read_timeout = 60         # the longest silence on an open connection
    header_timeout = 60       # request sent -> response headers complete
    low_speed_limit = 1024    # bytes/s a body must average ...
    low_speed_time = 60       # ... over this long (0 turns the check off)

    # Proxies for registry traffic (image-rs: image_pull_proxy); when this table is
    # absent, HTTPS_PROXY, HTTP_PROXY and NO_PROXY from the environment apply.
    [proxy]
    https_proxy = "http://proxy.example:3128"
    http_proxy = "http://proxy.example:3128"
    no_proxy = "localhost,127.0.0.1,.internal"

Paths (``root``, ``cert_dir``, ``registries_conf``) and plain-path resource URIs may start
with ``~``; relative ones are taken relative to the directory holding the file, so a
config and the files it names can move together. ``file://`` URIs must be absolute.

Flags win: :meth:`UnladeConfig.merged` takes the command line's values by key, with None
meaning "not given", so the CLI's options must default to None (not False) for the file's
value to show through.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .limits import Limits
from .resources import (
    DEFAULT_CDH_ADDRESS,
    CdhResourceProvider,
    _read_file,
    check_resource_uri,
    grpc_target,
)

if TYPE_CHECKING:
    from .reference import Reference

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_MAX_CONCURRENT_DOWNLOADS",
    "SNAPSHOTTER_CHOICES",
    "SYSTEM_CONFIG",
    "ProxyConfig",
    "UnladeConfig",
    "find_config",
    "load_config",
]

CONFIG_ENV = "UNLADE_CONFIG"
SYSTEM_CONFIG = Path("/etc/unlade/unlade.toml")
SNAPSHOTTER_CHOICES = ("overlayfs", "native", "auto")
#: As image-rs (``DEFAULT_MAX_CONCURRENT_DOWNLOAD``) and unlade's puller.
DEFAULT_MAX_CONCURRENT_DOWNLOADS = 3
#: A config file is a few lines; anything bigger is not one.
MAX_CONFIG_SIZE = 1024 * 1024

_PROXY_KEYS = ("https_proxy", "http_proxy", "no_proxy")
_ALIASES = {"sigstore_config": "registries_d"}


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: the proxies for registry traffic (image-rs's ``image_pull_proxy``);
    when set, they replace the environment's HTTPS_PROXY, HTTP_PROXY and NO_PROXY."""

    https_proxy: str | None = None
    http_proxy: str | None = None
    no_proxy: str | None = None


@dataclass(frozen=True)
class UnladeConfig:
    """The settings of ``unlade.toml`` (see the module docstring for every key).

    None means "not set here": the client's own default (or search) applies. ``source``
    is the file the values came from (None for defaults only), for messages.
    """

    root: Path | None = None
    snapshotter: str = "auto"
    policy: str | None = None
    registries_d: str | None = None
    authfile: str | None = None
    registries_conf: Path | None = None
    max_concurrent_downloads: int = DEFAULT_MAX_CONCURRENT_DOWNLOADS
    unpack_workers: int | None = None
    insecure_policy: bool = False
    kbs_address: str = DEFAULT_CDH_ADDRESS
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    plain_http_registries: tuple[str, ...] = ()
    cert_dir: Path | None = None
    #: Scopes whose images must be fully encrypted; ``("",)`` means every image.
    require_encrypted: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    #: ``[network]``: retry and timeout settings by name (see :data:`NETWORK_DEFAULTS`).
    network: Mapping[str, float] = field(default_factory=lambda: dict(NETWORK_DEFAULTS))
    source: Path | None = field(default=None, compare=False)

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, source: str | os.PathLike[str] = "unlade.toml",
                  base: Path | None = None) -> UnladeConfig:
        """Parse TOML text; ``source`` names it in errors, ``base`` anchors relative paths
        (default: the current directory)."""
        where = os.fspath(source)
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: invalid TOML: {e}") from e
        return cls._from_dict(raw, where, base or Path.cwd())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> UnladeConfig:
        """Load one config file; relative paths in it are relative to its directory."""
        p = Path(path)
        data = _read_file(p, f"config {os.fspath(p)}", MAX_CONFIG_SIZE, ConfigError)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{os.fspath(p)}: not UTF-8 ({e.reason} at byte "
                              f"{e.start})") from e
        config = cls.from_toml(text, p, p.absolute().parent)
        return dataclasses.replace(config, source=p)

    @classmethod
    def _from_dict(cls, raw: Mapping[str, Any], where: str, base: Path) -> UnladeConfig:
        values: dict[str, Any] = {}
        for key, value in raw.items():
            name = _ALIASES.get(key, key)
            if key == "proxy":
                values["proxy"] = _proxy(value, where)
                continue
            if key == "network":
                values["network"] = _network(value, f"{where}: [network]")
                continue
            if key == "limits":
                if not isinstance(value, dict):
                    raise ConfigError(f"{where}: limits: expected a table, got "
                                      f"{_type_name(value)}")
                values["limits"] = Limits().replace(value, f"{where}: [limits]")
                continue
            if name not in _CHECKS or name == "proxy":
                raise ConfigError(f"{where}: unknown key {key!r}")
            if name in values:
                raise ConfigError(f"{where}: {key!r} and {_other_name(name, key)!r} are the "
                                  "same setting; give one")
            values[name] = _CHECKS[name](value, f"{where}: {key}", base)
        return cls(**values)

    # -- command line --------------------------------------------------------------------

    def merged(self, overrides: Mapping[str, Any]) -> UnladeConfig:
        """This config with the command line's values on top. Keys are field names (and
        ``https_proxy``/``http_proxy``/``no_proxy`` for the proxy); None means the flag
        was not given, so the file's value stays. Values are checked as the file's are;
        relative paths stay relative to the current directory, as typed."""
        changes: dict[str, Any] = {}
        proxy: dict[str, str] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in _PROXY_KEYS:
                proxy[key] = _str(value, f"command line: {key}", Path.cwd())
                continue
            if key == "limits":  # NAME=VALUE specs, on top of the file's
                changes["limits"] = self.limits.with_specs(value)
                continue
            if key in NETWORK_DEFAULTS:  # --retries, --timeout
                changes["network"] = _network({key: value}, "command line",
                                              changes.get("network", self.network))
                continue
            name = _ALIASES.get(key, key)
            if name not in _CHECKS or name == "proxy":
                raise TypeError(f"UnladeConfig.merged: unknown setting {key!r}")
            changes[name] = _CHECKS[name](_cli_value(value), f"command line: {key}",
                                          Path.cwd())
        if proxy:
            changes["proxy"] = dataclasses.replace(self.proxy, **proxy)
        return dataclasses.replace(self, **changes)

    # -- using it ------------------------------------------------------------------------

    def plain_http_for(self, registry: str) -> bool:
        """Whether ``registry`` (host or host:port) is listed in ``plain_http_registries``
        (a listed bare host covers all its ports)."""
        host = registry.lower()
        listed = {r.lower() for r in self.plain_http_registries}
        return host in listed or _host_of(host) in listed

    def requires_encryption(self, ref: Reference) -> bool:
        """Whether ``require_encrypted`` covers ``ref``."""
        from .policy import scope_matches

        return scope_matches(self.require_encrypted, ref)

    def registry_options(self) -> dict[str, Any]:
        """``[network]`` and ``[proxy]`` as keyword arguments of
        :class:`~unlade.registry.RegistryOptions` (``retry`` included)."""
        from .registry import RetryPolicy

        net = self.network
        options: dict[str, Any] = {
            "retry": RetryPolicy(attempts=int(net["retries"]), backoff=net["backoff"],
                                 max_backoff=net["max_backoff"]),
            **{k: net[k] for k in ("connect_timeout", "read_timeout", "header_timeout",
                                   "low_speed_time")},
            "low_speed_limit": int(net["low_speed_limit"]),
        }
        proxy = {k: v for k, v in dataclasses.asdict(self.proxy).items() if v}
        if proxy:
            options["proxy"] = proxy
        return options

    def resource_provider(self, timeout: float = 10) -> CdhResourceProvider:
        """The provider for ``kbs:///`` resources at ``kbs_address`` (no connection is
        made, and grpcio is not needed, until a resource is fetched)."""
        return CdhResourceProvider(self.kbs_address, timeout)


# -- finding -------------------------------------------------------------------------------


def find_config(explicit: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None,
                system: Path = SYSTEM_CONFIG) -> Path | None:
    """The config file to use (see the module docstring for the order), or None.

    An explicit ``--config`` or ``$UNLADE_CONFIG`` is returned even when missing, so that
    loading it fails loudly instead of quietly using defaults.
    """
    env = os.environ if env is None else env
    if explicit is not None and os.fspath(explicit) != "":
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and os.path.isabs(xdg):
        user_dir = Path(xdg)
    else:
        home = env.get("HOME") or os.path.expanduser("~")
        user_dir = Path(home) / ".config"
    for candidate in (user_dir / "unlade" / "unlade.toml", system):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | os.PathLike[str] | None = None, *,
                env: Mapping[str, str] | None = None,
                system: Path = SYSTEM_CONFIG) -> UnladeConfig:
    """The config from the file :func:`find_config` picks, or all defaults."""
    path = find_config(explicit, env=env, system=system)
    if path is None:
        return UnladeConfig()
    return UnladeConfig.from_file(path)


# -- checks (each takes the value, "FILE: key" for errors, and the base for paths) --------


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(value), type(value).__name__)


def _cli_value(value: Any) -> Any:
    """Flags may hold paths as ``os.PathLike`` and lists as any sequence."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    return value


def _str(value: Any, where: str, base: Path) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {_type_name(value)}")
    if not value.strip():
        raise ConfigError(f"{where}: must not be empty")
    return value


def _path(value: Any, where: str, base: Path) -> Path:
    text = _str(value, where, base)
    try:
        p = Path(text).expanduser()
    except (RuntimeError, ValueError):  # ~nosuchuser, or a NUL in the user name
        raise ConfigError(f"{where}: cannot expand {text!r}: no such user") from None
    return p if p.is_absolute() else base / p


def _uri(value: Any, where: str, base: Path) -> str:
    uri = _str(value, where, base)
    try:
        check_resource_uri(uri)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    if "://" in uri or uri.lower().startswith(("kbs:", "file:")):
        return uri
    return str(_path(uri, where, base))


def _snapshotter(value: Any, where: str, base: Path) -> str:
    kind = _str(value, where, base)
    if kind not in SNAPSHOTTER_CHOICES:
        raise ConfigError(f"{where}: unknown snapshotter {kind!r}; choose "
                          f"{', '.join(SNAPSHOTTER_CHOICES)}")
    return kind


def _positive(value: Any, where: str, base: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {_type_name(value)}")
    if value < 1:
        raise ConfigError(f"{where}: must be at least 1, not {value}")
    return value


def _bool(value: Any, where: str, base: Path) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {_type_name(value)}")
    return value


def _address(value: Any, where: str, base: Path) -> str:
    address = _str(value, where, base)
    try:
        grpc_target(address)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    return address


def _hosts(value: Any, where: str, base: Path) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected an array of registry hosts, got "
                          f"{_type_name(value)}")
    hosts = []
    for i, item in enumerate(value):
        host = _str(item, f"{where}[{i}]", base)
        if "/" in host or any(c.isspace() for c in host):
            raise ConfigError(f"{where}[{i}]: {host!r} is not a registry host "
                              "(host or host:port, no scheme or path)")
        hosts.append(host)
    return tuple(hosts)


def _encryption_scopes(value: Any, where: str, base: Path) -> tuple[str, ...]:
    if isinstance(value, bool):
        return ("",) if value else ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected true, false or an array of scopes, got "
                          f"{_type_name(value)}")
    from .policy import valid_scope

    scopes = []
    for i, item in enumerate(value):
        scope = _str(item, f"{where}[{i}]", base)
        if not valid_scope(scope):
            raise ConfigError(f"{where}[{i}]: {scope!r} is not a scope (registry, "
                              "registry/repository[:tag] or *.domain)")
        scopes.append(scope)
    return tuple(scopes)


#: ``[network]`` keys and their defaults (those of RegistryOptions and RetryPolicy).
NETWORK_DEFAULTS: dict[str, float] = {
    "retries": 5, "backoff": 0.25, "max_backoff": 8.0, "connect_timeout": 30.0,
    "read_timeout": 60.0, "header_timeout": 60.0, "low_speed_limit": 1024,
    "low_speed_time": 60.0,
}
_WHOLE = ("retries", "low_speed_limit")
_MAY_BE_ZERO = ("backoff", "max_backoff", "low_speed_limit")


def _network(value: Any, where: str, base: Mapping[str, float] = NETWORK_DEFAULTS
             ) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a table, got {_type_name(value)}")
    out = dict(base)
    for key, raw in value.items():
        if key not in NETWORK_DEFAULTS:
            raise ConfigError(f"{where}: unknown key {key!r}; known: "
                              f"{', '.join(NETWORK_DEFAULTS)}")
        if isinstance(raw, str):
            try:
                raw = float(raw) if key not in _WHOLE else int(raw)
            except ValueError:
                raise ConfigError(f"{where}: {key}: expected a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float) or \
                (key in _WHOLE and not float(raw).is_integer()):
            raise ConfigError(f"{where}: {key}: expected "
                              f"{'a whole number' if key in _WHOLE else 'a number'}")
        if raw < 0 or (raw == 0 and key not in _MAY_BE_ZERO):
            least = "at least 0" if key in _MAY_BE_ZERO else "positive"
            raise ConfigError(f"{where}: {key}: must be {least}, not {raw}")
        out[key] = int(raw) if key in _WHOLE else float(raw)
    return out


def _proxy(value: Any, where: str) -> ProxyConfig:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: proxy: expected a table, got {_type_name(value)}")
    for key in value:
        if key not in _PROXY_KEYS:
            raise ConfigError(f"{where}: unknown key 'proxy.{key}'")
    return ProxyConfig(**{key: _str(v, f"{where}: proxy.{key}", Path.cwd())
                          for key, v in value.items()})


def _other_name(name: str, key: str) -> str:
    names = [name, *(alias for alias, target in _ALIASES.items() if target == name)]
    return next(n for n in names if n != key)


def _host_of(registry: str) -> str:
    if registry.startswith("["):  # [v6]:port
        return registry.partition("]")[0] + "]"
    return registry.rpartition(":")[0] if registry.count(":") == 1 else registry


_CHECKS: dict[str, Callable[[Any, str, Path], Any]] = {
    "root": _path,
    "snapshotter": _snapshotter,
    "policy": _uri,
    "registries_d": _uri,
    "authfile": _uri,
    "registries_conf": _path,
    "max_concurrent_downloads": _positive,
    "unpack_workers": _positive,
    "insecure_policy": _bool,
    "kbs_address": _address,
    "proxy": lambda value, where, base: _proxy(value, where),
    "plain_http_registries": _hosts,
    "cert_dir": _path,
    "require_encrypted": _encryption_scopes,
}
