"""registries.conf: the cases of containers/image's sysregistriesv2 tests (same inputs, same
answers), plus unlade's own: where files are found, one-line errors naming the file,
unknown keys refused, and blocking applied per endpoint."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from unlade.errors import ConfigError, InvalidReference
from unlade.reference import parse_reference
from unlade.registries_conf import (
    AUTH_FILE_HELPER,
    Alias,
    Mirror,
    RegistriesConf,
    Registry,
    RegistryBlocked,
    _match_prefix,
)

A64 = "a" * 64
B64 = "b" * 64
DIGEST = f"@sha256:{A64}"


def conf(text: str, source: str = "test.conf") -> RegistriesConf:
    return RegistriesConf.from_toml(text, source)


def write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def error_of(text: str, source: str = "bad.conf") -> str:
    with pytest.raises(ConfigError) as err:
        conf(text, source)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{source}: "), message
    return message


def locations(c: RegistriesConf) -> list[str]:
    return [r.location for r in c.registries]


# ----------------------------------------------------------------------------------------------
# Test data (the files of containers/image's pkg/sysregistriesv2/testdata, rewritten)

MIRRORS = """
[[registry]]
location = "registry.com"

[[registry.mirror]]
location = "mirror-1.registry.com"

[[registry.mirror]]
location = "mirror-2.registry.com"
insecure = true

[[registry]]
location = "blocked.registry.com"
blocked = true
"""

UNMARSHAL = """
[[registry]]
location = "registry.com"
[[registry.mirror]]
location = "mirror-1.registry.com"
[[registry.mirror]]
location = "mirror-2.registry.com"

[[registry]]
location = "blocked.registry.com"
blocked = true

[[registry]]
location = "insecure.registry.com"
insecure = true

[[registry]]
location = "untrusted.registry.com"
insecure = true
"""

FIND_REGISTRY = """
[[registry]]
location = "registry.com:5000"
prefix = "simple-prefix.com"

[[registry]]
location = "another-registry.com:5000"
prefix = "complex-prefix.com:4000/with/path"

[[registry]]
location = "registry.com:5000"
prefix = "another-registry.com"

[[registry]]
location = "no-prefix.com"

[[registry]]
location = "empty-prefix.com"
prefix = ""

[[registry]]
location = "subdomain-prefix.com"
prefix = "*.so.simple-prefix.com"

[[registry]]
location = "subdomain-prefix-2.com"
prefix = "*.simple-prefix.com"

[[registry]]
location = "subdomain-prefix-1.com"
prefix = "*.not.quite.simple-prefix.com"

[[registry]]
location = "subdomain-prefix-2.com"
prefix = "*.docker.io"

[[registry]]
location = "subdomain-prefix-3.com"
prefix = "*.bar.example.com"

[[registry]]
location = "subdomain-prefix-4.com"
prefix = "*.bar.docker.io"

[[registry]]
location = "subdomain-prefix-5.com"
prefix = "foo.bar.example.com:5000"

[[registry]]
prefix = "*.internal.registry.com"

[[registry]]
prefix = "*.com"

[[registry]]
prefix = "*.foobar.io"
"""

# registries.conf.d of the containers/image tests
DROPINS = {
    "config-1.conf": """
unqualified-search-registries = ["example-overwrite.com"]
credential-helpers = ["we", "will", "be", "overridden", "later"]

[[registry]]
location = "1.com"

[aliases]
docker = "docker.io/library/config1"
config1 = "config1.com/image"
barz = "barz.com/image/config1"
""",
    "config-2.conf": """
short-name-mode = "permissive"
credential-helpers = ["dropin-1", "dropin-2"]

[[registry]]
location = "1.com"

[[registry]]
location = "2.com"

[[registry]]
location = "base.com"
blocked = true

[aliases]
config2 = "config2.com/image"
barz = "barz.com/config2"
added3 = "xxx.com/image"
example = ""
""",
    "config-3.conf": "",
    "config-3.ignore": """
unqualified-search-registries = ["ignore-example-overwrite.com"]
[[registry]]
location = "ignore-me-because-i-have-a-wrong-suffix.com"
""",
    "subdomain-override-1.conf": """
[[registry]]
location = "subdomain-prefix-1-overridden-by-dropin-location.com"
prefix = "*.not.quite.simple-prefix.com"
""",
    "subdomain-override-2.conf": """
[[registry]]
location = "subdomain-prefix-2-overridden-by-dropin-location.com"
prefix = "*.docker.com"
""",
    "subdomain-override-3.conf": """
[[registry]]
location = "subdomain-prefix-3-overridden-by-dropin-location.com"
prefix = "*.bar.example.com"
""",
}

BASE_FOR_DROPINS = """
unqualified-search-registries = ["example.com"]

[[registry]]
location = "base.com"
insecure = true
"""

UNQUALIFIED_SEARCH = """
unqualified-search-registries = ["registry-a.com", "registry-c.com", "registry-d.com"]
[[registry]]
location = "registry-a.com"
[[registry]]
location = "registry-b.com"
[[registry]]
location = "registry-c.com"
[[registry]]
location = "registry-d.com"
"""

ALIASES = """
short-name-mode = "enforcing"

[aliases]
docker = "docker.io/library/foo"
"quay/foo" = "quay.io/library/foo"
example = "example.com/library/foo"
empty = ""
"""

CRED_HELPERS = """
credential-helpers = ["helper-1", "helper-2"]
[[registry]]
location = "registry-a.com"
[[registry]]
location = "registry-b.com"
[[registry]]
location = "registry-c.com/foo"
prefix = "registry-c.com"
"""

PULL_SOURCES = """
[[registry]]
prefix = "registry-a.com/foo"
location = "registry-a.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-a.com"
[[registry.mirror]]
location = "mirror-2.registry-a.com"
insecure = true

[[registry]]
prefix = "registry-b.com/foo"
location = "registry-b.com/bar"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror-1.registry-b.com"
[[registry.mirror]]
location = "mirror-2.registry-b.com"

[[registry]]
prefix = "registry-a.com/baz"
location = "registry-a.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-a.com"
[[registry.mirror]]
location = "mirror-2.registry-a.com"
insecure = true

[[registry]]
prefix = "registry-b.com/baz"
location = "registry-b.com/bar"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-1.registry-b.com"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-2.registry-b.com"

[[registry]]
prefix = "registry-c.com/baz"
location = "registry-c.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-c.com"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-2.registry-c.com"

[[registry]]
prefix = "registry-d.com/baz"
location = "registry-d.com/bar"
mirror-by-digest-only = true
[[registry.mirror]]
location = "mirror-1.registry-d.com"
[[registry.mirror]]
location = "mirror-2.registry-d.com"

[[registry]]
prefix = "registry-e.com/baz"
location = "registry-e.com/bar"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-1.registry-e.com"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-2.registry-e.com"

[[registry]]
prefix = "registry-f.com/baz"
location = "registry-f.com/bar"
[[registry.mirror]]
location = "mirror-1.registry-f.com"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-2.registry-f.com"

[[registry]]
prefix = "registry-g.com/baz"
location = "registry-g.com/bar"
[[registry.mirror]]
pull-from-mirror = "digest-only"
location = "mirror-1.registry-g.com"
[[registry.mirror]]
pull-from-mirror = "tag-only"
location = "mirror-2.registry-g.com"
[[registry.mirror]]
location = "mirror-3.registry-g.com"
[[registry.mirror]]
pull-from-mirror = "all"
location = "mirror-4.registry-g.com"
"""

V1_COMPAT = """
[registries.search]
registries = ["registry-a.com////", "registry-c.com", "registry-d.com"]

