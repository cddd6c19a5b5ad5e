"""Credentials must be found where podman and docker leave them; challenges must parse
whatever a registry (friendly or not) sends."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from unlade.auth import (
    Challenge,
    Credentials,
    credentials_for,
    parse_creds,
    parse_www_authenticate,
)
from unlade.errors import ConfigError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


B64_NOT_UTF8 = base64.b64encode(b"\xff:pw").decode()


def entry(user: str, password: str) -> dict[str, str]:
    return {"auth": b64(f"{user}:{password}")}


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def env(home: Path, tmp_path: Path) -> dict[str, str]:
    """A sealed environment: nothing points at the real home, no helpers on PATH."""
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    return {"HOME": str(home), "PATH": str(empty_bin)}


# --- --creds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "user", "password"),
    [
        ("alice:s3cret", "alice", "s3cret"),
        ("alice", "alice", ""),
        ("alice:", "alice", ""),
        ("alice:pa:ss:word", "alice", "pa:ss:word"),
    ],
)
def test_parse_creds(text: str, user: str, password: str) -> None:
    assert parse_creds(text) == Credentials(user, password)


@pytest.mark.parametrize("text", ["", ":password", ":"])
def test_parse_creds_empty_user(text: str) -> None:
    with pytest.raises(ConfigError, match="empty username"):
        parse_creds(text)


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Credentials("alice", "hunter2", "refresh-xyz"))
    assert "alice" in text
    assert "hunter2" not in text
    assert "refresh-xyz" not in text


# --- file locations and precedence ----------------------------------------------------


def test_nothing_anywhere(env: dict[str, str]) -> None:
    assert credentials_for("ghcr.io", "o/r", env=env) is None


def test_xdg_runtime_dir(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "containers/auth.json", {"auths": {"ghcr.io": entry("rt", "p")}})
    env["XDG_RUNTIME_DIR"] = str(run)
    assert credentials_for("ghcr.io", env=env) == Credentials("rt", "p")


def test_xdg_config_home(env: dict[str, str], tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    write(cfg / "containers/auth.json", {"auths": {"ghcr.io": entry("xdg", "p")}})
    env["XDG_CONFIG_HOME"] = str(cfg)
    assert credentials_for("ghcr.io", env=env) == Credentials("xdg", "p")


def test_default_config_home(env: dict[str, str], home: Path) -> None:
    write(home / ".config/containers/auth.json", {"auths": {"ghcr.io": entry("cfg", "p")}})
    assert credentials_for("ghcr.io", env=env) == Credentials("cfg", "p")


def test_docker_config_default(env: dict[str, str], home: Path) -> None:
    write(home / ".docker/config.json", {"auths": {"ghcr.io": entry("dock", "p")}})
    assert credentials_for("ghcr.io", env=env) == Credentials("dock", "p")


def test_docker_config_env(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    write(home / ".docker/config.json", {"auths": {"ghcr.io": entry("ignored", "p")}})
    write(tmp_path / "dc/config.json", {"auths": {"ghcr.io": entry("dcenv", "p")}})
    env["DOCKER_CONFIG"] = str(tmp_path / "dc")
    assert credentials_for("ghcr.io", env=env) == Credentials("dcenv", "p")


def test_legacy_dockercfg(env: dict[str, str], home: Path) -> None:
    write(home / ".dockercfg", {"https://quay.io": {**entry("old", "p"), "email": "x@y"}})
    assert credentials_for("quay.io", env=env) == Credentials("old", "p")


def test_legacy_dockercfg_keys_are_hosts(env: dict[str, str], home: Path) -> None:
    write(home / ".dockercfg", {"quay.io/v1/": entry("old", "p")})
    assert credentials_for("quay.io", "other/ns", env=env) == Credentials("old", "p")


def test_registry_auth_file_replaces_runtime_dir(env: dict[str, str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    write(run / "containers/auth.json", {"auths": {"ghcr.io": entry("rt", "p")}})
    write(tmp_path / "custom.json", {"auths": {"ghcr.io": entry("custom", "p")}})
    env["XDG_RUNTIME_DIR"] = str(run)
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "custom.json")
    assert credentials_for("ghcr.io", env=env) == Credentials("custom", "p")


def test_registry_auth_file_falls_back_to_later_files(
    env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    write(tmp_path / "custom.json", {"auths": {"quay.io": entry("custom", "p")}})
    write(home / ".docker/config.json", {"auths": {"ghcr.io": entry("dock", "p")}})
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "custom.json")
    assert credentials_for("ghcr.io", env=env) == Credentials("dock", "p")
    # A REGISTRY_AUTH_FILE that does not exist is just an empty place to look.
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "missing.json")
    assert credentials_for("ghcr.io", env=env) == Credentials("dock", "p")


def test_precedence_order(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    run, cfg = tmp_path / "run", tmp_path / "cfg"
    env["XDG_RUNTIME_DIR"], env["XDG_CONFIG_HOME"] = str(run), str(cfg)
    files = [
        run / "containers/auth.json",
        cfg / "containers/auth.json",
        home / ".docker/config.json",
    ]
    for i, path in enumerate(files):
        write(path, {"auths": {"ghcr.io": entry(f"u{i}", "p")}})
    write(home / ".dockercfg", {"ghcr.io": entry("u3", "p")})
    for i, path in enumerate(files):
        assert credentials_for("ghcr.io", env=env) == Credentials(f"u{i}", "p")
        path.unlink()
    assert credentials_for("ghcr.io", env=env) == Credentials("u3", "p")


def test_first_file_with_an_entry_wins(env: dict[str, str], home: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    env["XDG_CONFIG_HOME"] = str(cfg)
    # This file exists but knows nothing of ghcr.io (only a placeholder): keep looking.
    write(cfg / "containers/auth.json", {"auths": {"ghcr.io": {}, "quay.io": entry("q", "p")}})
    write(home / ".docker/config.json", {"auths": {"ghcr.io": entry("dock", "p")}})
    assert credentials_for("ghcr.io", env=env) == Credentials("dock", "p")
    assert credentials_for("quay.io", env=env) == Credentials("q", "p")


def test_explicit_authfile_is_the_only_file(
    env: dict[str, str], home: Path, tmp_path: Path
) -> None:
    write(home / ".docker/config.json", {"auths": {"ghcr.io": entry("dock", "p")}})
    only = write(tmp_path / "only.json", {"auths": {"quay.io": entry("q", "p")}})
    assert credentials_for("ghcr.io", authfile=only, env=env) is None
    assert credentials_for("quay.io", authfile=str(only), env=env) == Credentials("q", "p")


def test_explicit_authfile_missing(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json"):
        credentials_for("ghcr.io", authfile=missing, env=env)


def test_empty_file_is_empty_config(env: dict[str, str], tmp_path: Path) -> None:
    empty = write(tmp_path / "empty.json", "")
    assert credentials_for("ghcr.io", authfile=empty, env=env) is None


# --- keys ------------------------------------------------------------------------------


def test_namespace_keys_most_specific_wins(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "auth.json",
        {
            "auths": {
                "reg.io": entry("host", "p"),
                "reg.io/team": entry("team", "p"),
                "reg.io/team/app": entry("app", "p"),
            }
        },
    )

    def who(repo: str | None) -> str | None:
        creds = credentials_for("reg.io", repo, authfile=f, env=env)
        return creds.username if creds else None

    assert who("team/app") == "app"
    assert who("team/app/sub") == "app"
    assert who("team/other") == "team"
    assert who("team") == "team"
    assert who("teams/app") == "host"  # prefixes match whole components only
    assert who("other") == "host"
    assert who(None) == "host"


def test_namespace_key_without_host_fallback(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "auth.json", {"auths": {"reg.io/team": entry("team", "p")}})
    assert credentials_for("reg.io", "other/x", authfile=f, env=env) is None
    assert credentials_for("reg.io", "team/x", authfile=f, env=env) == Credentials("team", "p")


@pytest.mark.parametrize(
    "key",
    [
        "https://reg.io",
        "https://reg.io/",
        "http://reg.io/v2/",
        "https://REG.IO/v1/",
        "reg.io/",
    ],
)
def test_url_keys_are_normalised(env: dict[str, str], tmp_path: Path, key: str) -> None:
    f = write(tmp_path / "auth.json", {"auths": {key: entry("u", "p")}})
    assert credentials_for("reg.io", "a/b", authfile=f, env=env) == Credentials("u", "p")


def test_url_key_path_is_not_a_namespace(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "auth.json", {"auths": {"https://reg.io/team/": entry("u", "p")}})
    assert credentials_for("reg.io", "other/x", authfile=f, env=env) == Credentials("u", "p")


def test_ports_are_part_of_the_host(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "auth.json", {"auths": {"localhost:5000": entry("u", "p")}})
    assert credentials_for("localhost:5000", "x", authfile=f, env=env) == Credentials("u", "p")
    assert credentials_for("localhost", "x", authfile=f, env=env) is None
    assert credentials_for("localhost:5001", "x", authfile=f, env=env) is None


@pytest.mark.parametrize(
    "key",
    ["https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io"],
)
@pytest.mark.parametrize("asked", ["docker.io", "index.docker.io", "registry-1.docker.io"])
def test_docker_hub_aliases(env: dict[str, str], tmp_path: Path, key: str, asked: str) -> None:
    f = write(tmp_path / "auth.json", {"auths": {key: entry("hub", "p")}})
    assert credentials_for(asked, "library/alpine", authfile=f, env=env) == Credentials("hub", "p")


def test_docker_hub_namespace_key(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "auth.json",
        {"auths": {"docker.io": entry("hub", "p"), "docker.io/myorg": entry("org", "p")}},
    )
    got = credentials_for("registry-1.docker.io", "myorg/app", authfile=f, env=env)
    assert got == Credentials("org", "p")


def test_plain_placeholder_falls_back_to_url_key(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "auth.json",
        {"auths": {"docker.io": {}, "https://index.docker.io/v1/": entry("hub", "p")}},
    )
    assert credentials_for("docker.io", authfile=f, env=env) == Credentials("hub", "p")


# --- entry contents --------------------------------------------------------------------


def test_username_password_fields(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "a.json", {"auths": {"reg.io": {"username": "u", "password": "p"}}})
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("u", "p")


def test_password_with_colon_and_unicode(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "a.json", {"auths": {"reg.io": entry("ü", "a:b:ç")}})
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("ü", "a:b:ç")


def test_unpadded_base64_is_accepted(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "a.json", {"auths": {"reg.io": {"auth": b64("u:pw").rstrip("=")}}})
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("u", "pw")


def test_identity_token(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.json",
        {"auths": {"reg.io": {"auth": b64("alice:"), "identitytoken": "refresh-123"}}},
    )
    creds = credentials_for("reg.io", authfile=f, env=env)
    assert creds == Credentials("alice", "", "refresh-123")


def test_identity_token_alone(env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "a.json", {"auths": {"reg.io": {"identitytoken": "t"}}})
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("", "", "t")


# --- malformed files -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "top level is not an object"),
        ('"text"', "top level is not an object"),
        ('{"auths": []}', "auths is not an object"),
        ('{"auths": {"reg.io": "abc"}}', "entry 'reg.io' is not an object"),
        ('{"auths": {"reg.io": {"auth": "!!!not-base64"}}}', "bad base64 in 'reg.io'"),
        ('{"auths": {"reg.io": {"auth": "' + b64("nocolon") + '"}}}', "not user:password"),
        ('{"auths": {"reg.io": {"auth": "' + B64_NOT_UTF8 + '"}}}', "auth is not UTF-8"),
        ('{"auths": {"reg.io": {"auth": 5}}}', "'auth' of 'reg.io' is not a string"),
        ('{"auths": {"reg.io": {"username": ["u"]}}}', "'username' of 'reg.io'"),
        ('{"credHelpers": "x"}', "credHelpers is not an object"),
        ('{"credsStore": 7}', "helper name is not a string"),
        ('{"credsStore": "../../bin/sh"}', "bad credential helper name"),
    ],
)
def test_malformed_file_names_the_file(
    env: dict[str, str], tmp_path: Path, content: str, fragment: str
) -> None:
    f = tmp_path / "broken-auth.json"
    f.write_text(content)
    with pytest.raises(ConfigError) as exc:
        credentials_for("reg.io", authfile=f, env=env)
    message = str(exc.value)
    assert str(f) in message
    assert fragment in message
    assert "\n" not in message


def test_malformed_file_in_search_path(env: dict[str, str], home: Path) -> None:
    write(home / ".docker/config.json", "{")
    with pytest.raises(ConfigError, match=r"\.docker/config\.json"):
        credentials_for("reg.io", env=env)


def test_bad_entry_for_another_host_is_not_an_error(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "a.json",
        {"auths": {"other.io": {"auth": "!!!"}, "reg.io": entry("u", "p")}},
    )
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("u", "p")


def test_unreadable_file(env: dict[str, str], tmp_path: Path) -> None:
    f = tmp_path / "dir.json"
    f.mkdir()
    with pytest.raises(ConfigError, match="cannot read auth file"):
        credentials_for("reg.io", authfile=f, env=env)


# --- credential helpers ----------------------------------------------------------------


def make_helper(bindir: Path, name: str, body: str) -> Path:
    """A fake docker-credential-NAME: a Python script logging what it was asked."""
    path = bindir / f"docker-credential-{name}"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


STORE = """
import json, os, sys
server = sys.stdin.read()
with open(os.environ["HELPER_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + " " + server + "\\n")
known = json.loads(os.environ["HELPER_DATA"])
if server not in known:
    print("credentials not found in native keychain")
    sys.exit(1)
user, secret = known[server]
print(json.dumps({"ServerURL": server, "Username": user, "Secret": secret}))
"""


@pytest.fixture
def helper_env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    bindir = Path(env["PATH"])
    make_helper(bindir, "fake", STORE)
    env["HELPER_LOG"] = str(tmp_path / "helper.log")
    env["HELPER_DATA"] = json.dumps(
        {
            "reg.io": ["helper-user", "helper-pass"],
            "https://index.docker.io/v1/": ["<token>", "hub-refresh"],
        }
    )
    return env


def helper_log(env: dict[str, str]) -> list[str]:
    path = Path(env["HELPER_LOG"])
    return path.read_text().splitlines() if path.exists() else []


def test_cred_helpers(helper_env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "config.json",
        {"auths": {"reg.io": entry("file", "p")}, "credHelpers": {"reg.io": "fake"}},
    )
    got = credentials_for("reg.io", authfile=f, env=helper_env)
    assert got == Credentials("helper-user", "helper-pass")
    assert helper_log(helper_env) == ["get reg.io"]


def test_creds_store_docker_hub_token(helper_env: dict[str, str], tmp_path: Path) -> None:
    f = write(tmp_path / "config.json", {"auths": {}, "credsStore": "fake"})
    got = credentials_for("registry-1.docker.io", "library/alpine", authfile=f, env=helper_env)
    assert got == Credentials("", "", "hub-refresh")
    assert helper_log(helper_env) == ["get https://index.docker.io/v1/"]


def test_helper_without_entry_falls_back_to_auths(
    helper_env: dict[str, str], tmp_path: Path
) -> None:
    f = write(
        tmp_path / "config.json",
        {"auths": {"other.io": entry("file", "p")}, "credsStore": "fake"},
    )
    assert credentials_for("other.io", authfile=f, env=helper_env) == Credentials("file", "p")
    assert credentials_for("nothing.io", authfile=f, env=helper_env) is None
    assert helper_log(helper_env) == ["get other.io", "get nothing.io"]


def test_missing_helper_is_ignored(env: dict[str, str], tmp_path: Path) -> None:
    f = write(
        tmp_path / "config.json",
        {
            "auths": {"reg.io": entry("file", "p")},
            "credHelpers": {"reg.io": "absent"},
            "credsStore": "also-absent",
        },
    )
    assert credentials_for("reg.io", authfile=f, env=env) == Credentials("file", "p")
    assert credentials_for("else.io", authfile=f, env=env) is None


def test_failing_helper_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    make_helper(Path(env["PATH"]), "broken", "import sys\nprint('keychain locked')\nsys.exit(3)\n")
    f = write(tmp_path / "config.json", {"credsStore": "broken"})
    with pytest.raises(ConfigError, match="docker-credential-broken failed: keychain locked"):
        credentials_for("reg.io", authfile=f, env=env)


def test_helper_bad_output_is_an_error(env: dict[str, str], tmp_path: Path) -> None:
    make_helper(Path(env["PATH"]), "garbled", "print('not json')\n")
    f = write(tmp_path / "config.json", {"credsStore": "garbled"})
    with pytest.raises(ConfigError, match="docker-credential-garbled gave bad JSON"):
        credentials_for("reg.io", authfile=f, env=env)


def test_helper_not_used_in_legacy_dockercfg(helper_env: dict[str, str], home: Path) -> None:
    # In ~/.dockercfg every top-level key is a registry, even one called "credsStore".
    write(home / ".dockercfg", {"reg.io": entry("legacy", "p")})
    assert credentials_for("reg.io", env=helper_env) == Credentials("legacy", "p")
    assert helper_log(helper_env) == []


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = write(tmp_path / "custom.json", {"auths": {"reg.io": entry("envvar", "p")}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(f))
    assert credentials_for("reg.io") == Credentials("envvar", "p")
    assert os.environ["REGISTRY_AUTH_FILE"] == str(f)


# --- WWW-Authenticate ------------------------------------------------------------------


def bearer(**params: str) -> Challenge:
    return Challenge("bearer", params)


REAL_WORLD = [
    (  # Docker Hub
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/alpine:pull"',
        [
            bearer(
                realm="https://auth.docker.io/token",
                service="registry.docker.io",
                scope="repository:library/alpine:pull",
            )
        ],
    ),
    (  # Docker Hub, push denied
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push",error="insufficient_scope"',
        [
            bearer(
                realm="https://auth.docker.io/token",
                service="registry.docker.io",
                scope="repository:samalba/my-app:pull,push",
                error="insufficient_scope",
            )
        ],
    ),
    (  # ghcr.io
        'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:o/r:pull"',
        [bearer(realm="https://ghcr.io/token", service="ghcr.io", scope="repository:o/r:pull")],
    ),
    (  # quay.io
        'Bearer realm="https://quay.io/v2/auth",service="quay.io"',
        [bearer(realm="https://quay.io/v2/auth", service="quay.io")],
    ),
    (  # GCR / Artifact Registry
        'Bearer realm="https://gcr.io/v2/token",service="gcr.io",'
        'scope="repository:google-containers/pause:pull"',
        [
            bearer(
                realm="https://gcr.io/v2/token",
                service="gcr.io",
                scope="repository:google-containers/pause:pull",
            )
        ],
    ),
    (  # ECR
        'Basic realm="https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",'
        'service="ecr.amazonaws.com"',
        [
            Challenge(
                "basic",
                {
                    "realm": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com/",
                    "service": "ecr.amazonaws.com",
                },
            )
        ],
    ),
    (  # distribution registry with htpasswd
        'Basic realm="Registry Realm"',
        [Challenge("basic", {"realm": "Registry Realm"})],
    ),
    (  # several challenges in one header
        'Basic realm="Registry", Bearer realm="https://h/token",service="h"',
        [
            Challenge("basic", {"realm": "Registry"}),
            bearer(realm="https://h/token", service="h"),
        ],
    ),
    (  # a token68 challenge followed by a parameterised one
        "Negotiate YIIabc+/def==, Basic realm=x",
        [Challenge("negotiate", {}, "YIIabc+/def=="), Challenge("basic", {"realm": "x"})],
    ),
    (  # bare schemes
        "Negotiate, NTLM",
        [Challenge("negotiate", {}), Challenge("ntlm", {})],
    ),
]


@pytest.mark.parametrize(("header", "expected"), REAL_WORLD)
def test_real_world_headers(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('BEARER Realm="r"', [bearer(realm="r")]),
        ('bEaReR realm="r"', [bearer(realm="r")]),
        (
            r'Bearer realm="a \"quoted\" realm", service="s\\x"',
            [bearer(realm='a "quoted" realm', service="s\\x")],
        ),
        ('Bearer scope="a,b, c",realm="r"', [bearer(scope="a,b, c", realm="r")]),
        (
            'Bearer realm = "spaced" , service=unquoted',
            [bearer(realm="spaced", service="unquoted")],
        ),
        ("Bearer realm=https://x/token,service=x", [bearer(realm="https://x/token", service="x")]),
        ('Bearer realm="", service=', [bearer(realm="", service="")]),
        ('Bearer realm="first", realm="second"', [bearer(realm="first")]),
        ('Bearer realm="r" service="s"', [bearer(realm="r", service="s")]),
    ],
)
def test_quoting_and_case(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("", []),
        ("   ", []),
        (",,,", []),
        (", ,\t,", []),
        ('"', []),
        ("=", []),
        ('="x"', []),
        ('realm="orphan param"', []),
        ('Bearer realm="unterminated', [bearer()]),
        ('Bearer service="s", realm="https://x\\', [bearer(service="s")]),
        ('Bearer realm="r", scope="open', [bearer(realm="r")]),
        ("Bearer\r\nrealm=x", [bearer(realm="x")]),
        ('Bearer realm="r"\x00, Basic', [bearer(realm="r"), Challenge("basic", {})]),
        ('@@@ Bearer realm="r"', [bearer(realm="r")]),
        ('"a,b" Basic', [Challenge("basic", {})]),
        ("Bearer realm=" + "x" * 100_000, [bearer(realm="x" * 100_000)]),
    ],
)
def test_hostile_headers_never_raise(header: str, expected: list[Challenge]) -> None:
    assert parse_www_authenticate(header) == expected


def test_many_quotes_is_linear() -> None:
    header = 'Bearer realm="' + '\\"' * 200_000 + '"' + ', a="b"' * 50_000
    challenges = parse_www_authenticate(header)
    assert challenges[0].params["realm"] == '"' * 200_000
    assert challenges[0].params["a"] == "b"
