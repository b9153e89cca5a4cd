"""Progress on stderr: a line per stage, bars for long loops. Off with --quiet
(progress=False), and off when stderr is not a terminal (logs, CI, a caller reading
our output): there a redrawn bar is noise, and a failed run must still print exactly
one `error:` line."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

# stages shorter than this get no closing line
_QUIET_BELOW_S = 2.0


def bar(iterable: Iterable | None = None, progress: bool = True, **kwargs) -> tqdm:
    """tqdm on stderr; None lets tqdm disable itself when stderr is not a TTY."""
    return tqdm(iterable, disable=None if progress else True, file=sys.stderr, **kwargs)


def _interactive() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


class StageTimer:
    """``with timer("capture"):`` times a stage (summed when a name repeats) and, with
    progress on, says on stderr when it starts and, if it took a while, how long."""

    def __init__(self, progress: bool = False) -> None:
        self.progress = progress and _interactive()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.progress:
            print(f"compressor: {name.replace('_', ' ')} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        self.seconds[name] = self.seconds.get(name, 0.0) + took
        if self.progress and took >= _QUIET_BELOW_S:
            print(f"compressor: {name.replace('_', ' ')} done in {took:.1f} s", file=sys.stderr, flush=True)
