"""Fuzz ``unlade.toml``: ``UnladeConfig.from_toml``. Only
:class:`~unlade.errors.ConfigError` may come out of a bad file.

    python fuzz/fuzz_unlade_toml.py fuzz/corpus/unlade_toml -max_total_time=60
"""

from __future__ import annotations

from pathlib import Path

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__", "tomllib"):
    from unlade.config import UnladeConfig
    from unlade.errors import ConfigError
    from unlade.reference import parse_reference

IMAGE = parse_reference("registry.example/confidential/app:v1")


def TestOneInput(data: bytes) -> None:
    try:
        text = data.decode("utf-8")  # what UnladeConfig.from_file checks first
    except UnicodeDecodeError:
        return
    try:
        config = UnladeConfig.from_toml(text, "unlade.toml", Path("/nonexistent-config-dir"))
    except ConfigError as err:
        assert "\n" not in str(err), "an error message must be one line"
        return
    config.requires_encryption(IMAGE)
    config.plain_http_for("registry.example")


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
