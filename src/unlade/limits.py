"""Limits on what one image may make unlade do: the guard against bombs.

A registry (or whoever controls it) chooses the manifest, the config and every layer.
Digests prove that what arrives is what the manifest names, not that it is reasonable:
1 MiB of gzip inflates to 1 GiB of zeros, a tar can hold a hundred million empty files,
a manifest can list ten thousand layers. Each limit below stops one such shape of abuse
early, with an error naming the limit, and each can be raised for the rare real image
that needs it (``[limits]`` in unlade.toml, ``--limit NAME=VALUE``, or
``Client(limits=Limits(...))``).

The defaults sit well above real images (the largest public layers hold a few GiB and a
few hundred thousand entries) and well below what hurts a machine.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Limits", "format_size", "parse_size"]

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB,
          "g": GiB, "gb": GiB, "gib": GiB, "t": TiB, "tb": TiB, "tib": TiB}
_SIZES = ("layer_size", "path_length", "xattr_size", "manifest_size", "config_size")


@dataclass(frozen=True)
class Limits:
    """What one image may contain. Sizes are bytes."""

    #: Uncompressed bytes of one layer (its whole tar stream, trailing bytes included).
    layer_size: int = 64 * GiB
    #: Entries (files, directories, links, …) in one layer.
    layer_entries: int = 5_000_000
    #: Bytes of one entry's path or link target (Linux's PATH_MAX is 4096).
    path_length: int = 4096
    #: Bytes of one extended attribute's value (Linux's own limit is 64 KiB).
    xattr_size: int = 64 * KiB
    #: Bytes of a manifest or index (containerd's limit; the registry read is capped too).
    manifest_size: int = 4 * MiB
    #: Bytes of an image config.
    config_size: int = 4 * MiB
    #: Layers in one image (overlayfs stacks at most 500 lower directories).
    layers: int = 500

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"limit {f.name} must be a positive integer, not {value!r}")

    def describe(self, name: str) -> str:
        """``NAME = VALUE`` as a person reads it, for error messages."""
        value = getattr(self, name)
        return f"{name} = {format_size(value) if name in _SIZES else f'{value:,}'}"

    def exceeded(self, what: str, name: str) -> str:
        """The message for ``what`` going over the limit ``name``."""
        return f"{what} (limit {self.describe(name)}; raise it with --limit {name}=...)"

    def replace(self, values: Mapping[str, Any], where: str = "limits") -> Limits:
        """These limits with ``values`` (NAME -> int or size text) on top; unknown names
        and bad values are one-line errors naming ``where``."""
        known = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, int] = {}
        for name, raw in values.items():
            key = name.replace("-", "_")
            if key not in known:
                raise ConfigError(f"{where}: unknown limit {name!r}; known: "
                                  f"{', '.join(sorted(known))}")
            changes[key] = parse_size(raw, f"{where}: {name}") if key in _SIZES \
                else _count(raw, f"{where}: {name}")
        return dataclasses.replace(self, **changes)

    def with_specs(self, specs: Iterable[str]) -> Limits:
        """These limits with command-line ``NAME=VALUE`` specs on top."""
        values: dict[str, str] = {}
        for spec in specs:
            name, sep, value = spec.partition("=")
            if not sep or not name.strip() or not value.strip():
                raise ConfigError(f"--limit {spec!r}: expected NAME=VALUE")
            values[name.strip()] = value.strip()
        return self.replace(values, "--limit")


DEFAULT_LIMITS = Limits()


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9][0-9_,]*\s*", value):
        n = int(value.replace("_", "").replace(",", ""))
    else:
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if n < 1:
        raise ConfigError(f"{where}: must be at least 1, not {n}")
    return n


def parse_size(value: Any, where: str = "size") -> int:
    """Bytes from an integer or a text like ``512MiB``, ``64 GiB``, ``4k`` (binary units:
    K/KB/KiB = 1024)."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a size, got a boolean")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        unit = _UNITS.get(m.group(2).lower()) if m else None
        if m is None or unit is None:
            raise ConfigError(f"{where}: expected a size such as 4096, 512MiB or 64GiB, "
                              f"got {value!r}")
        n = int(float(m.group(1)) * unit)
    else:
        raise ConfigError(f"{where}: expected a size, got {type(value).__name__}")
    if n < 1:
        raise ConfigError(f"{where}: must be at least 1 byte, not {n}")
    return n


def format_size(n: int) -> str:
    """``64 GiB``, ``4 MiB``, ``4096 bytes``: exact when a unit divides it."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} bytes"