[registries.block]
registries = ["registry-b.com"]

[registries.insecure]
registries = ["registry-b.com////", "registry-d.com", "registry-e.com", "registry-a.com"]
"""


@pytest.fixture
def system(tmp_path: Path) -> Path:
    """A root with etc/containers/registries.conf.d holding containers/image's drop-ins."""
    root = tmp_path / "root"
    for name, text in DROPINS.items():
        write(root / "etc/containers/registries.conf.d" / name, text)
    return root


def load_with_dropins(tmp_path: Path, system: Path, main: str,
                      extra: dict[str, str] | None = None) -> RegistriesConf:
    """``main`` as an explicit file, with the containers/image drop-ins (and ``extra``
    drop-ins in the user's directory); nothing of the real system is read."""
    path = write(tmp_path / "main.conf", main)
    home = tmp_path / "home"
    for name, text in (extra or {}).items():
        write(home / ".config/containers/registries.conf.d" / name, text)
    return RegistriesConf.load(path, env={}, home=home, root=system)


# ----------------------------------------------------------------------------------------------
# Basic parsing


def test_empty_config_has_the_defaults() -> None:
    c = conf("")
    assert c.registries == ()
    assert c.unqualified_search_registries == ()
    assert c.credential_helpers == (AUTH_FILE_HELPER,)
    assert c.short_name_mode == "permissive"
    assert dict(c.aliases) == {}
    assert c.find("example.com/foo:bar") is None
    assert (c.source, c.sources, c.unqualified_search_registries_origin) == (
        "test.conf", ("test.conf",), "test.conf")
    assert RegistriesConf() == dataclasses.replace(
        c, source=None, sources=(), unqualified_search_registries_origin=None)


@pytest.mark.parametrize(("written", "parsed"), [
    ("john.doe@example.com", "john.doe@example.com"),  # no syntax check beyond schemes
    ("example.com", "example.com"),
    ("example.com/", "example.com"),  # trailing slashes are stripped
    ("example.com//////", "example.com"),
    ("example.com:5000/with/path", "example.com:5000/with/path"),
])
def test_location_normalisation(written: str, parsed: str) -> None:
    (reg,) = conf(f'[[registry]]\nlocation = "{written}"\n').registries
    assert (reg.prefix, reg.location) == (parsed, parsed)


def test_mirrors() -> None:
    c = conf(MIRRORS)
    assert len(c.registries) == 2
    reg = c.find("registry.com/image:tag")
    assert reg is not None
    assert reg.mirrors == (Mirror("mirror-1.registry.com", False),
                           Mirror("mirror-2.registry.com", True))
    assert reg.source == "test.conf"
    blocked = c.find("blocked.registry.com/x")
    assert blocked is not None and blocked.blocked and not blocked.insecure


def test_unmarshal_and_order() -> None:
    c = conf(UNMARSHAL)
    assert locations(c) == ["blocked.registry.com", "insecure.registry.com", "registry.com",
                            "untrusted.registry.com"]  # sorted by prefix
    assert [r.insecure for r in c.registries] == [False, True, False, True]


def test_same_prefix_twice_first_wins() -> None:
    c = conf("""
[[registry]]
prefix = "example.com/a"
location = "one.example"
[[registry]]
prefix = "example.com/a"
location = "two.example"
""")
    assert locations(c) == ["one.example"]


def test_same_location_under_several_prefixes() -> None:
    c = conf("""
[[registry]]
prefix = "example.com/a"
location = "internal.example"
insecure = true
[[registry]]
prefix = "example.com/b"
location = "internal.example"
insecure = true
""")
    assert [r.prefix for r in c.registries] == ["example.com/a", "example.com/b"]


def test_keys_match_case_insensitively_like_containers_image() -> None:
    c = conf('[[Registry]]\nLocation = "example.com"\nBLOCKED = true\n'
             '[[Registry.Mirror]]\nlocation = "m.example"\nInsecure = true\n')
    (reg,) = c.registries
    assert reg.blocked and reg.mirrors == (Mirror("m.example", True),)


# ----------------------------------------------------------------------------------------------
# Prefix matching (TestRefMatchingSubdomainPrefix, TestRefMatchingPrefix)

SUBDOMAIN_CASES = [
    ("docker.io", "*.io", len("docker.io")),
    ("docker.io/foo", "*.com", None),
    ("example.com/foo", "*.co", None),
    ("example.com/foo", "*.example.com", None),
    ("example.com/foo", "*.com", len("example.com")),
    ("example.com/foo:bar", "*.com", len("example.com")),
    ("example.com/foo/bar:baz", "*.com", len("example.com")),
    ("yet.another.example.com/foo", "**.example.com", None),
    ("yet.another.example.com/foo", "***.another.example.com", None),
    ("yet.another.example.com/foo", "**********.another.example.com", None),
    ("yet.another.example.com/foo/bar", "**********.another.example.com", None),
    ("yet.another.example.com/foo/bar", "*.another.example.com",
     len("yet.another.example.com")),
    ("another.example.com/namespace.com/foo/bar/bbq:baz", "*.example.com",
     len("another.example.com")),
    ("example.net/namespace-ends-in.com/foo/bar/bbq:baz", "*.com", None),
    ("another.example.com/namespace.com/foo/bar/bbq:baz", "*.namespace.com", None),
    ("sub.example.com/foo/bar", "*.com", len("sub.example.com")),
    ("sub.example.com/foo/bar", "*.example.com", len("sub.example.com")),
    ("another.sub.example.com/foo/bar/bbq:baz", "*.example.com",
     len("another.sub.example.com")),
    ("another.sub.example.com/foo/bar/bbq:baz", "*.sub.example.com",
     len("another.sub.example.com")),
    (f"yet.another.example.com/foo/bar{DIGEST}", "*.example.com",
     len("yet.another.example.com")),
    (f"yet.another.sub.example.com/foo/bar{DIGEST}", "*.sub.example.com",
     len("yet.another.sub.example.com")),
    # unlade: every occurrence of the suffix in the host is tried (containers/image only
    # tries the first one and so misses these subdomains)
    ("a.example.com.example.com/foo", "*.example.com", len("a.example.com.example.com")),
    ("a.com.b.com:5000/foo", "*.com", len("a.com.b.com")),
    ("example.com.evil.org/foo", "*.example.com", None),
    ("sub.example.com:5000/foo", "*.example.com", len("sub.example.com")),
]

PREFIX_CASES = [
    # prefix is a host
    ("docker.io", "docker.io", len("docker.io")),
    ("docker.io", "example.com", None),
    ("example.com:5000", "example.com:5000", len("example.com:5000")),
    ("example.com:50000", "example.com:5000", None),
    ("example.com:5000", "example.com", len("example.com")),  # unintended upstream, kept
    ("example.com/foo", "example.com", len("example.com")),
    ("example.com/foo/bar", "example.com", len("example.com")),
    ("example.com/foo/bar:baz", "example.com", len("example.com")),
    (f"example.com/foo/bar{DIGEST}", "example.com", len("example.com")),
    # prefix is a repository or namespace
    ("docker.io", "docker.io/library", None),
    ("docker.io/library", "docker.io/library", len("docker.io/library")),
    ("example.com/library", "docker.io/library", None),
    ("docker.io/libraryy", "docker.io/library", None),
    ("docker.io/library/busybox", "docker.io/library", len("docker.io/library")),
    ("docker.io", "docker.io/library/busybox", None),
    ("docker.io/library/busybox", "docker.io/library/busybox",
     len("docker.io/library/busybox")),
    ("example.com/library/busybox", "docker.io/library/busybox", None),
    ("docker.io/library/busybox2", "docker.io/library/busybox", None),
    # prefix is one image
    ("example.com", "example.com/foo:bar", None),
    ("example.com/foo", "example.com/foo:bar", None),
    ("example.com/foo:bar", "example.com/foo:bar", len("example.com/foo:bar")),
    ("example.com/foo:bar2", "example.com/foo:bar", None),
    ("example.com", f"example.com/foo{DIGEST}", None),
    ("example.com/foo", f"example.com/foo{DIGEST}", None),
    (f"example.com/foo{DIGEST}", f"example.com/foo{DIGEST}", len(f"example.com/foo{DIGEST}")),
    (f"example.com/foo@sha256:{B64}", f"example.com/foo{DIGEST}", None),
    # an invalid prefix does not crash
    ("example.com/foo", "*", None),
]


