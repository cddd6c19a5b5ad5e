"""Fuzz ocicrypt's key provider configuration (``OCICRYPT_KEYPROVIDER_CONFIG``):
``keyprovider.load_providers``, and ``parse_provider_spec``. Only
:class:`~unlade.errors.ConfigError` may come out of a bad file.

    python fuzz/fuzz_keyprovider.py fuzz/corpus/keyprovider -max_total_time=60
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import ConfigError
    from unlade.keyprovider import ProviderAttrs, load_providers, parse_provider_spec

_DIR = tempfile.mkdtemp(prefix="unlade-fuzz-keyprovider-",
                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
atexit.register(shutil.rmtree, _DIR, True)
_PATH = os.path.join(_DIR, "ocicrypt.conf")


def TestOneInput(data: bytes) -> None:
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        providers = load_providers(_PATH)
    except ConfigError as err:
        assert "\n" not in str(err), "an error message must be one line"
    else:
        for name, attrs in providers.items():
            assert isinstance(name, str) and isinstance(attrs, ProviderAttrs)
            assert (attrs.command is None) != (attrs.grpc is None)
            assert attrs.command is None or all(isinstance(a, str) for a in attrs.command)
            tls = attrs.grpc_tls
            assert tls is None or all(v is None or isinstance(v, str) for v in (
                tls.root_ca_file, tls.cert_file, tls.key_file, tls.server_name))
    try:
        name, params = parse_provider_spec(_fuzzutil.text(data[:200]))
    except ConfigError:
        return
    assert name and isinstance(params, bytes)


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
