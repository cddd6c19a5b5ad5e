"""What every harness shares: atheris is optional, so that ``tests/test_fuzz.py`` can replay
the committed corpus through ``TestOneInput`` without the fuzzing engine.

A harness imports unlade inside ``instrumented(__name__ == "__main__")``: only when it runs
as a fuzzer are the modules under test compiled with atheris' coverage callbacks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
_SRC = FUZZ_DIR.parent / "src"

if importlib.util.find_spec("unlade") is None and _SRC.is_dir():
    sys.path.insert(0, str(_SRC))

try:
    import atheris
except ImportError:  # replaying the corpus needs no engine
    atheris = None

_T = TypeVar("_T")


def instrumented(active: bool, *extra: str) -> contextlib.AbstractContextManager[Any]:
    """Instrument ``unlade`` (and the pure-Python packages ``extra``) for coverage as they
    are imported, when ``active`` and atheris is installed."""
    if active and atheris is not None:
        return atheris.instrument_imports(include=["unlade", *extra])
    return contextlib.nullcontext()


def main(test_one_input: Callable[[bytes], None]) -> None:
    """Run the libFuzzer engine on ``test_one_input`` with the command line's options."""
    if atheris is None:
        sys.exit("atheris is not installed: .venv/bin/pip install atheris")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


def text(data: bytes) -> str:
    """Any bytes as a str, losslessly (undecodable bytes become lone surrogates, which is
    what a hostile str can hold too)."""
    return data.decode("utf-8", "surrogateescape")


class Bytes:
    """A small stand-in for atheris' FuzzedDataProvider (which needs the engine): choices
    and sizes drawn from the front of the input, zeros once it is used up."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def int(self, limit: int) -> int:
        """An integer in ``range(limit)`` (one byte for small limits, two for larger)."""
        if limit <= 1:
            return 0
        value = self.byte() if limit <= 256 else self.byte() << 8 | self.byte()
        return value % limit

    def flag(self) -> bool:
        return bool(self.byte() & 1)

    def pick(self, choices: Sequence[_T]) -> _T:
        return choices[self.int(len(choices))]

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def chunk(self, limit: int) -> bytes:
        """A length byte, then that many bytes (at most ``limit``)."""
        return self.take(self.int(limit + 1))

    def rest(self) -> bytes:
        return self.take(self.left())
