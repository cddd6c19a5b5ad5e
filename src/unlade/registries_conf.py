"""containers-registries.conf(5): mirrors, pull-through caches, blocked and insecure
registries, read the way containers/image (``pkg/sysregistriesv2``) reads them, so that a
machine configured for podman, skopeo or CRI-O pulls through the same mirrors with unlade.

Which files (``RegistriesConf.load``), the first that applies:

1. an explicit path (``--registries-conf``; must exist);
2. ``$CONTAINERS_REGISTRIES_CONF``, else ``$REGISTRIES_CONFIG_PATH`` (must exist; set but
   empty counts as unset, and an empty ``$CONTAINERS_REGISTRIES_CONF`` hides the other);
3. ``~/.config/containers/registries.conf``, if it exists;
4. ``/etc/containers/registries.conf``, if it exists; otherwise an empty configuration.

Then drop-ins, ``*.conf`` files (not sub-directories, any other name ignored) in
alphabetical (byte) order, directory by directory: ``/etc/containers/registries.conf.d``
and then ``~/.config/containers/registries.conf.d`` -- except that when the main file is
the user's own (3.), only the user's directory is read. An explicit or ``$…`` path does
not stop the drop-ins (containers/image reads both directories then too). Drop-ins must be
in the v2 format. Each one, in turn, overrides what came before: a ``[[registry]]`` replaces
the one with the same ``prefix`` (the others stay), ``[aliases]`` entries replace same-name
entries (``""`` erases one), and any other key it sets (``unqualified-search-registries``,
``credential-helpers`` -- even as ``[]`` --, a non-empty ``short-name-mode`` or
``additional-layer-store-auth-helper``) replaces the previous value as a whole.

Matching (``RegistriesConf.find``): the ``[[registry]]`` with the longest ``prefix`` that
matches the name, where a prefix matches when the name is the prefix or continues it with
``/``, ``:`` or ``@`` (so ``example.com`` also matches ``example.com:5000/x``, an accident of
containers/image kept for compatibility), and ``*.example.com`` matches any subdomain of
example.com in the host part (``a.example.com``, ``a.b.example.com:5000/x``; not
``example.com``). For a pull (``RegistriesConf.pull_sources``) the lookup uses the name
without tag or digest, as containers/image does, so prefixes ending in ``:tag`` or
``@digest`` never select a ``[[registry]]`` for pulls.

Pull sources (``Registry.endpoints``): the mirrors in file order -- only for pulls by
digest if ``mirror-by-digest-only``, else filtered by each mirror's ``pull-from-mirror``
(``digest-only``: digest pulls only; ``tag-only``: tag pulls only; ``all``/unset: both; a
reference with both tag and digest is a digest pull) -- then the primary ``location``. The
reference is rewritten by replacing the matched prefix with the endpoint's location
(``prefix = "example.com/foo"``, ``location = "internal.example/bar"``:
``example.com/foo/img:1`` -> ``internal.example/bar/img:1``); a wildcard ``[[registry]]``
without ``location`` uses the reference as is. Each endpoint says whether it is insecure
(TLS not verified, plain HTTP allowed).

``blocked`` applies, as in containers/image, to the *physical* reference of each endpoint:
``pull_sources`` drops an endpoint whose rewritten name falls under a blocked
``[[registry]]``. So ``blocked = true`` on docker.io with a mirror means "only through the
mirror" (OpenShift's "never contact source"); when every endpoint is blocked the pull is
refused with ``RegistryBlocked``.

Validation is containers/image's: ``http://``/``https://`` in a prefix or location, a
``[[registry]]`` with neither prefix nor location, an empty location without a ``*.``
prefix, a wildcard prefix with ``/``, ``:`` or ``@``, a mirror without location,
``pull-from-mirror`` on a ``[[registry]]`` or together with ``mirror-by-digest-only`` or
with another value than ``all``/``digest-only``/``tag-only``, one location given with
different ``insecure`` or ``blocked`` settings, an ``unqualified-search-registries`` entry
that is not ``host[:port]``, an unknown ``short-name-mode``, a malformed alias, mixing the
v1 (``[registries.search]``, ``[registries.insecure]``, ``[registries.block]``) and v2
formats, v1 in a drop-in, invalid TOML and wrong value types. A later ``[[registry]]`` with
a prefix already used in the same file is ignored, as there. Keys are matched
case-insensitively (containers/image's TOML decoder does so). One deliberate difference:
containers/image ignores unknown keys (logging them at debug level), but a typo such as
``blocekd = true`` would then silently unblock a registry, so unknown keys are an error
here, like everywhere else in unlade. Every error is a ``ConfigError`` whose message is one
line starting with the file it is about.
"""

