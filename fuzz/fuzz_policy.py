"""Fuzz signature policies: ``Policy.from_bytes`` (containers-policy.json), then the scope
lookup and a full evaluation of a few images against real signatures.

Key files are not read from disk: ``keyPath``/``keyPaths`` named ``fuzz.gpg`` or
``fuzz.pem`` (anywhere) give the harness' fixed keys (fuzz/keys/), any other path does not
exist. Parsing may only raise :class:`~unlade.errors.PolicyError`; evaluation only gives a
verdict, whose ``raise_if_rejected`` may only raise :class:`~unlade.errors.PolicyRejected`.

    python fuzz/fuzz_policy.py fuzz/corpus/policy -max_total_time=60
"""

from __future__ import annotations

import errno
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import PolicyError, PolicyRejected
    from unlade.policy import Policy
    from unlade.reference import parse_reference

KEYS = _fuzzutil.FUZZ_DIR / "keys"
IMAGES = [parse_reference(r) for r in (
    "docker.io/library/busybox:latest", "quay.io/fuzz/app@sha256:" + "0" * 64,
    "registry.example:5000/ns/repo:v1", "[::1]:5000/x/y:z", "localhost/a",
)]


@functools.cache
def _file(name: str) -> bytes:
    return (KEYS / name).read_bytes()


def _read(path: str) -> bytes:
    name = path.rsplit("/", 1)[-1]
    if name == "fuzz.gpg":
        return _file("gpg-public.asc")
    if name == "fuzz.pem":
        return _file("cosign-public.pem")
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


@dataclass(frozen=True)
class _Sigstore:
    payload: bytes
    signature: str


class _Source:
    """The fixture signatures: a simple signature and a sigstore one, both by the fixture
    keys, for busybox:latest and the fixture manifest."""

    def simple_signatures(self) -> list[bytes]:
        return [_file("simple-signature.gpg")]

    def sigstore_signatures(self) -> list[_Sigstore]:
        sig = json.loads(_file("sigstore-signature.json"))
        return [_Sigstore(sig["payload"].encode(), sig["signature"])]


def TestOneInput(data: bytes) -> None:
    try:
        policy = Policy.from_bytes(data, "policy.json", Path("/nonexistent-policy-dir"), _read)
    except PolicyError as err:
        assert "\n" not in str(err), "an error message must be one line"
        return
    manifest = _file("manifest.json")
    for image in IMAGES:
        scope, _ = policy.requirements_for(image)
        assert isinstance(scope, str)
        verdict = policy.evaluate(image, manifest, _Source())
        json.dumps(verdict.to_json())
        try:
            verdict.raise_if_rejected()
        except PolicyRejected:
            assert not verdict.accepted


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
