"""Fuzz registries.d files (containers-registries.d(5)): ``RegistriesD.from_yaml``, then
which lookaside and attachment setting apply to a few images and the lookaside URLs made
from them.

Parsing may only raise :class:`~unlade.errors.ConfigError`; building a lookaside URL only
:class:`~unlade.errors.SignatureSourceError` (a base that is no URL).

    python fuzz/fuzz_registries_d.py fuzz/corpus/registries_d -max_total_time=60
"""

from __future__ import annotations

from urllib.parse import urlsplit

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__", "yaml"):
    from unlade.errors import ConfigError, SignatureSourceError
    from unlade.reference import parse_reference
    from unlade.sigsources import RegistriesD, lookaside_url

DIGEST = "sha256:" + "ab" * 32
IMAGES = [parse_reference(r) for r in (
    "docker.io/library/busybox:latest", "quay.io/fuzz/app@sha256:" + "0" * 64,
    "registry.example.com:5000/ns/repo:v1", "a.b.example.com/x", "localhost/y:z",
)]


def TestOneInput(data: bytes) -> None:
    try:
        config = RegistriesD.from_yaml(data, "fuzz.yaml")
    except ConfigError as err:
        assert "\n" not in str(err), "an error message must be one line"
        return
    for section in [*config.docker.values(), config.default_docker]:
        if section is not None:
            section.write_url()
    for image in IMAGES:
        found = config.config_for(image)
        if found.lookaside is None:
            continue
        try:
            url = lookaside_url(found.lookaside, image, DIGEST, 1)
        except SignatureSourceError:
            continue
        assert urlsplit(url).path.endswith("/signature-1"), url


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