@pytest.mark.parametrize(("ref", "prefix", "expected"), SUBDOMAIN_CASES + PREFIX_CASES)
def test_match_prefix(ref: str, prefix: str, expected: int | None) -> None:
    assert _match_prefix(ref, prefix) == expected


# ----------------------------------------------------------------------------------------------
# FindRegistry (TestFindRegistry, with the drop-ins)

FIND_CASES = [
    ("simple-prefix.com/foo/bar:latest", "simple-prefix.com", "registry.com:5000"),
    ("simple-prefix.com/", "simple-prefix.com", "registry.com:5000"),  # path match
    ("simple-prefix.com", "simple-prefix.com", "registry.com:5000"),  # host match
    ("not.so.simple-prefix.com/", "*.so.simple-prefix.com", "subdomain-prefix.com"),
    ("not.quite.simple-prefix.com/", "*.simple-prefix.com", "subdomain-prefix-2.com"),
    ("not.quite.simple-prefix.com:5000/with/path/and/beyond:tag", "*.simple-prefix.com",
     "subdomain-prefix-2.com"),
    # location replaced by subdomain-override-1.conf
    ("really.not.quite.simple-prefix.com:5000/with/path/and/beyond:tag",
     "*.not.quite.simple-prefix.com", "subdomain-prefix-1-overridden-by-dropin-location.com"),
    # subdomain-override-2.conf adds *.docker.com, which does not match docker.io
    ("foo.docker.io:5000/omg/wtf/bbq:foo", "*.docker.io", "subdomain-prefix-2.com"),
    # location replaced by subdomain-override-3.conf
    (f"foo.bar.example.com:6000/omg/wtf/bbq{DIGEST}", "*.bar.example.com",
     "subdomain-prefix-3-overridden-by-dropin-location.com"),
    # *.docker.io matches, *.bar.docker.io is longer
    ("foo.bar.docker.io:5000/omg/wtf/bbq:foo", "*.bar.docker.io", "subdomain-prefix-4.com"),
    # *.bar.example.com matches, foo.bar.example.com:5000 is longer
    ("foo.bar.example.com:5000/omg/wtf/bbq:foo", "foo.bar.example.com:5000",
     "subdomain-prefix-5.com"),
    ("complex-prefix.com:4000/with/path/and/beyond:tag", "complex-prefix.com:4000/with/path",
     "another-registry.com:5000"),
    ("no-prefix.com/foo:tag", "no-prefix.com", "no-prefix.com"),
    ("empty-prefix.com/foo:tag", "empty-prefix.com", "empty-prefix.com"),
    ("abc.internal.registry.com/foo:bar", "*.internal.registry.com", ""),
]


def test_find_registry(tmp_path: Path, system: Path) -> None:
    c = load_with_dropins(tmp_path, system, FIND_REGISTRY)
    assert len(c.registries) == 19
    for name, prefix, location in FIND_CASES:
        reg = c.find(name)
        assert reg is not None, name
        assert (reg.prefix, reg.location) == (prefix, location), name
    assert c.find("simple-prefix.comx") is None
    assert c.find("example.org/foo") is None


def test_registry_for_host() -> None:
    c = conf(UNMARSHAL + '[[registry]]\nprefix = "*.foobar.io"\n'
             '[[registry]]\nprefix = "complex-prefix.com:4000/with/path"\nlocation = "a.com"\n')
    reg = c.registry_for("insecure.registry.com")
    assert reg is not None and reg.insecure
    reg = c.registry_for("x.foobar.io:5000")
    assert reg is not None and reg.prefix == "*.foobar.io"
    # a namespace-level prefix does not apply to the bare host
    assert c.registry_for("complex-prefix.com:4000") is None


# ----------------------------------------------------------------------------------------------
# Rewriting (TestRewriteReferenceSuccess, TestRewriteReferenceFailedDuringParseNamed)

REWRITE_OK = [
    ("example.com/image", "example.com", "example.com", "example.com/image"),
    ("example.com/image:latest", "example.com", "example.com", "example.com/image:latest"),
    ("example.com:5000/image", "example.com:5000", "example.com:5000",
     "example.com:5000/image"),
    ("example.com:5000/image:latest", "example.com:5000", "example.com:5000",
     "example.com:5000/image:latest"),
    (f"example.com/foo{DIGEST}", "example.com", "example.com", f"example.com/foo{DIGEST}"),
    ("example.com/foo/image:latest", "example.com/foo", "example.com",
     "example.com/image:latest"),
    ("example.com/foo/image:latest", "example.com/foo", "example.com/path",
     "example.com/path/image:latest"),
    ("docker.io/library/image:latest", "docker.io", "docker.io",
     "docker.io/library/image:latest"),
    ("docker.io/library/image", "docker.io/library", "example.com", "example.com/image"),
    ("docker.io/library/image", "docker.io", "example.com", "example.com/library/image"),
    ("docker.io/library/prefix/image", "docker.io/library/prefix", "example.com",
     "example.com/image"),
    ("docker.io/namespace/image", "*.io", "example.com", "example.com/namespace/image"),
    ("docker.io/library/prefix/image", "*.io", "example.com",
     "example.com/library/prefix/image"),
    ("sub.example.io/library/prefix/image", "*.example.io", "example.com",
     "example.com/library/prefix/image"),
    ("another.sub.example.io:5000/library/prefix/image:latest", "*.sub.example.io",
     "example.com", "example.com:5000/library/prefix/image:latest"),
    ("foo.bar.io/ns1/ns2/ns3/ns4", "*.bar.io", "omg.bbq.com/roflmao",
     "omg.bbq.com/roflmao/ns1/ns2/ns3/ns4"),
    # a wildcard prefix without location: the reference as is
    ("abc.internal.registry.com/foo:bar", "*.internal.registry.com", "",
     "abc.internal.registry.com/foo:bar"),
    ("blah.foo.bar.com/omg:bbq", "*.com", "", "blah.foo.bar.com/omg:bbq"),
    ("alien.vs.predator.foobar.io:5000/omg", "*.foobar.io", "",
     "alien.vs.predator.foobar.io:5000/omg"),
    (f"alien.vs.predator.foobar.io:5000/foo{DIGEST}", "*.foobar.io", "",
     f"alien.vs.predator.foobar.io:5000/foo{DIGEST}"),
    ("alien.vs.predator.foobar.io:5000/omg:bbq", "*.foobar.io", "",
     "alien.vs.predator.foobar.io:5000/omg:bbq"),
]

