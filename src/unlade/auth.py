"""Registry credentials (from ``--creds`` or the files podman and docker log in to) and
``WWW-Authenticate`` challenges. No HTTP happens here; the registry client uses these.

Credentials come from the same places, in the same order, as for podman/skopeo
(containers-auth.json(5)) and then docker, so that a user who has logged in with either
tool needs no extra setup:

1. ``authfile`` when given, and then no other file;
2. ``$REGISTRY_AUTH_FILE`` if set, else ``$XDG_RUNTIME_DIR/containers/auth.json``;
3. ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config`` by default);
4. ``$DOCKER_CONFIG/config.json`` (``~/.docker/config.json`` by default);
5. ``~/.dockercfg`` (docker's legacy format: the ``auths`` map is the whole file).

The first file that has credentials for the registry wins. Within a file, a credential
helper named for the registry (``credHelpers``) or for everything (``credsStore``) is asked
first, then the ``auths`` key that matches the repository most specifically
(``host/ns/repo``, then ``host/ns``, then ``host``). A helper is only run if
``docker-credential-NAME`` is on ``$PATH``; a missing helper is skipped silently, because
config files are often shared between machines that do not all have the helper installed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlade.errors import ConfigError

__all__ = [
    "Challenge",
    "Credentials",
    "credentials_for",
    "parse_creds",
    "parse_www_authenticate",
]

_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
# What docker itself stores and asks helpers about for Docker Hub.
_DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HELPER_TIMEOUT = 60.0
# docker-credential-helpers' answer when it has nothing for the server.
_HELPER_NOT_FOUND = "credentials not found"
_HELPER_TOKEN_USER = "<token>"


@dataclass(frozen=True)
class Credentials:
    """What to log in with; secrets stay out of ``repr`` so they never reach logs."""

    username: str
    password: str = field(repr=False)
    # An OAuth refresh token (docker's "identitytoken"): used instead of the password
    # in the token request, as docker does after ``docker login`` with SSO.
    identity_token: str | None = field(default=None, repr=False)


def parse_creds(text: str) -> Credentials:
    """Read ``--creds user[:password]``; a missing password is "" so the caller may prompt.

    Only the first ``:`` splits, because passwords and tokens may contain colons.
    """
    username, _, password = text.partition(":")
    if not username:
        raise ConfigError("invalid --creds: empty username (expected user[:password])")
    return Credentials(username, password)


def _normalise_host(host: str) -> str:
    host = host.lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host


def _normalise_key(key: str, *, legacy: bool = False) -> str:
    """Reduce an auths/credHelpers key to ``host[/path]`` so spellings compare equal.

    A key with a scheme is a URL (``https://index.docker.io/v1/``): its path is an API
    path, not a namespace, so only the host is kept, as in every ~/.dockercfg key.
    Otherwise the path is a containers-style namespace.
    """
    scheme, sep, rest = key.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        key, legacy = rest, True
    host, _, path = key.partition("/")
    if legacy:
        path = ""
    host = _normalise_host(host)
    path = path.strip("/")
    return f"{host}/{path}" if path else host


def _candidates(registry: str, repository: str | None) -> list[str]:
    """Keys to try, most specific first: host/a/b/c, host/a/b, host/a, host."""
    host = _normalise_host(registry)
    keys = []
    parts = repository.strip("/").split("/") if repository else []
    for n in range(len(parts), 0, -1):
        keys.append("/".join([host, *parts[:n]]))
    keys.append(host)
    return keys


def _search_path(env: Mapping[str, str]) -> list[tuple[Path, bool]]:
    """(file, is_legacy_dockercfg) in lookup order, for when no authfile is given."""
    home = Path(env.get("HOME") or os.path.expanduser("~"))
    paths: list[tuple[Path, bool]] = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append((Path(env["REGISTRY_AUTH_FILE"]), False))
    elif env.get("XDG_RUNTIME_DIR"):
        paths.append((Path(env["XDG_RUNTIME_DIR"], "containers", "auth.json"), False))
    config_home = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    paths.append((config_home / "containers" / "auth.json", False))
    docker_config = Path(env.get("DOCKER_CONFIG") or home / ".docker")
    paths.append((docker_config / "config.json", False))
    paths.append((home / ".dockercfg", True))
    return paths


def _load(path: Path, *, required: bool) -> dict[str, Any] | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"auth file {path} does not exist") from None
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read auth file {path}: {exc.strerror}") from None
    return _parse(raw, path)


def _parse(raw: bytes, path: Path | str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"malformed JSON in auth file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"malformed auth file {path}: top level is not an object")
    return data


def _object(value: Any, path: Path, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"malformed auth file {path}: {what} is not an object")
    return value


def _string(entry: Mapping[str, Any], name: str, path: Path, key: str) -> str:
    value = entry.get(name) or ""
    if not isinstance(value, str):
        raise ConfigError(f"malformed auth file {path}: {name!r} of {key!r} is not a string")
    return value


def _from_entry(entry: Any, path: Path, key: str) -> Credentials | None:
    """Credentials in one auths entry, or None for a placeholder like ``{}``."""
    if not isinstance(entry, dict):
        raise ConfigError(f"malformed auth file {path}: entry {key!r} is not an object")
    auth = _string(entry, "auth", path, key)
    username = _string(entry, "username", path, key)
    password = _string(entry, "password", path, key)
    token = _string(entry, "identitytoken", path, key) or None
    if auth:
        try:
            padded = auth + "=" * (-len(auth) % 4)  # some tools drop the padding
            decoded = base64.b64decode(padded, validate=True).decode()
        except binascii.Error:
            raise ConfigError(f"malformed auth file {path}: bad base64 in {key!r}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"malformed auth file {path}: {key!r} auth is not UTF-8") from None
        username, sep, password = decoded.partition(":")
        if not sep:
            raise ConfigError(f"malformed auth file {path}: {key!r} auth is not user:password")
    if not (username or password or token):
        return None
    return Credentials(username, password, token)


def _run_helper(
    name: str, server: str, path: Path, env: Mapping[str, str] | None
) -> Credentials | None:
    """Ask ``docker-credential-NAME``; None if it is not installed or has nothing."""
    if not _HELPER_NAME.fullmatch(name):
        raise ConfigError(f"malformed auth file {path}: bad credential helper name {name!r}")
    search = (env if env is not None else os.environ).get("PATH")
    program = shutil.which(f"docker-credential-{name}", path=search)
    if program is None:
        return None
    try:
        done = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            env=dict(env) if env is not None else None,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"credential helper docker-credential-{name} failed: {exc}") from None
    if done.returncode != 0:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()
        if not said or _HELPER_NOT_FOUND in said[0].lower():
            return None
        message = said[0][:200]  # whatever the helper prints, keep the error one short line
        raise ConfigError(f"credential helper docker-credential-{name} failed: {message}")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"credential helper docker-credential-{name} gave bad JSON") from None
    if not secret:
        return None
    if username == _HELPER_TOKEN_USER:
        return Credentials("", "", secret)
    return Credentials(username, secret)


def _from_file(
    data: dict[str, Any],
    path: Path,
    legacy: bool,
    keys: list[str],
    env: Mapping[str, str] | None,
) -> Credentials | None:
    host = keys[-1]
    if not legacy:
        helpers = _object(data.get("credHelpers"), path, "credHelpers")
        helper = next((h for k, h in helpers.items() if _normalise_key(k) == host), None)
        helper = helper or data.get("credsStore")
        if helper:
            if not isinstance(helper, str):
                raise ConfigError(f"malformed auth file {path}: helper name is not a string")
            server = _DOCKER_HUB_SERVER if host == "docker.io" else host
            creds = _run_helper(helper, server, path, env)
            if creds is not None:
                return creds
    auths = data if legacy else _object(data.get("auths"), path, "auths")
    by_key: dict[str, list[str]] = {}
    # Plain keys (podman, "docker login host") are tried before URL spellings of the same
    # host; an entry is only decoded if it matches, so one bad entry spoils no other host.
    for key in sorted(auths, key=lambda k: "://" in k):
        by_key.setdefault(_normalise_key(key, legacy=legacy), []).append(key)
    for candidate in keys:
        for key in by_key.get(candidate, ()):
            creds = _from_entry(auths[key], path, key)
            if creds is not None:
                return creds
    return None


@dataclass(frozen=True)
class AuthDocument:
    """An auth file's bytes read from elsewhere (a resource provider): only it is used."""

    data: bytes
    source: str


def credentials_for(
    registry: str,
    repository: str | None = None,
    *,
    authfile: str | os.PathLike[str] | AuthDocument | None = None,
    env: Mapping[str, str] | None = None,
) -> Credentials | None:
    """Find the login a user already made with podman, skopeo or docker for this registry.

    ``repository`` (e.g. ``library/alpine``) enables containers' per-namespace keys;
    ``env`` replaces ``os.environ`` (for HOME, XDG_*, DOCKER_CONFIG, PATH) so callers and
    tests can point the search elsewhere. Returns None if no file has credentials.
    """
    environ = env if env is not None else os.environ
    keys = _candidates(registry, repository)
    if isinstance(authfile, AuthDocument):  # fetched already (a kbs:/// resource)
        return _from_file(_parse(authfile.data, authfile.source), Path(authfile.source),
                          False, keys, env)
    files = [(Path(authfile), False)] if authfile is not None else _search_path(environ)
    for path, legacy in files:
        data = _load(path, required=authfile is not None)
        if data is not None:
            creds = _from_file(data, path, legacy, keys, env)
            if creds is not None:
                return creds
    return None


@dataclass(frozen=True)
class Challenge:
    """One challenge from a ``WWW-Authenticate`` header (RFC 7235)."""

    scheme: str
    params: dict[str, str]
    token68: str | None = None


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*(?=[ \t]*(?:,|\Z))")
_VALUE_END = re.compile(r"[,\s]")


def _skip_space(value: str, pos: int) -> int:
    while pos < len(value) and value[pos] in " \t":
        pos += 1
    return pos


def _quoted(value: str, pos: int) -> tuple[str, int] | None:
    """The quoted-string starting at ``value[pos] == '"'``, or None if never closed."""
    out = []
    i = pos + 1
    while i < len(value):
        c = value[i]
        if c == '"':
            return "".join(out), i + 1
        if c == "\\" and i + 1 < len(value):
            i += 1
            c = value[i]
        out.append(c)
        i += 1
    return None


def parse_www_authenticate(value: str) -> list[Challenge]:
    """Parse every challenge in the header, keeping what parses and never raising.

    The header comes from a server we may not trust, so anything malformed is skipped
    rather than reported: the caller decides what to do with an empty list. Scheme and
    parameter names are lowercased (they are case-insensitive); the first of duplicate
    parameters wins. Unquoted values are taken up to the next comma or space, which also
    accepts servers that leave URLs unquoted.
    """
    challenges: list[Challenge] = []
    current: Challenge | None = None
    pos, end = 0, len(value)
    while pos < end:
        if value[pos] in ", \t":
            pos += 1
            continue
        m = _TOKEN.match(value, pos)
        if m is None:
            # Garbage: skip one character, or a whole quoted string (its commas are text).
            if value[pos] == '"':
                quoted = _quoted(value, pos)
                if quoted is None:
                    break
                pos = quoted[1]
            else:
                pos += 1
            continue
        name = m.group()
        after = _skip_space(value, m.end())
        if after < end and value[after] == "=":
            pos = _skip_space(value, after + 1)
            if pos < end and value[pos] == '"':
                quoted = _quoted(value, pos)
                if quoted is None:
                    break  # unterminated: the rest of the header is inside it
                param, pos = quoted
            else:
                stop = _VALUE_END.search(value, pos)
                value_end = stop.start() if stop else end
                param, pos = value[pos:value_end], value_end
            if current is not None:
                current.params.setdefault(name.lower(), param)
            continue
        pos = after
        token68 = _TOKEN68.match(value, pos)
        if token68 is not None:
            pos = token68.end()
        current = Challenge(name.lower(), {}, token68.group() if token68 else None)
        challenges.append(current)
    return challenges
