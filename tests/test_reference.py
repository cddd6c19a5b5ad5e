"""The reference grammar must agree with docker on what names which image."""

from __future__ import annotations

import pytest

from unlade.errors import InvalidDigest, InvalidReference
from unlade.reference import Reference, parse_reference, validate_digest

D256 = "sha256:" + "a" * 64
D512 = "sha512:" + "0123456789abcdef" * 8

GOOD = [
    ("alpine", "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io/library/alpine:3.19"),
    ("library/alpine", "docker.io/library/alpine:latest"),
    ("user/repo", "docker.io/user/repo:latest"),
    ("user/repo:v1.2.3", "docker.io/user/repo:v1.2.3"),
    ("docker.io/alpine", "docker.io/library/alpine:latest"),
    ("docker.io/library/alpine:edge", "docker.io/library/alpine:edge"),
    ("index.docker.io/alpine", "docker.io/library/alpine:latest"),
    ("index.docker.io/user/repo:x", "docker.io/user/repo:x"),
    ("ghcr.io/owner/image:sha-abc", "ghcr.io/owner/image:sha-abc"),
    ("quay.io/org/deep/nested/path:1", "quay.io/org/deep/nested/path:1"),
    ("localhost/foo", "localhost/foo:latest"),
    ("localhost:5000/foo:bar", "localhost:5000/foo:bar"),
    ("127.0.0.1:5000/ns/repo", "127.0.0.1:5000/ns/repo:latest"),
    ("[::1]:5000/repo:tag", "[::1]:5000/repo:tag"),
    ("[::1]/repo", "[::1]/repo:latest"),
    ("[2001:db8::1]:443/a/b", "[2001:db8::1]:443/a/b:latest"),
    ("registry:5000/repo", "registry:5000/repo:latest"),
    ("Example.COM/repo", "Example.COM/repo:latest"),
    ("gcr.io/google-containers/pause:3.9", "gcr.io/google-containers/pause:3.9"),
    (f"alpine@{D256}", f"docker.io/library/alpine@{D256}"),
    (f"alpine:3.19@{D256}", f"docker.io/library/alpine:3.19@{D256}"),
    (f"localhost:5000/a/b:t@{D512}", f"localhost:5000/a/b:t@{D512}"),
    (f"ghcr.io/o/r@{D512}", f"ghcr.io/o/r@{D512}"),
    ("a__b/c--d/e.f_g", "docker.io/a__b/c--d/e.f_g:latest"),
    ("a---b", "docker.io/library/a---b:latest"),
    ("repo:Tag_With.UPPER-and_1", "docker.io/library/repo:Tag_With.UPPER-and_1"),
    ("repo:_", "docker.io/library/repo:_"),
    ("repo:" + "t" * 128, "docker.io/library/repo:" + "t" * 128),
    # docker's own quirk: a lone "host:port" is a name and a tag.
    ("localhost:5000", "docker.io/library/localhost:5000"),
    ("docker.io", "docker.io/library/docker.io:latest"),
    ("a" * 100 + "/" + "b" * 100, "docker.io/" + "a" * 100 + "/" + "b" * 100 + ":latest"),
]

BAD = [
    ("", "empty reference"),
    ("Foo/bar", 'repository name must be lowercase: "Foo"'),
    ("ubuntu/Bionic", 'lowercase: "Bionic"'),
    ("ghcr.io/Owner/x", 'lowercase: "Owner"'),
    (":tag", "missing repository name"),
    ("a//b", 'empty path component in "a//b"'),
    ("foo/", 'empty path component in "foo/"'),
    ("ghcr.io/", 'empty path component in ""'),
    ("repo:ta+g", 'invalid tag "ta+g"'),
    ("repo:", 'invalid tag ""'),
    ("repo:-x", 'invalid tag "-x"'),
    ("repo:.x", 'invalid tag ".x"'),
    ("repo:" + "t" * 129, 'invalid tag "' + "t" * 129 + '"'),
    ("repo:tæg", 'invalid tag "tæg"'),
    ("repo@sha256:" + "g" * 64, "invalid digest"),
    ("repo@sha256:" + "a" * 63, "must be 64 hex digits, not 63"),
    ("repo@sha256:" + "A" * 64, "lowercase hex"),
    ("repo@sha512:" + "a" * 64, "must be 128 hex digits, not 64"),
    ("repo@md5:" + "a" * 32, 'unsupported algorithm "md5"'),
    ("repo@sha256+b64:" + "a" * 64, 'unsupported algorithm "sha256+b64"'),
    ("repo@" + "a" * 64, "missing algorithm prefix"),
    ("repo@", 'missing digest after "@"'),
    (f"repo@{D256}@{D256}", "invalid digest"),
    ("http://registry/repo", 'scheme "http://"'),
    ("https://ghcr.io/o/r", 'scheme "https://"'),
    ("al pine", "whitespace"),
    (" alpine", "whitespace"),
    ("alpine\n", "whitespace"),
    ("localhost:abc/repo", 'invalid registry host "localhost:abc": bad port "abc"'),
    ("host.io:/repo", 'bad port ""'),
    ("host.io:70000/repo", 'bad port "70000"'),
    ("-bad.io/repo", 'invalid registry host "-bad.io"'),
    ("bad_host.io/repo", 'bad host name "bad_host.io"'),
    ("::1/repo", "IPv6 address must be in brackets"),
    ("[::1/repo", 'invalid registry host "[::1"'),
    ("[zz::1]:5000/repo", 'invalid registry host "[zz::1]:5000"'),
    ("[1:2:3:4:5:6:7:8:9]/repo", "bad IPv6 address"),
    ("[::1]:x/repo", 'bad port "x"'),
    ("a..b", 'invalid path component "a..b"'),
    ("a_-b/c", 'invalid path component "a_-b"'),
    ("_a", 'invalid path component "_a"'),
    ("a___b", 'invalid path component "a___b"'),
    ("a" * 64, "64-hex identifier"),
    ("a" * 250, "more than 255"),
    ("ghcr.io/" + "/".join(["abcdefgh"] * 30), "more than 255"),
    ("repo:tag:again", 'invalid path component "repo:tag"'),
]