from __future__ import annotations

import datetime
import os
import pwd
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import ConfigError, InvalidReference, RegistryBlocked, UnladeError
from .reference import Reference, parse_reference

__all__ = [
    "AUTH_FILE_HELPER",
    "MIRROR_ALL",
    "MIRROR_BY_DIGEST_ONLY",
    "MIRROR_BY_TAG_ONLY",
    "SHORT_NAME_MODES",
    "Alias",
    "Endpoint",
    "Mirror",
    "RegistriesConf",
    "Registry",
    "RegistryBlocked",
]

#: ``pull-from-mirror`` values.
MIRROR_ALL = "all"
MIRROR_BY_DIGEST_ONLY = "digest-only"
MIRROR_BY_TAG_ONLY = "tag-only"
_PULL_FROM_MIRROR = ("", MIRROR_ALL, MIRROR_BY_DIGEST_ONLY, MIRROR_BY_TAG_ONLY)

#: ``short-name-mode`` values; unset means ``permissive``.
SHORT_NAME_MODES = ("disabled", "enforcing", "permissive")
_DEFAULT_SHORT_NAME_MODE = "permissive"

#: The ``credential-helpers`` entry meaning "the auth.json files"; also the default.
AUTH_FILE_HELPER = "containers-auth.json"

_SYSTEM_CONF = "etc/containers/registries.conf"  # under ``root``
_SYSTEM_CONF_D = "etc/containers/registries.conf.d"
_USER_CONF = ".config/containers/registries.conf"  # under the home directory
_USER_CONF_D = ".config/containers/registries.conf.d"
_ENV_VARS = ("CONTAINERS_REGISTRIES_CONF", "REGISTRIES_CONFIG_PATH")

# Real files are a few KiB; generated ones with thousands of mirrors stay well below this.
_MAX_FILE_SIZE = 16 << 20




# ----------------------------------------------------------------------------------------------
# The configuration


@dataclass(frozen=True)
class Mirror:
    """A ``[[registry.mirror]]``: another place holding (part of) the same images."""

    location: str
    insecure: bool = False
    #: "" (unset, same as "all"), "all", "digest-only" or "tag-only".
    pull_from_mirror: str = ""


@dataclass(frozen=True)
class Endpoint:
    """One place to try for a pull, in the order ``endpoints``/``pull_sources`` give them."""

    #: The physical reference to pull: the logical one with its prefix rewritten.
    reference: Reference
    #: The configured location this comes from ("" for a wildcard ``[[registry]]`` without
    #: one; for a name no ``[[registry]]`` matches, the name itself).
    location: str
    #: Skip TLS verification and allow plain HTTP for this endpoint.
    insecure: bool
    #: A mirror (False: the primary location, always last).
    mirror: bool


