"""Fuzz what a registry or lookaside sends as signatures: the stored signature blob
(``sigsources._from_blob``), the API extension's signature list, simple-signing and cosign
payloads, OpenPGP messages (``verify_gpg``, with the inflation guard in front of Sequoia),
cosign signatures, and key material as a policy's ``keyData`` gives it.

The first byte picks the target (its value modulo 6), the rest is the target's input.
Allowed: :class:`~unlade.signature.SignatureInvalid` from checking a signature,
:class:`~unlade.errors.SignatureSourceError` from decoding a blob or list, ValueError (the
documented error) from loading keys.

    python fuzz/fuzz_signature.py fuzz/corpus/signature -max_total_time=60
"""

from __future__ import annotations

import contextlib
import functools

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import SignatureSourceError
    from unlade.signature import (
        COSIGN_TYPE,
        SIMPLE_SIGNING_TYPE,
        GpgKeys,
        SignatureInvalid,
        load_gpg_keys,
        load_public_keys,
        parse_payload,
        verify_cosign,
        verify_gpg,
    )
    from unlade.sigsources import SigstoreSignature, _from_blob, _parse_signature_list

KEYS = _fuzzutil.FUZZ_DIR / "keys"


@functools.cache
def _gpg_keys() -> GpgKeys:
    return load_gpg_keys((KEYS / "gpg-public.asc").read_bytes(), "fixture")


@functools.cache
def _cosign_keys() -> list[object]:
    return load_public_keys((KEYS / "cosign-public.pem").read_bytes(), "fixture")


def _payloads(data: bytes) -> None:
    for kind in (SIMPLE_SIGNING_TYPE, COSIGN_TYPE):
        try:
            payload = parse_payload(data, kind)
        except SignatureInvalid:
            continue
        assert payload.type == kind
        assert isinstance(payload.docker_reference, str)


def _gpg(data: bytes) -> None:
    try:
        payload, signer = verify_gpg(data, _gpg_keys())
    except SignatureInvalid:
        return
    assert signer in _gpg_keys().fingerprints
    _payloads(payload)


def _blob(data: bytes) -> None:
    try:
        found = _from_blob(data, "fuzz")
    except SignatureSourceError:
        return
    if isinstance(found, SigstoreSignature):
        try:
            verify_cosign(found.payload, found.signature, _cosign_keys())
        except SignatureInvalid:
            return
        _payloads(found.payload)
    else:
        _gpg(found)


def _list(data: bytes) -> None:
    try:
        blobs = _parse_signature_list(data, "fuzz", 4)
    except SignatureSourceError:
        return
    assert len(blobs) <= 4
    for blob in blobs:
        _blob(blob)


def _keys(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        load_gpg_keys(data, "keyData")
    with contextlib.suppress(ValueError):
        load_public_keys(data, "keyData")


def _cosign_signature(data: bytes) -> None:
    with contextlib.suppress(SignatureInvalid):
        verify_cosign(b"{}", _fuzzutil.text(data), _cosign_keys())


TARGETS = (_payloads, _gpg, _blob, _list, _keys, _cosign_signature)


def TestOneInput(data: bytes) -> None:
    if data:
        TARGETS[data[0] % len(TARGETS)](data[1:])


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