REWRITE_FAILS = [
    # the result is not a valid, fully qualified reference
    ("example.com/foo/image:latest", "example.com/foo", "example.com/path/"),
    (f"example.com/foo{DIGEST}", "example.com/foo", "example.com"),
    ("example.com:5000/image:latest", "example.com", ""),
    ("example.com:5000/image:latest", "example.com", "example.com:5000"),
    ("example.com/foo/x:latest", "example.com/foo", "docker.io"),  # means docker.io/library/x
    # the prefix does not match
    ("example.com/foo/image:latest", "example.com//foo", "example.com/path"),
    ("example.com/image:latest", "image", "anotherimage"),
    ("example.com/foo/image:latest", "example.com/foo/", "example.com"),
    ("example.com/foo/image", "example.com/f", "example.com/foo"),
    ("example.com/foo:latest", "example.com/f", "example.com/foo"),
    (f"example.com/foo{DIGEST}", "example.com/f", "example.com/foo"),
    ("docker.io/library/image", "example.com", "example.com"),
    ("docker.io/library/image", "*.com", "example.com"),
    ("foo.docker.io/library/image", "*.example.com", "example.com/image"),
    ("foo.docker.io/library/image", "*.docker.com", "example.com/image"),
]


@pytest.mark.parametrize(("ref", "prefix", "location", "expected"), REWRITE_OK)
def test_rewrite(ref: str, prefix: str, location: str, expected: str) -> None:
    (primary,) = Registry(prefix, location).endpoints(ref)
    assert primary.reference == parse_reference(expected)
    assert (primary.location, primary.mirror, primary.insecure) == (location, False, False)


@pytest.mark.parametrize(("ref", "prefix", "location"), REWRITE_FAILS)
def test_rewrite_fails(ref: str, prefix: str, location: str) -> None:
    with pytest.raises((ConfigError, InvalidReference)) as err:
        Registry(prefix, location, source="r.conf").endpoints(ref)
    assert "\n" not in str(err.value)


def test_rewrite_error_names_the_file() -> None:
    c = conf('[[registry]]\nprefix = "example.com/foo"\nlocation = "example.com/path/"\n'
             '[[registry.mirror]]\nlocation = "mirror.example//x"\n', "where.conf")
    with pytest.raises(ConfigError, match=r'^where\.conf: .*"mirror\.example//x'):
        c.pull_sources("example.com/foo/image:1")


# ----------------------------------------------------------------------------------------------
# Pull sources (TestPullSourcesFromReference)

PULL_CASES = [
    # prefix, (digest pull locations, insecure), (tag pull locations, insecure)
    ("registry-a.com/foo",
     ["mirror-1.registry-a.com", "mirror-2.registry-a.com", "registry-a.com/bar"],
     [False, True, False],
     ["mirror-1.registry-a.com", "mirror-2.registry-a.com", "registry-a.com/bar"],
     [False, True, False]),
    ("registry-b.com/foo",  # mirror-by-digest-only
     ["mirror-1.registry-b.com", "mirror-2.registry-b.com", "registry-b.com/bar"],
     [False, False, False],
     ["registry-b.com/bar"], [False]),
    ("registry-a.com/baz",
     ["mirror-1.registry-a.com", "mirror-2.registry-a.com", "registry-a.com/bar"],
     [False, True, False],
     ["mirror-1.registry-a.com", "mirror-2.registry-a.com", "registry-a.com/bar"],
     [False, True, False]),
    ("registry-b.com/baz",  # every mirror digest-only
     ["mirror-1.registry-b.com", "mirror-2.registry-b.com", "registry-b.com/bar"],
     [False, False, False],
     ["registry-b.com/bar"], [False]),
    ("registry-c.com/baz",  # one digest-only mirror, one for everything
     ["mirror-1.registry-c.com", "mirror-2.registry-c.com", "registry-c.com/bar"],
     [False, False, False],
     ["mirror-1.registry-c.com", "registry-c.com/bar"], [False, False]),
    ("registry-d.com/baz",  # mirror-by-digest-only, nothing per mirror
     ["mirror-1.registry-d.com", "mirror-2.registry-d.com", "registry-d.com/bar"],
     [False, False, False],
     ["registry-d.com/bar"], [False]),
    ("registry-e.com/baz",  # every mirror tag-only
     ["registry-e.com/bar"], [False],
     ["mirror-1.registry-e.com", "mirror-2.registry-e.com", "registry-e.com/bar"],
     [False, False, False]),
    ("registry-f.com/baz",  # one tag-only mirror
     ["mirror-1.registry-f.com", "registry-f.com/bar"], [False, False],
     ["mirror-1.registry-f.com", "mirror-2.registry-f.com", "registry-f.com/bar"],
     [False, False, False]),
    ("registry-g.com/baz",  # digest-only, tag-only, unset, all
     ["mirror-1.registry-g.com", "mirror-3.registry-g.com", "mirror-4.registry-g.com",
      "registry-g.com/bar"], [False, False, False, False],
     ["mirror-2.registry-g.com", "mirror-3.registry-g.com", "mirror-4.registry-g.com",
      "registry-g.com/bar"], [False, False, False, False]),
]


@pytest.mark.parametrize(("prefix", "d_locs", "d_insecure", "t_locs", "t_insecure"),
                         PULL_CASES, ids=[c[0] for c in PULL_CASES])
def test_pull_sources(prefix: str, d_locs: list[str], d_insecure: list[bool],
                      t_locs: list[str], t_insecure: list[bool]) -> None:
    c = conf(PULL_SOURCES)
    assert len(c.registries) == 9
    for suffix, locs, insecure in ((DIGEST, d_locs, d_insecure), (":aaa", t_locs, t_insecure),
                                   (f":aaa{DIGEST}", d_locs, d_insecure)):
        ref = f"{prefix}/image{suffix}"
        reg = c.find(f"{prefix}/image")
        assert reg is not None and reg.prefix == prefix
        for endpoints in (reg.endpoints(ref), c.pull_sources(ref)):
            assert [e.location for e in endpoints] == locs
            assert [str(e.reference) for e in endpoints] == [f"{p}/image{suffix}" for p in locs]
            assert [e.insecure for e in endpoints] == insecure
            assert [e.mirror for e in endpoints] == [True] * (len(locs) - 1) + [False]


def test_pull_sources_without_a_matching_registry() -> None:
    (only,) = conf(MIRRORS).pull_sources("alpine")
    assert only.reference == parse_reference("docker.io/library/alpine:latest")
    assert (only.location, only.insecure, only.mirror) == ("docker.io/library/alpine",
                                                           False, False)


def test_pull_sources_look_up_the_name_not_the_tag() -> None:
    # As containers/image: the [[registry]] is chosen by repository name, so a prefix
    # with a tag is never used for a pull (find() with the full text does see it).
    c = conf('[[registry]]\nprefix = "example.com/foo:bar"\nlocation = "other.example/foo"\n'
             '[[registry]]\nlocation = "example.com"\ninsecure = true\n')
    (ep,) = c.pull_sources("example.com/foo:bar")
    assert str(ep.reference) == "example.com/foo:bar" and ep.insecure
    reg = c.find("example.com/foo:bar")
    assert reg is not None and reg.location == "other.example/foo"


def test_docker_hub_mirror() -> None:
    c = conf('[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n'
             '[[registry.mirror]]\nlocation = "mirror.gcr.io"\n'
             '[[registry.mirror]]\nlocation = "cache.local:5000/hub"\ninsecure = true\n')
    eps = c.pull_sources("alpine:3.19")
    assert [str(e.reference) for e in eps] == [
        "mirror.gcr.io/library/alpine:3.19",
        "cache.local:5000/hub/library/alpine:3.19",
        "docker.io/library/alpine:3.19",
    ]
    assert [e.insecure for e in eps] == [False, True, False]