@pytest.mark.parametrize(("text", "canonical"), GOOD)
def test_good_references_normalise(text: str, canonical: str) -> None:
    ref = parse_reference(text)
    assert str(ref) == canonical
    # The canonical form is a fixed point.
    assert parse_reference(canonical) == ref


@pytest.mark.parametrize(("text", "fragment"), BAD)
def test_bad_references_name_the_bad_part(text: str, fragment: str) -> None:
    with pytest.raises(InvalidReference) as exc:
        parse_reference(text)
    message = str(exc.value)
    assert fragment in message
    assert "\n" not in message


def test_uppercase_message_matches_docker_wording() -> None:
    with pytest.raises(InvalidReference, match=r'^invalid reference "Foo/bar": repository name'):
        parse_reference("Foo/bar")


def test_fields() -> None:
    ref = parse_reference(f"localhost:5000/a/b:t@{D256}")
    assert ref == Reference("localhost:5000", "a/b", "t", D256)
    assert ref.api_host == "localhost:5000"
    assert ref.object == D256


def test_docker_hub_api_host_and_default_tag() -> None:
    ref = parse_reference("alpine")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        "docker.io",
        "library/alpine",
        "latest",
        None,
    )
    assert ref.api_host == "registry-1.docker.io"
    assert ref.object == "latest"


def test_digest_only_has_no_tag() -> None:
    ref = parse_reference(f"alpine@{D256}")
    assert ref.tag is None
    assert ref.object == D256


def test_with_digest_keeps_tag_and_validates() -> None:
    ref = parse_reference("alpine:3")
    pinned = ref.with_digest(D512)
    assert str(pinned) == f"docker.io/library/alpine:3@{D512}"
    assert pinned.object == D512
    with pytest.raises(InvalidDigest):
        ref.with_digest("sha256:../../etc/passwd")


def test_hand_built_reference_is_checked() -> None:
    with pytest.raises(InvalidReference, match="no tag and no digest"):
        Reference("docker.io", "library/alpine", None, None)
    with pytest.raises(InvalidDigest):
        Reference("docker.io", "library/alpine", None, "sha256:xyz")


@pytest.mark.parametrize("digest", [D256, D512])
def test_validate_digest_accepts(digest: str) -> None:
    assert validate_digest(digest) == digest


@pytest.mark.parametrize(
    ("digest", "fragment"),
    [
        ("", "missing algorithm prefix"),
        ("sha256:", "lowercase hex"),
        ("sha256:" + "a" * 65, "not 65"),
        ("sha256:" + "A" * 64, "lowercase hex"),
        ("SHA256:" + "a" * 64, 'unsupported algorithm "SHA256"'),
        ("sha384:" + "a" * 96, 'unsupported algorithm "sha384"'),
        ("sha256:" + "a" * 63 + "/", "lowercase hex"),
        ("sha256:../" + "a" * 61, "lowercase hex"),
        ("sha256:" + "a" * 64 + "\n", "lowercase hex"),
        ("sha512:" + "a" * 127, "not 127"),
    ],
)
def test_validate_digest_rejects(digest: str, fragment: str) -> None:
    with pytest.raises(InvalidDigest) as exc:
        validate_digest(digest)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)
