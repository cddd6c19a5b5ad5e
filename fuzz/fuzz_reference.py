"""Fuzz image references: ``parse_reference``, ``validate_digest`` and the scope helpers
that take a reference apart (policy scopes, registries.d scopes).

Only :class:`~unlade.errors.InvalidReference` / :class:`~unlade.errors.InvalidDigest` may
come out of a bad reference. A parsed reference must print as text that parses back to the
same reference, and must fit the limits the parser enforces.

    python fuzz/fuzz_reference.py fuzz/corpus/reference -max_total_time=60
"""

from __future__ import annotations

import contextlib

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import InvalidDigest, InvalidReference
    from unlade.policy import scope_matches, valid_scope
    from unlade.reference import parse_reference, validate_digest
    from unlade.sigsources import docker_scopes


def TestOneInput(data: bytes) -> None:
    text = _fuzzutil.text(data)
    with contextlib.suppress(InvalidDigest):
        validate_digest(text)
    scope_ok = valid_scope(text)
    try:
        ref = parse_reference(text)
    except InvalidReference as err:
        assert "\n" not in str(err), "an error message must be one line"
        return
    printed = str(ref)
    again = parse_reference(printed)
    assert again == ref, f"{text!r} -> {printed!r} -> {again}"
    assert len(f"{ref.registry}/{ref.repository}") <= 255
    assert ref.tag is not None or ref.digest is not None
    assert ref.object in (ref.digest, ref.tag)
    assert ref.api_host
    scopes = docker_scopes(ref)
    assert scopes[0].startswith(f"{ref.registry}/{ref.repository}")
    if scope_ok:
        scope_matches([text], ref)
    if ref.digest is not None:
        assert ref.with_digest(ref.digest) == ref


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