# ----------------------------------------------------------------------------------------------
# Blocking


def test_blocked_registry_without_mirrors_refuses() -> None:
    c = conf(MIRRORS, "/etc/containers/registries.conf")
    with pytest.raises(RegistryBlocked) as err:
        c.pull_sources("blocked.registry.com/x/y:1")
    assert str(err.value) == ("blocked.registry.com/x/y:1: registry blocked.registry.com is "
                              "blocked in /etc/containers/registries.conf")


def test_blocked_source_with_mirror_pulls_only_from_the_mirror() -> None:
    # OpenShift's "never contact source": the primary is blocked, its mirror is not.
    c = conf('[[registry]]\nlocation = "quay.io/openshift"\nblocked = true\n'
             '[[registry.mirror]]\nlocation = "mirror.internal/openshift"\n')
    eps = c.pull_sources(f"quay.io/openshift/release{DIGEST}")
    assert [str(e.reference) for e in eps] == [f"mirror.internal/openshift/release{DIGEST}"]


def test_mirror_under_a_blocked_registry_is_skipped() -> None:
    mirrors = ('[[registry]]\nlocation = "example.com"\n'
               '[[registry.mirror]]\nlocation = "evil.example/cache"\n'
               '[[registry.mirror]]\nlocation = "good.example/cache"\n'
               '[[registry]]\nprefix = "*.example"\nblocked = true\n')
    eps = conf(mirrors).pull_sources("example.com/app:1")
    assert [str(e.reference) for e in eps] == ["example.com/app:1"]
    # the longest prefix decides: good.example has its own, unblocked [[registry]]
    eps = conf(mirrors + '[[registry]]\nlocation = "good.example"\n').pull_sources(
        "example.com/app:1")
    assert [str(e.reference) for e in eps] == ["good.example/cache/app:1", "example.com/app:1"]


def test_remapped_primary_is_blocked_by_its_physical_location() -> None:
    c = conf('[[registry]]\nprefix = "example.com"\nlocation = "internal.example"\n'
             '[[registry]]\nprefix = "*.example"\nblocked = true\n')
    with pytest.raises(RegistryBlocked) as err:
        c.pull_sources("example.com/app:1")
    assert str(err.value) == ("example.com/app:1 (pulled from internal.example/app:1): "
                              "registry *.example is blocked in test.conf")


# ----------------------------------------------------------------------------------------------
# V1 format (TestV1BackwardsCompatibility, TestMixingV1andV2)


def test_v1_is_converted() -> None:
    c = conf(V1_COMPAT)
    assert len(c.registries) == 4
    assert c.unqualified_search_registries == ("registry-a.com", "registry-c.com",
                                               "registry-d.com")
    reg = c.find("registry-b.com/bar/foo/barfoo:latest")
    assert reg is not None and reg.insecure and reg.blocked
    assert [(r.location, r.insecure, r.blocked) for r in c.registries] == [
        ("registry-a.com", True, False), ("registry-b.com", True, True),
        ("registry-d.com", True, False), ("registry-e.com", True, False)]


@pytest.mark.parametrize("kind", ["search", "block", "insecure"])
def test_v1_scheme_is_refused(kind: str) -> None:
    text = f'[registries.{kind}]\nregistries = ["registry-a.com", "http://schema-is-invalid.com"]'
    assert "URI schemes are not supported" in error_of(text)


def test_v1_empty_lists_still_mean_v1() -> None:
    c = conf("[registries.search]\nregistries = []\n[registries.block]\nregistries = []\n")
    assert c.registries == () and c.unqualified_search_registries == ()
    conf("[registries.search]\n")  # no "registries" key: neither v1 nor v2, but fine


@pytest.mark.parametrize("text", [
    """unqualified-search-registries = ["registry-a.com", "registry-c.com"]
[registries.search]
registries = ["registry-a.com", "registry-c.com"]
[registries.block]
registries = ["registry-b.com"]
[[registry]]
location = "registry-a.com"
""",
    """unqualified-search-registries = []
[registries.search]
registries = []
[registries.block]
registries = []
[registries.insecure]
registries = []
""",
    '[aliases]\n[registries.block]\nregistries = []\n',
    'registry = []\n[registries.block]\nregistries = []\n',
    'credential-helpers = []\n[registries.insecure]\nregistries = ["a.example"]\n',
])
def test_mixing_v1_and_v2(text: str) -> None:
    assert "mixing the v1 format" in error_of(text)


# ----------------------------------------------------------------------------------------------
# Validation: every error is one line that starts with the file


