"""Fuzz ``auth.parse_www_authenticate``: a registry's ``WWW-Authenticate`` header.

The parser promises never to raise (malformed parts are skipped), so no exception at all is
allowed. Schemes and parameter names come out lower case and parameter values are strings.

    python fuzz/fuzz_www_authenticate.py fuzz/corpus/www_authenticate -max_total_time=60
"""

from __future__ import annotations

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.auth import Challenge, parse_www_authenticate


def TestOneInput(data: bytes) -> None:
    # urllib3 hands headers over as latin-1 decoded str; try UTF-8 too.
    for header in (data.decode("latin-1"), _fuzzutil.text(data)):
        challenges = parse_www_authenticate(header)
        for challenge in challenges:
            assert isinstance(challenge, Challenge)
            assert challenge.scheme and challenge.scheme == challenge.scheme.lower()
            for key, value in challenge.params.items():
                assert key and key == key.lower()
                assert isinstance(value, str)
            assert challenge.token68 is None or challenge.token68


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
