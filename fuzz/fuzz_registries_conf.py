"""Fuzz registries.conf (containers-registries.conf(5)): ``RegistriesConf.from_toml``, then
which ``[[registry]]`` a few images and each prefix's own images fall under, and where
they are pulled from (mirrors, rewritten locations, blocking).

Parsing may only raise :class:`~unlade.errors.ConfigError`; ``pull_sources`` only
ConfigError (a location that rewrites the reference into an invalid one) and
:class:`~unlade.errors.RegistryBlocked`.

    python fuzz/fuzz_registries_conf.py fuzz/corpus/registries_conf -max_total_time=60
"""

from __future__ import annotations

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__", "tomllib"):
    from unlade.errors import ConfigError, InvalidReference, RegistryBlocked
    from unlade.reference import parse_reference
    from unlade.registries_conf import RegistriesConf

IMAGES = [parse_reference(r) for r in (
    "docker.io/library/busybox:latest", "quay.io/fuzz/app@sha256:" + "0" * 64,
    "registry.example.com:5000/ns/repo:v1", "a.b.example.com/x/y:z@sha256:" + "1" * 64,
    "localhost/y:z",
)]


def _images(conf: RegistriesConf) -> list[object]:
    """The fixed images, and one under each prefix (when that makes a reference)."""
    out: list[object] = list(IMAGES)
    for reg in conf.registries[:8]:
        prefix = reg.prefix.removeprefix("*.")
        for text in (f"{prefix}/img:tag", f"x.{prefix}/img@sha256:{'2' * 64}", prefix):
            try:
                out.append(parse_reference(text))
            except InvalidReference:
                continue
    return out


def TestOneInput(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # the loader refuses other files as not UTF-8
    except UnicodeDecodeError:
        return
    try:
        conf = RegistriesConf.from_toml(text, "registries.conf")
    except ConfigError as err:
        assert "\n" not in str(err), "an error message must be one line"
        return
    for image in _images(conf):
        name = f"{image.registry}/{image.repository}"  # type: ignore[attr-defined]
        conf.find(name)
        conf.registry_for(image.registry)  # type: ignore[attr-defined]
        try:
            sources = conf.pull_sources(image)  # type: ignore[arg-type]
        except (ConfigError, RegistryBlocked) as err:
            assert "\n" not in str(err), "an error message must be one line"
            continue
        assert sources, "pull_sources gave no endpoint and no error"


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