@dataclass(frozen=True)
class Registry:
    """A ``[[registry]]`` table, normalised: trailing ``/`` removed, ``prefix`` defaulted
    to ``location``; ``source`` is the file it comes from, for messages."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = field(default="", compare=False)

    def endpoints(self, reference: str | Reference) -> list[Endpoint]:
        """The pull sources for ``reference`` (which this registry's prefix must match):
        the mirrors that apply to a pull by tag or by digest, then the primary location.

        A string is parsed (and normalised) with :func:`unlade.reference.parse_reference`.
        Raises ``ConfigError`` if a location turns the reference into an invalid one
        (containers/image fails the pull then too), ``InvalidReference`` if the prefix does
        not match it.
        """
        ref = _as_reference(reference)
        digested = ref.digest is not None
        chosen: list[tuple[str, bool, bool]] = []
        for m in self.mirrors:
            if self.mirror_by_digest_only or m.pull_from_mirror == MIRROR_BY_DIGEST_ONLY:
                use = digested
            elif m.pull_from_mirror == MIRROR_BY_TAG_ONLY:
                use = not digested
            else:
                use = True
            if use:
                chosen.append((m.location, m.insecure, True))
        chosen.append((self.location, self.insecure, False))
        text = str(ref)
        return [
            Endpoint(self._rewrite(text, location), location, insecure, mirror)
            for location, insecure, mirror in chosen
        ]

    def _rewrite(self, text: str, location: str) -> Reference:
        """Replace the part of ``text`` matched by the prefix with ``location``."""
        n = _match_prefix(text, self.prefix)
        if n is None:
            raise InvalidReference(f"reference {text!r} does not match prefix "
                                   f"{self.prefix!r} of {self.source}")
        if not location:
            if not self.prefix.startswith("*."):  # only possible when built by hand
                raise ConfigError(f"{self.source}: [[registry]] {self.prefix!r}: an empty "
                                  f"location needs a prefix like *.example.com")
            return parse_reference(text)
        new = location + text[n:]
        problem = _canonical_problem(new)
        if problem is not None:
            raise ConfigError(f"{self.source}: [[registry]] {self.prefix!r}: location "
                              f"{location!r} makes {text!r} into {new!r}, which is not a "
                              f"valid reference: {problem}")
        return parse_reference(new)


@dataclass(frozen=True)
class Alias:
    """An ``[aliases]`` entry: ``value`` is the normalised repository name, or None when a
    file erased the alias with ``""``; ``source`` is the file that set it."""

    value: str | None
    source: str


@dataclass(frozen=True)
class RegistriesConf:
    """The merged configuration: what all files read together say.

    ``registries`` are sorted by prefix, one per prefix. ``sources`` are the files read,
    main file first; ``source`` is the main file (None if there was none). The short-name
    settings (``unqualified_search_registries``, ``short_name_mode``, ``aliases``) and
    ``credential_helpers`` are parsed and validated but are for callers that resolve short
    names or credentials the containers way.
    """

    registries: tuple[Registry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = ()
    #: The file that set ``unqualified_search_registries`` (the main file by default).
    unqualified_search_registries_origin: str | None = None
    credential_helpers: tuple[str, ...] = (AUTH_FILE_HELPER,)
    short_name_mode: str = _DEFAULT_SHORT_NAME_MODE
    additional_layer_store_auth_helper: str = ""
    aliases: Mapping[str, Alias] = field(default_factory=lambda: MappingProxyType({}))
    source: str | None = None
    sources: tuple[str, ...] = ()

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_toml(cls, text: str, source: str | os.PathLike[str] = "registries.conf",
                  ) -> RegistriesConf:
        """Parse one file's text as a main registries.conf (v1 or v2), without drop-ins;
        ``source`` names it in errors."""
        where = os.fspath(source)
        layer = _parse_layer(text, where, dropin=False)
        return _finish(layer, where, (where,))

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None, *,
             env: Mapping[str, str] = os.environ,
             home: str | os.PathLike[str] | None = None,
             root: str | os.PathLike[str] = "/") -> RegistriesConf:
        """Find, read and merge registries.conf and its drop-ins (see the module docstring
        for the order). ``env`` and ``home`` (default: ``$HOME`` from ``env``, else the
        password database) say where to look; ``root`` prefixes the system paths
        (containers/image's RootForImplicitAbsolutePaths), so tests need not touch /etc.
        """
        explicit: str | None = None
        if path is not None:
            explicit = os.fspath(path)
            if not explicit:
                raise ConfigError("registries.conf: the path given is empty")
        else:
            for var in _ENV_VARS:
                if var in env:
                    explicit = env[var] or None
                    break
        home_dir = _home_dir(env) if home is None else os.fspath(home)
        user_conf = os.path.join(home_dir, _USER_CONF) if home_dir else None
        user_dir = os.path.join(home_dir, _USER_CONF_D) if home_dir else None
        system_conf = os.path.join(os.fspath(root), _SYSTEM_CONF)
        system_dir = os.path.join(os.fspath(root), _SYSTEM_CONF_D)

        dirs: list[str]
        if explicit is not None:
            main, dirs = explicit, [system_dir]
        elif user_conf is not None and os.path.exists(user_conf):
            main, dirs = user_conf, []  # the user's file replaces /etc and its drop-ins
        else:
            main, dirs = system_conf, [system_dir]
        if user_dir is not None:
            dirs.append(user_dir)

        sources: list[str] = []
        try:
            text = _read_text(main)
        except FileNotFoundError as e:
            if explicit is not None:
                raise ConfigError(f"{main}: cannot read: {e.strerror or e}") from e
            layer = _Layer()
            source = None
        else:
            layer = _parse_layer(text, main, dropin=False)
            source = main
            sources.append(main)
        for dropin in _dropin_files(dirs):
            try:
                text = _read_text(dropin)
            except FileNotFoundError:
                continue  # removed since the directory was listed
            layer.update(_parse_layer(text, dropin, dropin=True))
            sources.append(dropin)
        return _finish(layer, source, tuple(sources))

    # -- queries -------------------------------------------------------------------------

    def find(self, name: str) -> Registry | None:
        """The ``[[registry]]`` whose prefix matches ``name`` (a host[:port], a repository
        namespace, a repository or a full reference, always starting with the host) and is
        the longest such prefix; None if none matches. ``name`` is taken as it is."""
        best: Registry | None = None
        best_len = 0  # an empty prefix (possible: prefix = "/") never wins, as upstream
        for reg in self.registries:
            if len(reg.prefix) > best_len and _match_prefix(name, reg.prefix) is not None:
                best, best_len = reg, len(reg.prefix)
        return best

    def registry_for(self, host: str) -> Registry | None:
        """The ``[[registry]]`` for a bare host[:port]: what host-level checks (is this
        registry insecure? blocked?) consult when there is no repository in play."""
        return self.find(host)

    def pull_sources(self, reference: str | Reference) -> list[Endpoint]:
        """Where to pull ``reference`` from, in order, as containers/image does it: the
        ``[[registry]]`` for its name (without tag/digest) gives mirrors then the primary
        location -- or, with no match, the reference itself -- and endpoints whose physical
        name is under a blocked ``[[registry]]`` are left out. Raises ``RegistryBlocked``
        if that leaves nothing, ``ConfigError`` if a location rewrites it into an invalid
        reference."""
        ref = _as_reference(reference)
        name = f"{ref.registry}/{ref.repository}"
        reg = self.find(name)
        # No [[registry]]: the reference itself is the only source, as in containers/image.
        candidates = [Endpoint(ref, name, False, False)] if reg is None else reg.endpoints(ref)
        allowed: list[Endpoint] = []
        blocked: tuple[Endpoint, Registry] | None = None
        for ep in candidates:
            phys = ep.reference
            hit = self.find(f"{phys.registry}/{phys.repository}")
            if hit is not None and hit.blocked:
                blocked = (ep, hit)  # the last one is the primary: the one to report
            else:
                allowed.append(ep)
        if not allowed:
            assert blocked is not None
            ep, hit = blocked
            where = "" if ep.reference == ref else f" (pulled from {ep.reference})"
            raise RegistryBlocked(f"{ref}{where}: registry {hit.prefix} is blocked in "
                                  f"{hit.source}")
        return allowed


# ----------------------------------------------------------------------------------------------
# Finding and reading files


def _home_dir(env: Mapping[str, str]) -> str | None:
    """$HOME, else the password database (containers/storage's homedir.Get)."""
    home = env.get("HOME")
    if home:
        return home
    try:
        return pwd.getpwuid(os.getuid()).pw_dir or None
    except KeyError:
        return None


def _dropin_files(dirs: list[str]) -> list[str]:
    """The ``*.conf`` entries of each directory (not sub-directories), sorted by name,
    directory after directory. A missing directory is skipped; an unreadable one is an
    error. Like containers/image's WalkDir, a directory that is itself a symlink is not
    followed, but symlinks inside are."""
    files: list[str] = []
    for d in dirs:
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"{d}: cannot read registries.conf.d: {e.strerror or e}") from e
        if not stat.S_ISDIR(st.st_mode):
            continue
        try:
            with os.scandir(d) as it:
                entries = [(os.fsencode(e.name), e.path) for e in it
                           if e.name.endswith(".conf") and not e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        except OSError as e:
            raise ConfigError(f"{d}: cannot read registries.conf.d: {e.strerror or e}") from e
        files.extend(p for _, p in sorted(entries))
    return files


def _read_text(path: str) -> str:
    """The file's text; FileNotFoundError is left to the caller (absence may be fine)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: cannot read: Is a directory")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(_MAX_FILE_SIZE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from e
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_SIZE:
        raise ConfigError(f"{path}: larger than {_MAX_FILE_SIZE >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e


# ----------------------------------------------------------------------------------------------
# Parsing one file


@dataclass
class _Layer:
    """One file's settings (or several merged); None means "this file does not set it"."""

    registries: dict[str, Registry] = field(default_factory=dict)
    search: list[str] | None = None
    search_origin: str | None = None
    helpers: list[str] | None = None
    short_name_mode: str | None = None
    als_helper: str = ""
    aliases: dict[str, Alias] = field(default_factory=dict)

    def update(self, other: _Layer) -> None:
        """Apply a drop-in on top (containers/image's updateWithConfigurationFrom)."""
        self.registries.update(other.registries)
        if other.search is not None:
            self.search, self.search_origin = other.search, other.search_origin
        if other.helpers is not None:
            self.helpers = other.helpers
        if other.short_name_mode is not None:
            self.short_name_mode = other.short_name_mode
        if other.als_helper:
            self.als_helper = other.als_helper
        self.aliases.update(other.aliases)


def _finish(layer: _Layer, source: str | None, sources: tuple[str, ...]) -> RegistriesConf:
    """Apply the defaults that hold after all files are merged."""
    return RegistriesConf(
        registries=tuple(layer.registries[p] for p in sorted(layer.registries)),
        unqualified_search_registries=tuple(layer.search or ()),
        unqualified_search_registries_origin=layer.search_origin or source,
        credential_helpers=tuple(layer.helpers or (AUTH_FILE_HELPER,)),
        short_name_mode=layer.short_name_mode or _DEFAULT_SHORT_NAME_MODE,
        additional_layer_store_auth_helper=layer.als_helper,
        aliases=MappingProxyType(dict(layer.aliases)),
        source=source,
        sources=sources,
    )


_TOP_KEYS = ("registry", "unqualified-search-registries", "credential-helpers",
             "short-name-mode", "additional-layer-store-auth-helper", "aliases", "registries")
_REGISTRY_KEYS = ("prefix", "location", "insecure", "blocked", "mirror-by-digest-only",
                  "pull-from-mirror", "mirror")
_MIRROR_KEYS = ("location", "insecure", "pull-from-mirror")
_V1_KEYS = ("search", "insecure", "block")


class _Problem(Exception):
    """A problem found in a file; turned into a ConfigError naming the file."""


def _parse_layer(text: str, source: str, *, dropin: bool) -> _Layer:
    try:
        return _parse(text, source, dropin)
    except _Problem as e:
        raise ConfigError(f"{source}: {e}") from None


def _parse(text: str, source: str, dropin: bool) -> _Layer:
    try:
        raw = tomllib.loads(text.removeprefix("\ufeff"))
    except tomllib.TOMLDecodeError as e:
        raise _Problem(f"invalid TOML: {e}") from None
    top = _keys(raw, _TOP_KEYS, "")

    # Decode everything (types and unknown keys) first, as the TOML decoder does.
    raw_regs = [_registry_fields(r, f"registry[{i}]")
                for i, r in enumerate(_tables(top, "registry", ""))]
    search = _strings(top, "unqualified-search-registries", "")
    helpers = _strings(top, "credential-helpers", "")
    mode = _string(top, "short-name-mode", "") or ""
    als = _string(top, "additional-layer-store-auth-helper", "") or ""
    raw_aliases = _aliases_table(top)
    v1 = _v1_fields(top.get("registries"))

    v2_set = ("registry" in top or search is not None or helpers is not None
              or bool(mode) or bool(als) or raw_aliases is not None)
    if any(v is not None for v in v1.values()):
        if dropin:
            raise _Problem("a drop-in must be in the v2 format, but this one uses v1 "
                           "([registries.search], [registries.insecure], [registries.block])")
        if v2_set:
            raise _Problem("mixing the v1 format ([registries.*]) and the v2 format is not "
                           "supported")
        raw_regs, search = _convert_v1(v1)

    registries = _post_process(raw_regs)
    if search is not None:
        search = [_search_entry(s, i) for i, s in enumerate(search)]
    if mode and mode not in SHORT_NAME_MODES:
        raise _Problem(f"invalid short-name-mode {mode!r}: expected one of "
                       f"{', '.join(SHORT_NAME_MODES)}")
    for reg in registries.values():
        if reg.prefix.startswith("*.") and any(c in reg.prefix for c in "/@:"):
            raise _Problem(f"wildcard prefix {reg.prefix!r} must be in the format "
                           f"*.example.com (no namespace, port, tag or digest)")
    aliases = _aliases(raw_aliases or {}, source)

    layer = _Layer(
        registries={p: Registry(**vars(r), source=source) for p, r in registries.items()},
        search=search, search_origin=source, helpers=helpers,
        short_name_mode=mode or None, als_helper=als, aliases=aliases)
    return layer


# -- decoding ------------------------------------------------------------------------------


_TYPE_NAMES = {str: "string", bool: "boolean", int: "integer", float: "float",
               list: "array", dict: "table", datetime.datetime: "datetime",
               datetime.date: "date", datetime.time: "time"}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """``table`` with its keys mapped onto ``allowed`` the way containers/image's TOML
    decoder maps them onto struct fields (exact, else case-insensitive); unknown keys and
    two spellings of one key are errors."""
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    folded = {k.casefold(): k for k in allowed}
    for key, value in table.items():
        name = key if key in allowed else folded.get(key.casefold())
        if name is None:
            raise _Problem(f"unknown key {where + key!r}")
        if name in out:
            raise _Problem(f"{where + spelled[name]!r} and {where + key!r} are the same key")
        out[name], spelled[name] = value, key
    return out


def _string(table: dict[str, Any], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and not isinstance(value, str):
        raise _Problem(f"{where}{key}: expected a string, got {_type_name(value)}")
    return value


def _bool(table: dict[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _Problem(f"{where}{key}: expected true or false, got {_type_name(value)}")
    return value


def _strings(table: dict[str, Any], key: str, where: str) -> list[str] | None:
    """An array of strings, or None when absent ([] is not None: it overrides)."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Problem(f"{where}{key}: expected an array of strings, got {_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Problem(f"{where}{key}[{i}]: expected a string, got {_type_name(item)}")
    return list(value)


def _tables(table: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise _Problem(f"{where}{key}: expected an array of tables ([[{where}{key}]]), got "
                       f"{_type_name(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _Problem(f"{where}{key}[{i}]: expected a table, got {_type_name(item)}")
    return value


@dataclass
class _RawRegistry:
    """A ``[[registry]]`` as written, before normalisation."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()
    pull_from_mirror: str = ""


def _registry_fields(table: dict[str, Any], where: str) -> _RawRegistry:
    t = _keys(table, _REGISTRY_KEYS, where + ".")
    mirrors = []
    for j, m in enumerate(_tables(t, "mirror", where + ".")):
        mw = f"{where}.mirror[{j}]."
        mt = _keys(m, _MIRROR_KEYS, mw)
        mirrors.append(Mirror(location=_string(mt, "location", mw) or "",
                              insecure=_bool(mt, "insecure", mw),
                              pull_from_mirror=_string(mt, "pull-from-mirror", mw) or ""))
    w = where + "."
    return _RawRegistry(
        prefix=_string(t, "prefix", w) or "",
        location=_string(t, "location", w) or "",
        insecure=_bool(t, "insecure", w),
        blocked=_bool(t, "blocked", w),
        mirror_by_digest_only=_bool(t, "mirror-by-digest-only", w),
        mirrors=tuple(mirrors),
        pull_from_mirror=_string(t, "pull-from-mirror", w) or "",
    )


def _aliases_table(top: dict[str, Any]) -> dict[str, str] | None:
    value = top.get("aliases")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Problem(f"aliases: expected a table, got {_type_name(value)}")
    for name, target in value.items():
        if not isinstance(target, str):
            raise _Problem(f"aliases.{name}: expected a string, got {_type_name(target)}")
    return value


def _v1_fields(value: object) -> dict[str, list[str] | None]:
    """``[registries.search]`` etc.: each list, or None when its ``registries`` key is
    absent (only a present key makes a file v1, as in containers/image)."""
    out: dict[str, list[str] | None] = dict.fromkeys(_V1_KEYS)
    if value is None:
        return out
    if not isinstance(value, dict):
        raise _Problem(f"registries: expected a table, got {_type_name(value)}")
    for kind, sub in _keys(value, _V1_KEYS, "registries.").items():
        if not isinstance(sub, dict):
            raise _Problem(f"registries.{kind}: expected a table, got {_type_name(sub)}")
        where = f"registries.{kind}."
        out[kind] = _strings(_keys(sub, ("registries",), where), "registries", where)
    return out


# -- meaning -------------------------------------------------------------------------------


def _location(value: str, where: str) -> str:
    """Strip trailing slashes and refuse URL schemes (containers/image's parseLocation)."""
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise _Problem(f"{where}: invalid location {value!r}: URI schemes are not supported")
    return trimmed


def _convert_v1(v1: dict[str, list[str] | None]) -> tuple[list[_RawRegistry], list[str] | None]:
    """The v2 equivalent of a v1 file: one ``[[registry]]`` per blocked or insecure entry
    (in order of first mention, blocked list first), search list as is."""
    regs: dict[str, _RawRegistry] = {}
    for kind, attr in (("block", "blocked"), ("insecure", "insecure")):
        for i, entry in enumerate(v1[kind] or ()):
            loc = _location(entry, f"registries.{kind}.registries[{i}]")
            reg = regs.setdefault(loc, _RawRegistry(prefix=loc, location=loc))
            setattr(reg, attr, True)
    return list(regs.values()), v1["search"]


@dataclass
class _Normalised:
    prefix: str
    location: str
    insecure: bool
    blocked: bool
    mirror_by_digest_only: bool
    mirrors: tuple[Mirror, ...]


def _post_process(raw: list[_RawRegistry]) -> dict[str, _Normalised]:
    """Normalise and check the ``[[registry]]`` tables of one file; the result is keyed by
    prefix, the first table of a prefix winning (containers/image's postProcessRegistries).
    """
    regs: list[_Normalised] = []
    for i, r in enumerate(raw):
        where = f"registry[{i}]"
        location = _location(r.location, f"{where}.location")
        if not r.prefix:
            if not location:
                raise _Problem(f"{where}: neither prefix nor location is set")
            prefix = location
        else:
            prefix = _location(r.prefix, f"{where}.prefix")
            if not location and not prefix.startswith("*."):
                raise _Problem(f"{where}: location is unset and prefix {prefix!r} is not in "
                               f"the format *.example.com")
        if r.pull_from_mirror:
            raise _Problem(f"{where}: pull-from-mirror must not be set for a non-mirror "
                           f"registry {prefix!r}")
        mirrors = []
        for j, m in enumerate(r.mirrors):
            mw = f"{where}.mirror[{j}]"
            mloc = _location(m.location, f"{mw}.location")
            if not mloc:
                raise _Problem(f"{mw}: mirror location is unset")
            if r.mirror_by_digest_only and m.pull_from_mirror:
                raise _Problem(f"{mw}: cannot set mirror-by-digest-only for the registry "
                               f"({prefix!r}) and pull-from-mirror for the mirror ({mloc!r}) "
                               f"at the same time")
            if m.pull_from_mirror not in _PULL_FROM_MIRROR:
                raise _Problem(f"{mw}: unsupported pull-from-mirror value "
                               f"{m.pull_from_mirror!r} for mirror {mloc!r}; expected all, "
                               f"digest-only or tag-only")
            mirrors.append(Mirror(mloc, m.insecure, m.pull_from_mirror))
        regs.append(_Normalised(prefix, location, r.insecure, r.blocked,
                                r.mirror_by_digest_only, tuple(mirrors)))

    # One location (or, without one, one wildcard prefix) may appear several times, e.g.
    # with different prefixes, but must be equally insecure and blocked everywhere.
    seen: dict[str, _Normalised] = {}
    for reg in regs:
        key = reg.location or reg.prefix
        first = seen.setdefault(key, reg)
        for setting in ("insecure", "blocked"):
            if getattr(first, setting) != getattr(reg, setting):
                raise _Problem(f"registry {key!r} is defined multiple times with conflicting "
                               f"{setting!r} setting")

    # The first table of a prefix wins; later ones are ignored (not an error: files that
    # containers/image accepts are accepted).
    unique: dict[str, _Normalised] = {}
    for reg in regs:
        unique.setdefault(reg.prefix, reg)
    return unique


def _search_entry(value: str, i: int) -> str:
    where = f"unqualified-search-registries[{i}]"
    host = _location(value, where)
    if not _is_domain(host):
        raise _Problem(f"{where}: invalid entry {host!r}: expected host[:port]")
    return host


# -- reference grammar (github.com/containers/image/docker/reference) ---------------------
#
# Written out by hand rather than as one regular expression: the upstream patterns
# backtrack exponentially in Python's engine on hostile input.


def _is_domain_component(s: str) -> bool:
    return (s != "" and s.isascii() and all(c.isalnum() or c == "-" for c in s)
            and s[0] != "-" and s[-1] != "-")


def _is_domain(s: str) -> bool:
    """host[:port] as the reference grammar has it (no IPv6 there)."""
    host, colon, port = s.partition(":")
    if colon and not (port.isascii() and port.isdigit()):
        return False
    return all(_is_domain_component(c) for c in host.split("."))


def _is_name_component(s: str) -> bool:
    """``[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*``."""
    if not s or not s.isascii():
        return False
    i, n = 0, len(s)
    while True:
        start = i
        while i < n and (s[i].isdigit() or "a" <= s[i] <= "z"):
            i += 1
        if i == start:
            return False
        if i == n:
            return True
        sep = i
        while i < n and s[i] in "._-":
            i += 1
        seps = s[sep:i]
        if seps not in (".", "_", "__") and seps.strip("-"):
            return False


def _is_tag(s: str) -> bool:
    return (0 < len(s) <= 128 and s.isascii() and (s[0].isalnum() or s[0] == "_")
            and all(c.isalnum() or c in "_.-" for c in s))


def _split_reference(text: str) -> tuple[str, str, str | None, str | None]:
    """(domain, path, tag, digest) per ``reference.Parse``: no normalisation; the domain is
    "" unless the first component is a valid host[:port] followed by ``/``."""
    rest, at, digest = text.partition("@")
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1:]
        if not _is_tag(tag):
            raise ValueError("invalid reference format")
    if at and not digest:
        raise ValueError("invalid reference format")
    domain, slash, path = rest.partition("/")
    if not (slash and _is_domain(domain) and all(map(_is_name_component, path.split("/")))):
        domain, path = "", rest
        if not all(map(_is_name_component, path.split("/"))):
            lowered = text.lower()
            if lowered != text:
                try:
                    _split_reference(lowered)
                except ValueError:
                    pass
                else:
                    raise ValueError("repository name must be lowercase")
            raise ValueError("invalid reference format")
    if len(rest) > 255:
        raise ValueError("repository name must not be more than 255 characters")
    return domain, path, tag, (digest if at else None)


def _aliases(raw: dict[str, str], source: str) -> dict[str, Alias]:
    """Check ``[aliases]``: short names (no registry, tag or digest) to fully qualified
    repositories (registry, no tag or digest), normalised the docker way."""
    out: dict[str, Alias] = {}
    problems: list[str] = []
    for name, value in raw.items():
        try:
            domain, _, tag, digest = _split_reference(name)
            if digest is not None or tag is not None:
                raise ValueError("must not contain a tag or digest")
            if "." in domain or ":" in domain or domain == "localhost":
                raise ValueError("must not contain a registry")
        except ValueError as e:
            problems.append(f"invalid short name {name!r}: {e}")
            continue
        if value == "":
            out[name] = Alias(None, source)
            continue
        try:
            domain, path, tag, digest = _split_reference(value)
            if digest is not None or tag is not None:
                raise ValueError("must not contain a tag or digest")
            if not ("." in domain or ":" in domain or domain == "localhost"):
                raise ValueError("must contain registry and repository")
        except ValueError as e:
            problems.append(f"invalid alias {value!r} for {name!r}: {e}")
            continue
        if domain == "index.docker.io":
            domain = "docker.io"
        if domain == "docker.io" and "/" not in path:
            path = "library/" + path
        out[name] = Alias(f"{domain}/{path}", source)
    if problems:
        raise _Problem("aliases: " + "; ".join(problems))
    return out


def _canonical_problem(text: str) -> str | None:
    """Why ``text`` is not a valid, fully qualified reference (as containers/image's
    ParseNamed requires of a rewritten one), or None."""
    try:
        ref = parse_reference(text)
    except UnladeError as e:
        return str(e)
    base = text.partition("@")[0]
    colon = base.rfind(":")
    name = base[:colon] if colon > base.rfind("/") else base
    if name != f"{ref.registry}/{ref.repository}":
        return f"it is not fully qualified (it means {ref.registry}/{ref.repository})"
    return None


def _as_reference(reference: str | Reference) -> Reference:
    return reference if isinstance(reference, Reference) else parse_reference(reference)


# -- prefix matching -----------------------------------------------------------------------


def _match_prefix(ref: str, prefix: str) -> int | None:
    """How much of ``ref`` (a host, repository or reference, host first) ``prefix``
    matches, or None (containers/image's refMatchingPrefix)."""
    if prefix.startswith("*."):
        return _match_wildcard(ref, prefix[1:])
    if not ref.startswith(prefix):
        return None
    if len(ref) == len(prefix) or ref[len(prefix)] in "/:@":
        # ":" also lets "example.com" match "example.com:5000/…"; containers/image
        # documents that as unintended but does it, and so do we.
        return len(prefix)
    return None


def _match_wildcard(ref: str, suffix: str) -> int | None:
    """Match ``*<suffix>`` (suffix like ``.example.com``) against the host part of ``ref``.

    containers/image looks only at the first occurrence of the suffix, so it misses
    ``a.example.com.example.com``; every occurrence before the first ``/`` is tried here.
    """
    slash = ref.find("/")
    host_end = len(ref) if slash == -1 else slash
    start = ref.find(suffix)
    while start != -1 and start < host_end:
        end = start + len(suffix)
        if end == len(ref) or ref[end] in ":/@":
            return end
        start = ref.find(suffix, start + 1)
    return None
