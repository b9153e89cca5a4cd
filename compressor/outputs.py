"""Output folders are written atomically: into a hidden temporary sibling, then renamed.

A run that fails leaves no half-written output, and an existing folder is only
replaced (with --overwrite) once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import CompressorError


def check_output(final: Path, overwrite: bool, protect: list[Path] = ()) -> None:
    """Fail before any work if writing ``final`` would lose something."""
    final = final.expanduser().resolve()
    for p in protect:
        p = Path(p).expanduser().resolve()
        if final == p or p.is_relative_to(final) or final.is_relative_to(p):
            raise CompressorError(f"output folder {final} overlaps the input model {p}; choose another --output")
    if final.exists() and not final.is_dir():
        raise CompressorError(f"output path {final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not overwrite:
        raise CompressorError(f"output folder {final} is not empty; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_output(final: Path, overwrite: bool) -> Iterator[Path]:
    final = final.expanduser().resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the output is an ordinary folder
    try:
        yield tmp
        check_output(final, overwrite)  # the folder may have appeared meanwhile
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            final.rename(old / "x")
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
