"""Fuzz the tar reader alone (``tarstream.TarReader``): raw bytes as a layer's tar stream,
every entry's data read, under small limits (so that they are reached). Only
:class:`~unlade.errors.MalformedLayer`, :class:`~unlade.errors.TruncatedLayer` and
:class:`~unlade.errors.LayerLimitExceeded` may come out (``apply_layer`` would turn other
errors into MalformedLayer, hiding them; here they count).

    python fuzz/fuzz_tarstream.py fuzz/corpus/tarstream -max_total_time=60
"""

from __future__ import annotations

import io

import _fuzzutil

with _fuzzutil.instrumented(__name__ == "__main__"):
    from unlade.errors import LayerLimitExceeded, MalformedLayer, TruncatedLayer
    from unlade.limits import Limits
    from unlade.tarstream import Entry, TarReader

LIMITS = Limits(layer_entries=40, path_length=300, xattr_size=100)

KNOWN = set("0123456g")


class _Trickle(io.RawIOBase):
    """Hands the stream out in small, uneven reads, as a decompressor may."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.turn = data, 0, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.turn += 1
        step = (1, 7, 511, 512, 513, 4096)[self.turn % 6]
        out = self.data[self.pos : self.pos + min(step, n if n >= 0 else step)]
        self.pos += len(out)
        return out


def _read_all(reader: TarReader) -> int:
    count = 0
    for entry in reader:
        assert isinstance(entry, Entry)
        assert entry.type in KNOWN, entry.type
        assert 0 <= entry.mode <= 0o7777 and entry.size >= 0
        got = sum(len(piece) for piece in reader.data())
        assert got == (0 if entry.type in "123456" else entry.size)
        count += 1
    return count


def TestOneInput(data: bytes) -> None:
    counts = []
    for stream in (io.BytesIO(data), _Trickle(data)):
        try:
            counts.append(_read_all(TarReader(stream, LIMITS)))  # type: ignore[arg-type]
        except (MalformedLayer, TruncatedLayer, LayerLimitExceeded) as err:
            assert "\n" not in str(err), "an error message must be one line"
            counts.append(type(err).__name__)
    assert counts[0] == counts[1], f"read sizes change the outcome: {counts}"


if __name__ == "__main__":
    _fuzzutil.main(TestOneInput)