@pytest.mark.parametrize(("text", "expected"), [
    # TestInvalidV2Configs
    ('[[registry]]\nlocation = "registry.com"\n[[registry.mirror]]\nlocation = "m.com"\n'
     '[[registry]]\nlocation = "registry.com"\ninsecure = true\n',
     "registry 'registry.com' is defined multiple times with conflicting 'insecure' setting"),
    ('[[registry]]\nlocation = "registry.com"\n'
     '[[registry]]\nprefix = "registry.com/x"\nlocation = "registry.com"\nblocked = true\n',
     "registry 'registry.com' is defined multiple times with conflicting 'blocked' setting"),
    ('[[registry]]\nprefix = "*.example.com"\n[[registry]]\nprefix = "*.example.com"\n'
     'insecure = true\n', "registry '*.example.com' is defined multiple times"),
    ('unqualified-search-registries = ["registry-a.com"]\n[[registry]]\n'
     'location = "registry-b.com"\n[[registry.mirror]]\nlocation = "mirror-b.com"\n'
     '[[registry.mirror]]\n', "registry[0].mirror[1]: mirror location is unset"),
    ('[[registry]]\nlocation = "registry.com:5000"\nprefix = "http://schema-is-invalid.com"\n',
     "registry[0].prefix: invalid location 'http://schema-is-invalid.com': URI schemes"),
    ('[[registry]]\nlocation = "https://registry.com"\n', "invalid location"),
    ('[[registry]]\nlocation = "r.com"\n[[registry.mirror]]\nlocation = "http://m.com"\n',
     "registry[0].mirror[0].location: invalid location"),
    ('[[registry]]\ninsecure = true\n', "registry[0]: neither prefix nor location is set"),
    ('[[registry]]\nprefix = "example.com"\n',
     "location is unset and prefix 'example.com' is not in the format *.example.com"),
    ('[[registry]]\nprefix = "*.example.com/foo"\nlocation = "x.com"\n',
     "wildcard prefix '*.example.com/foo' must be in the format *.example.com"),
    ('[[registry]]\nprefix = "*.example.com:5000"\n', "wildcard prefix"),
    (f'[[registry]]\nprefix = "*.example.com{DIGEST}"\n', "wildcard prefix"),
    # TestInvalidMirrorConfig
    ('[[registry]]\nprefix = "registry-a.com/foo"\nlocation = "registry-a.com/bar"\n'
     'pull-from-mirror = "digest-only"\n[[registry.mirror]]\nlocation = "m.com"\n',
     "pull-from-mirror must not be set for a non-mirror registry 'registry-a.com/foo'"),
    ('[[registry]]\nprefix = "registry-a.com/foo"\nlocation = "registry-a.com/bar"\n'
     'mirror-by-digest-only = true\n[[registry.mirror]]\npull-from-mirror = "digest-only"\n'
     'location = "mirror-1.registry-a.com"\n',
     "cannot set mirror-by-digest-only for the registry ('registry-a.com/foo') and "
     "pull-from-mirror for the mirror ('mirror-1.registry-a.com') at the same time"),
    ('[[registry]]\nprefix = "registry-a.com/foo"\nlocation = "registry-a.com/bar"\n'
     '[[registry.mirror]]\npull-from-mirror = "notvalid"\nlocation = "mirror-1.registry-a.com"\n',
     "unsupported pull-from-mirror value 'notvalid' for mirror 'mirror-1.registry-a.com'"),
    ('[[registry]]\nlocation = "a.com"\n[[registry.mirror]]\nlocation = "m.com"\n'
     'pull-from-mirror = "All"\n', "unsupported pull-from-mirror value 'All'"),
    # unqualified-search-registries (TestFindUnqualifiedSearchRegistries)
    ('unqualified-search-registries = ["registry-a.com/namespace-is-forbidden"]\n',
     "unqualified-search-registries[0]: invalid entry 'registry-a.com/namespace-is-forbidden'"),
    ('unqualified-search-registries = ["ok.com", ""]\n', "unqualified-search-registries[1]"),
    ('unqualified-search-registries = ["-bad.com"]\n', "invalid entry '-bad.com'"),
    ('unqualified-search-registries = ["https://x.com"]\n', "URI schemes are not supported"),
    # short-name-mode (TestGetShortNameMode)
    ('short-name-mode = "invalid"\n', "invalid short-name-mode 'invalid'"),
    ('short-name-mode = "Enforcing"\n', "invalid short-name-mode"),
    # aliases (TestInvalidAliases and the short-name tables)
    ('[aliases]\nimage1 = "quay.io/repo/image:1"\nimage2 = "image:1"\n',
     "invalid alias 'quay.io/repo/image:1' for 'image1': must not contain a tag or digest; "
     "invalid alias 'image:1' for 'image2'"),
    ('[aliases]\n"docker.io/fedora" = "docker.io/fedora"\n',
     "invalid short name 'docker.io/fedora': must not contain a registry"),
    ('[aliases]\n"localhost/fedora" = "docker.io/fedora"\n', "must not contain a registry"),
    # wrong types
    ('[[registry]]\nlocation = "a.com"\ninsecure = "yes"\n',
     "registry[0].insecure: expected true or false, got string"),
    ('[[registry]]\nlocation = 5\n', "registry[0].location: expected a string, got integer"),
    ('[[registry]]\nlocation = "a.com"\nmirror-by-digest-only = 1\n',
     "registry[0].mirror-by-digest-only: expected true or false, got integer"),
    ('[registry]\nlocation = "a.com"\n',
     "registry: expected an array of tables ([[registry]]), got table"),
    ('registry = ["a.com"]\n', "registry[0]: expected a table, got string"),
    ('[[registry]]\nlocation = "a.com"\n[registry.mirror]\nlocation = "m.com"\n',
     "registry[0].mirror: expected an array of tables"),
    ('[[registry]]\nlocation = "a.com"\n[[registry.mirror]]\ninsecure = 1\nlocation = "m"\n',
     "registry[0].mirror[0].insecure: expected true or false, got integer"),
    ('unqualified-search-registries = "a.com"\n',
     "unqualified-search-registries: expected an array of strings, got string"),
    ('credential-helpers = ["a", 1]\n', "credential-helpers[1]: expected a string, got integer"),
    ("short-name-mode = true\n", "short-name-mode: expected a string, got boolean"),
    ("additional-layer-store-auth-helper = 1979-05-27\n",
     "additional-layer-store-auth-helper: expected a string, got date"),
    ('aliases = ["x"]\n', "aliases: expected a table, got array"),
    ("[aliases]\nx = 1\n", "aliases.x: expected a string, got integer"),
    ('registries = ["a.com"]\n', "registries: expected a table, got array"),
    ('[registries]\nsearch = ["a.com"]\n', "registries.search: expected a table, got array"),
    ('[registries.block]\nregistries = "a.com"\n',
     "registries.block.registries: expected an array of strings, got string"),
    # unknown keys (containers/image ignores them; a typo must not unblock a registry)
    ('[[registry]]\nlocation = "a.com"\nblcoked = true\n',
     "unknown key 'registry[0].blcoked'"),
    ('[[registry]]\nlocation = "a.com"\n[[registry.mirror]]\nlocation = "m.com"\n'
     'blocked = true\n', "unknown key 'registry[0].mirror[0].blocked'"),
    ('[[registry]]\nlocation = "a.com"\n[[registry.mirrors]]\nlocation = "m.com"\n',
     "unknown key 'registry[0].mirrors'"),
    ('unqualified-search-registry = ["a.com"]\n',
     "unknown key 'unqualified-search-registry'"),
    ('[registries.blocked]\nregistries = ["a.com"]\n', "unknown key 'registries.blocked'"),
    ('[registries.block]\nregistry = ["a.com"]\n', "unknown key 'registries.block.registry'"),
    ('[[registry]]\nlocation = "a.com"\nLocation = "b.com"\n',
     "'registry[0].location' and 'registry[0].Location' are the same key"),
    # not TOML
    ("invalid\n", "invalid TOML: "),
    ('[[registry]]\nlocation = "a.com"\nlocation = "b.com"\n', "invalid TOML: "),
])
def test_invalid(text: str, expected: str) -> None:
    message = error_of(text)
    assert expected in message, message


def test_error_names_the_drop_in(tmp_path: Path, system: Path) -> None:
    bad = {"zz-bad.conf": '[[registry]]\nlocation = "http://a.com"\n'}
    with pytest.raises(ConfigError) as err:
        load_with_dropins(tmp_path, system, "", bad)
    path = tmp_path / "home/.config/containers/registries.conf.d/zz-bad.conf"
    assert str(err.value).startswith(f"{path}: registry[0].location: invalid location")


def test_drop_ins_must_be_v2(tmp_path: Path, system: Path) -> None:
    with pytest.raises(ConfigError, match="a drop-in must be in the v2 format"):
        load_with_dropins(tmp_path, system, "",
                          {"v1.conf": '[registries.search]\nregistries = ["a.com"]\n'})
    # ... while the main file may be v1
    (tmp_path / "home/.config/containers/registries.conf.d/v1.conf").unlink()
    c = load_with_dropins(tmp_path, system, V1_COMPAT)
    assert c.find("registry-e.com/x") is not None


def test_file_problems(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "root"

    def message(path: Path) -> str:
        with pytest.raises(ConfigError) as err:
            RegistriesConf.load(path, env={}, home=home, root=root)
        assert "\n" not in str(err.value)
        assert str(err.value).startswith(f"{path}: ")
        return str(err.value)

    assert "No such file or directory" in message(tmp_path / "missing.conf")
    assert "Is a directory" in message(tmp_path)
    bad = tmp_path / "latin1.conf"
    bad.write_bytes(b'# caf\xe9\n')
    assert "not UTF-8" in message(bad)
    bom = write(tmp_path / "bom.conf", '\ufeff[[registry]]\nlocation = "a.com"\n')
    assert locations(RegistriesConf.load(bom, env={}, home=home, root=root)) == ["a.com"]
    with pytest.raises(ConfigError, match="empty"):
        RegistriesConf.load("", env={}, home=home, root=root)


# ----------------------------------------------------------------------------------------------
# Drop-ins (TestRegistriesConfDirectory, TestCredentialHelpers, aliases with drop-ins)


def test_drop_ins_override(tmp_path: Path, system: Path) -> None:
    c = load_with_dropins(tmp_path, system, BASE_FOR_DROPINS)
    d = system / "etc/containers/registries.conf.d"
    assert c.unqualified_search_registries == ("example-overwrite.com",)
    assert c.unqualified_search_registries_origin == str(d / "config-1.conf")
    assert locations(c) == [
        "subdomain-prefix-3-overridden-by-dropin-location.com",
        "subdomain-prefix-2-overridden-by-dropin-location.com",
        "subdomain-prefix-1-overridden-by-dropin-location.com",
        "1.com", "2.com", "base.com"]
    base = c.find("base.com/test:latest")
    assert base is not None
    assert base.blocked and not base.insecure  # replaced as a whole by config-2.conf
    assert base.source == str(d / "config-2.conf")
    assert c.credential_helpers == ("dropin-1", "dropin-2")
    assert c.source == str(tmp_path / "main.conf")
    assert c.sources == (str(tmp_path / "main.conf"), *(
        str(d / n) for n in ("config-1.conf", "config-2.conf", "config-3.conf",
                             "subdomain-override-1.conf", "subdomain-override-2.conf",
                             "subdomain-override-3.conf")))


def test_drop_in_search_registries(tmp_path: Path) -> None:
    root, home = tmp_path / "root", tmp_path / "home"
    main = write(tmp_path / "main.conf", UNQUALIFIED_SEARCH)
    dropins = root / "etc/containers/registries.conf.d"

    write(dropins / "no-usr.conf", "# unqualified-search-registries is not set\n")
    c = RegistriesConf.load(main, env={}, home=home, root=root)
    assert c.unqualified_search_registries == ("registry-a.com", "registry-c.com",
                                               "registry-d.com")
    assert c.unqualified_search_registries_origin == str(main)
    assert len(c.registries) == 4

    write(dropins / "usr.conf", "unqualified-search-registries = []\n")
    c = RegistriesConf.load(main, env={}, home=home, root=root)
    assert c.unqualified_search_registries == ()  # overridden with an empty array
    assert c.unqualified_search_registries_origin == str(dropins / "usr.conf")


@pytest.mark.parametrize(("main", "dropins", "helpers"), [
    (CRED_HELPERS, {}, ("helper-1", "helper-2")),
    ("", {}, (AUTH_FILE_HELPER,)),
    (CRED_HELPERS, {"empty.conf": "credential-helpers = []\n"}, (AUTH_FILE_HELPER,)),
    (CRED_HELPERS, {"a.conf": 'credential-helpers = ["x"]\n', "b.conf": ""}, ("x",)),
])
def test_credential_helpers(tmp_path: Path, main: str, dropins: dict[str, str],
                            helpers: tuple[str, ...]) -> None:
    root = tmp_path / "root"
    for name, text in dropins.items():
        write(root / "etc/containers/registries.conf.d" / name, text)
    path = write(tmp_path / "main.conf", main)
    assert RegistriesConf.load(path, env={}, home=tmp_path, root=root).credential_helpers \
        == helpers


def test_credential_helpers_from_containers_image_drop_ins(tmp_path: Path,
                                                           system: Path) -> None:
    c = load_with_dropins(tmp_path, system, CRED_HELPERS)
    assert c.credential_helpers == ("dropin-1", "dropin-2")


@pytest.mark.parametrize(("text", "mode"), [
    (ALIASES, "enforcing"),
    (DROPINS["config-2.conf"], "permissive"),
    ("", "permissive"),
    ('short-name-mode = ""\n', "permissive"),
    ('short-name-mode = "disabled"\n', "disabled"),
])
def test_short_name_mode(text: str, mode: str) -> None:
    assert conf(text).short_name_mode == mode


def test_aliases() -> None:
    c = conf(ALIASES, "aliases.conf")
    assert dict(c.aliases) == {
        "docker": Alias("docker.io/library/foo", "aliases.conf"),
        "quay/foo": Alias("quay.io/library/foo", "aliases.conf"),
        "example": Alias("example.com/library/foo", "aliases.conf"),
        "empty": Alias(None, "aliases.conf"),
    }


def test_aliases_with_drop_ins(tmp_path: Path, system: Path) -> None:
    c = load_with_dropins(tmp_path, system, ALIASES)
    d = system / "etc/containers/registries.conf.d"
    main = str(tmp_path / "main.conf")
    assert dict(c.aliases) == {
        "docker": Alias("docker.io/library/config1", str(d / "config-1.conf")),
        "quay/foo": Alias("quay.io/library/foo", main),
        "example": Alias(None, str(d / "config-2.conf")),  # erased by config-2
        "empty": Alias(None, main),
        "config1": Alias("config1.com/image", str(d / "config-1.conf")),
        "barz": Alias("barz.com/config2", str(d / "config-2.conf")),
        "config2": Alias("config2.com/image", str(d / "config-2.conf")),
        "added3": Alias("xxx.com/image", str(d / "config-2.conf")),
    }
    assert c.short_name_mode == "permissive"  # enforcing, overridden by config-2


@pytest.mark.parametrize(("value", "normalised"), [
    ("docker.io/library/fedora", "docker.io/library/fedora"),
    ("localhost/fedora", "localhost/fedora"),
    ("localhost:5000/fedora", "localhost:5000/fedora"),
    ("localhost:5000/namespace/fedora", "localhost:5000/namespace/fedora"),
    ("docker.io/fedora", "docker.io/library/fedora"),
    ("index.docker.io/fedora", "docker.io/library/fedora"),
    ("Example.com/fedora", "Example.com/fedora"),
    ("docker.io/library/fedora:latest", None),
    (f"docker.io/library/fedora@sha256:{A64}", None),
    ("fedora", None),
    ("fedora:latest", None),
    ("library/fedora", None),
    ("library/fedora:latest", None),
    ("$$4455%%", None),
    ("docker://foo", None),
    ("docker-archive://foo", None),
    (" ", None),
    ("example.com/Fedora", None),
    ("example.com//fedora", None),
    ("example.com/" + "a" * 250, None),
])
def test_alias_values(value: str, normalised: str | None) -> None:
    text = f"[aliases]\nname = {value!r}\n".replace("'", '"')
    if normalised is None:
        assert "invalid alias" in error_of(text)
    else:
        assert conf(text).aliases["name"].value == normalised


@pytest.mark.parametrize(("name", "valid"), [
    ("library/fedora", True),
    ("fedora", True),
    ("1234567489", True),
    ("foo_bar/baz--qux", True),
    ("docker.io/library/fedora:latest", False),
    (f"docker.io/library/fedora@sha256:{A64}", False),
    ("fedora:latest", False),
    ("library/fedora:latest", False),
    ("$$4455%%", False),
    ("docker://foo", False),
    ("docker-archive://foo", False),
    ("", False),
    ("Fedora", False),
    ("localhost/fedora", False),
    ("example.com:5000/fedora", False),
])
def test_alias_names(name: str, valid: bool) -> None:
    text = f'[aliases]\n"{name}" = "example.com/x"\n'
    if valid:
        assert conf(text).aliases[name].value == "example.com/x"
    else:
        assert f"invalid short name {name!r}" in error_of(text)


def test_alias_check_is_not_exponential() -> None:
    hostile = "a" * 5000 + "!"
    assert "invalid short name" in error_of(f'[aliases]\n"{hostile}" = "example.com/x"\n')
    assert "invalid alias" in error_of(f'[aliases]\nx = "example.com/{hostile}"\n')


# ----------------------------------------------------------------------------------------------
# Where files are found (TestNewConfigWrapper and the drop-in directories)


class Tree:
    """A fake root and home under tmp_path."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "root"
        self.home = tmp_path / "home"
        self.system = self.root / "etc/containers/registries.conf"
        self.system_d = self.root / "etc/containers/registries.conf.d"
        self.user = self.home / ".config/containers/registries.conf"
        self.user_d = self.home / ".config/containers/registries.conf.d"

    def load(self, path: str | Path | None = None,
             env: dict[str, str] | None = None) -> RegistriesConf:
        return RegistriesConf.load(path, env=env or {}, home=self.home, root=self.root)


def reg(location: str) -> str:
    return f'[[registry]]\nlocation = "{location}"\n'


def test_nothing_anywhere_is_an_empty_config(tmp_path: Path) -> None:
    c = Tree(tmp_path).load()
    assert c == RegistriesConf() and c.source is None and c.sources == ()
    assert c.unqualified_search_registries_origin is None


def test_system_file_and_both_drop_in_directories(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system, reg("system.example"))
    write(t.system_d / "b.conf", reg("system-b.example"))
    write(t.system_d / "a.conf", reg("system-a.example"))
    write(t.user_d / "a.conf", reg("user-a.example"))
    c = t.load()
    assert c.source == str(t.system)
    assert c.sources == (str(t.system), str(t.system_d / "a.conf"),
                         str(t.system_d / "b.conf"), str(t.user_d / "a.conf"))
    assert locations(c) == ["system-a.example", "system-b.example", "system.example",
                            "user-a.example"]


def test_drop_ins_without_a_main_file(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system_d / "a.conf", reg("a.example"))
    c = t.load()
    assert c.source is None and locations(c) == ["a.example"]


def test_user_file_replaces_system_file_and_its_drop_ins(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system, reg("system.example"))
    write(t.system_d / "a.conf", reg("system-a.example"))
    write(t.user, reg("user.example"))
    write(t.user_d / "a.conf", reg("user-a.example"))
    c = t.load()
    assert c.sources == (str(t.user), str(t.user_d / "a.conf"))
    assert locations(c) == ["user-a.example", "user.example"]


@pytest.mark.parametrize("how", ["argument", "CONTAINERS_REGISTRIES_CONF",
                                 "REGISTRIES_CONFIG_PATH"])
def test_explicit_path_still_reads_both_drop_in_directories(tmp_path: Path, how: str) -> None:
    t = Tree(tmp_path)
    write(t.system, reg("system.example"))
    write(t.user, reg("user.example"))
    write(t.system_d / "a.conf", reg("system-a.example"))
    write(t.user_d / "a.conf", reg("user-a.example"))
    path = write(tmp_path / "explicit.conf", reg("explicit.example"))
    c = t.load(path) if how == "argument" else t.load(env={how: str(path)})
    assert c.source == str(path)
    assert locations(c) == ["explicit.example", "system-a.example", "user-a.example"]


def test_environment_precedence(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.user, reg("user.example"))
    one = write(tmp_path / "one.conf", reg("one.example"))
    two = write(tmp_path / "two.conf", reg("two.example"))
    both = {"CONTAINERS_REGISTRIES_CONF": str(one), "REGISTRIES_CONFIG_PATH": str(two)}
    assert t.load(env=both).source == str(one)
    assert t.load(str(two), env=both).source == str(two)  # the argument wins
    # set but empty: as if unset, and it hides REGISTRIES_CONFIG_PATH (as containers/image)
    assert t.load(env={**both, "CONTAINERS_REGISTRIES_CONF": ""}).source == str(t.user)
    assert t.load(env={"REGISTRIES_CONFIG_PATH": ""}).source == str(t.user)


def test_explicit_paths_must_exist_and_are_not_expanded(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.user, reg("user.example"))
    for path, env in ((tmp_path / "nope.conf", None),
                      (None, {"CONTAINERS_REGISTRIES_CONF": "$HOME/nope.conf"})):
        with pytest.raises(ConfigError) as err:
            t.load(path, env)
        assert "No such file or directory" in str(err.value)
    assert str(err.value).startswith("$HOME/nope.conf: ")


def test_home_comes_from_env(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.user, reg("user.example"))
    c = RegistriesConf.load(env={"HOME": str(t.home)}, root=t.root)
    assert c.source == str(t.user)


def test_drop_in_directory_listing(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system_d / "10-b.conf", reg("b.example"))
    write(t.system_d / "01-a.conf", reg("a.example"))
    write(t.system_d / "B.conf", reg("upper.example"))  # "B" < "a": byte order
    write(t.system_d / "ignored.toml", "not toml at all [")
    write(t.system_d / "ignored.conf.bak", "not toml at all [")
    write(t.system_d / "sub.conf/x.conf", "not toml at all [")  # directories are skipped
    write(t.system_d / "sub/x.conf", "not toml at all [")
    (t.system_d / "dangling.conf").symlink_to(tmp_path / "gone.conf")  # vanished: skipped
    target = write(tmp_path / "elsewhere.txt", reg("linked.example"))
    (t.system_d / "linked.conf").symlink_to(target)  # a symlinked file is read
    c = t.load()
    assert [os.path.basename(s) for s in c.sources] == [
        "01-a.conf", "10-b.conf", "B.conf", "linked.conf"]
    assert set(locations(c)) == {"a.example", "b.example", "upper.example", "linked.example"}


def test_later_drop_ins_win(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system, 'unqualified-search-registries = ["main.example"]\n'
          'short-name-mode = "enforcing"\n' + reg("same.example") + 'insecure = true\n'
          '[[registry]]\nprefix = "other.example"\nlocation = "o.example"\n')
    write(t.system_d / "1.conf", 'short-name-mode = ""\nunqualified-search-registries = '
          '["one.example"]\n[[registry]]\nlocation = "same.example"\nblocked = true\n')
    write(t.user_d / "1.conf", 'unqualified-search-registries = ["user.example"]\n'
          'additional-layer-store-auth-helper = "als"\n')
    write(t.user_d / "2.conf", 'additional-layer-store-auth-helper = ""\n')
    c = t.load()
    same = c.find("same.example/x")
    assert same is not None and same.blocked and not same.insecure
    assert c.find("other.example/x") is not None  # untouched prefixes stay
    assert c.unqualified_search_registries == ("user.example",)
    assert c.unqualified_search_registries_origin == str(t.user_d / "1.conf")
    assert c.short_name_mode == "enforcing"  # "" does not override
    assert c.additional_layer_store_auth_helper == "als"  # nor does ""


def test_symlinked_drop_in_directory_is_not_followed(tmp_path: Path) -> None:
    # containers/image walks the directory with WalkDir, which does not follow a symlink
    # at the root: such a registries.conf.d is silently ignored there, and here.
    t = Tree(tmp_path)
    real = tmp_path / "real.d"
    write(real / "a.conf", reg("a.example"))
    t.system_d.parent.mkdir(parents=True)
    t.system_d.symlink_to(real)
    assert t.load().registries == ()


def test_drop_in_directory_that_is_a_file_is_ignored(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    write(t.system_d, reg("a.example"))
    assert t.load().registries == ()


def test_drop_in_that_is_a_directory_symlink_is_an_error(tmp_path: Path) -> None:
    t = Tree(tmp_path)
    (tmp_path / "dir").mkdir()
    t.system_d.mkdir(parents=True)
    (t.system_d / "x.conf").symlink_to(tmp_path / "dir")
    with pytest.raises(ConfigError, match=r"x\.conf: cannot read: Is a directory"):
        t.load()


def test_a_prefix_of_only_slashes_never_matches() -> None:
    c = conf('[[registry]]\nprefix = "/"\nlocation = "a.example"\n')
    assert [r.prefix for r in c.registries] == [""]
    assert c.find("/x") is None and c.find("a.example/x") is None
