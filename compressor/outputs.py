"""Output folders and files are written atomically: into a hidden temporary sibling, then renamed.

A run that fails (or is interrupted) leaves no half-written output, and an existing
folder is only replaced (with --overwrite) once the new one is complete, and only when
compressor wrote it: every output folder carries a small marker file, MARKER, and a
non-empty folder without one is never replaced. Folders that can never be an output
(the current folder, the home folder, a filesystem root, an input model, its parents,
a folder holding an input file) are refused before any work.

Temporary siblings are named ``.NAME.tmp-PID-XXXX`` / ``.NAME.old-PID-XXXX``; those
left by a run that was killed (its PID no longer runs on this host) are removed by the
next run writing the same output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import CompressorError

MARKER = ".compressor-output"
log = logging.getLogger("compressor")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _resolve(p: Path | str) -> Path:
    return Path(p).expanduser().resolve()


def _forbidden(final: Path) -> str | None:
    """Why ``final`` can never be an output folder, or None."""
    if final.parent == final:
        return "is a filesystem root"
    with contextlib.suppress(OSError):
        if _resolve(Path.cwd()).is_relative_to(final):
            return "is the current folder" if final == _resolve(Path.cwd()) else "holds the current folder"
    with contextlib.suppress(RuntimeError, KeyError, OSError):
        if _resolve(Path.home()).is_relative_to(final):
            return "is the home folder" if final == _resolve(Path.home()) else "holds the home folder"
    return None


def _check_inputs(final: Path, protect: Iterable[Path], inputs: Iterable[Path], kind: str) -> None:
    for p in protect:
        p = _resolve(p)
        if final == p or p.is_relative_to(final) or final.is_relative_to(p):
            raise CompressorError(f"output {kind} {final} overlaps the input model {p}; choose another --output")
    for p in inputs:
        p = _resolve(p)
        if final == p or p.is_relative_to(final):
            raise CompressorError(f"output {kind} {final} would replace the input {p}; choose another output")
        if p.is_dir() and final.is_relative_to(p):
            raise CompressorError(f"output {kind} {final} is inside the input folder {p}; choose another output")


def _check_parent(final: Path, kind: str) -> None:
    """The nearest existing ancestor is a folder we may write in."""
    anc = final.parent
    while not anc.exists():
        if anc.is_symlink():  # a dangling link
            raise CompressorError(f"output {kind} {final}: {anc} is a broken link")
        anc = anc.parent
    if not anc.is_dir():
        raise CompressorError(f"output {kind} {final}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise CompressorError(f"output {kind} {final}: no permission to write in {anc}")


def _read_marker(path: Path) -> dict:
    """A marker file's content, or {} when it is missing or not one."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_ours(folder: Path) -> bool:
    """True when ``folder`` carries the marker compressor writes into every output folder."""
    return _read_marker(folder / MARKER).get("tool") == "compressor"


def check_output(final: Path, overwrite: bool, protect: Iterable[Path] = (), inputs: Iterable[Path] = ()) -> None:
    """Fail before any work if writing the folder ``final`` would lose something.

    ``protect``: input model folders (the output may be neither inside nor around them);
    ``inputs``: other input files or folders (the output may not hold or replace them).
    """
    final = _resolve(final)
    why = _forbidden(final)
    if why:
        raise CompressorError(f"output folder {final} {why}; choose a new folder for --output")
    _check_inputs(final, protect, inputs, "folder")
    if final.exists() and not final.is_dir():
        raise CompressorError(f"output path {final} exists and is not a folder")
    _check_parent(final, "folder")
    if final.is_dir() and any(final.iterdir()):
        if not overwrite:
            raise CompressorError(f"output folder {final} is not empty; pass --overwrite to replace it")
        if not is_ours(final):
            raise CompressorError(f"output folder {final} was not written by compressor (it has no {MARKER} file); "
                                  "--overwrite only replaces compressor's own outputs: choose another --output")
        if not os.access(final.parent, os.W_OK | os.X_OK):
            raise CompressorError(f"output folder {final} cannot be replaced: no permission to write in {final.parent}")


def check_output_file(final: Path, protect: Iterable[Path] = (), inputs: Iterable[Path] = (),
                      option: str = "--json") -> None:
    """Fail before any work if the file ``final`` cannot or must not be written."""
    final = _resolve(final)
    if final.is_dir():
        raise CompressorError(f"{option} {final} is a folder; give a file name")
    if final.parent == final:
        raise CompressorError(f"{option} {final} is a filesystem root")
    _check_inputs(final, protect, inputs, "file")
    if final.exists() and not os.access(final, os.W_OK):
        raise CompressorError(f"{option} {final} exists and is not writable")
    _check_parent(final, "file")


# --- stale temporary siblings ------------------------------------------------------------

_TEMP = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _owner(tmp: Path) -> dict:
    # a .tmp- folder, or a .old- folder holding the old output
    return _read_marker(tmp / MARKER) or _read_marker(tmp / "x" / MARKER)


def clean_stale(final: Path) -> list[Path]:
    """Remove temporary siblings of ``final`` left by killed runs; returns the ones kept
    (another user's, another host's, a live process's, or not recognisably ours)."""
    final = _resolve(final)
    kept = []
    try:
        siblings = [p for p in final.parent.iterdir() if p.name.startswith(f".{final.name}.")]
    except OSError:
        return kept
    for p in siblings:
        m = _TEMP.match(p.name)
        if not m or m["name"] != final.name or not p.is_dir() or p.is_symlink():
            continue
        owner = _owner(p)
        ours = (owner.get("tool") == "compressor" and owner.get("pid") == int(m["pid"])
                and owner.get("host") == socket.gethostname() and p.stat().st_uid == os.getuid())
        if ours and not _alive(int(m["pid"])):
            if ".old-" in p.name and (p / "x").is_dir() and not final.exists():
                # killed between moving the old output aside and moving the new one in
                (p / "x").rename(final)
                log.warning("restored %s from %s, left by an interrupted run", final, p)
            shutil.rmtree(p, ignore_errors=True)
            if not p.exists():
                continue
        kept.append(p)
    if kept:
        log.warning("left alone (another run's, or not recognisably compressor's): %s", ", ".join(map(str, kept)))
    return sorted(kept)


def _marker(command: str | None) -> str:
    return json.dumps({"tool": "compressor", "command": command, "pid": os.getpid(), "host": socket.gethostname(),
                       "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n"


def _ordinary_permissions(root: Path) -> None:
    """Files 0666 and folders 0777 less the umask: some writers (safetensors, tempfile)
    create private files, but an output is an ordinary file like any the user saves."""
    umask = _umask()
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o777 & ~umask)
        for f in filenames:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                os.chmod(p, 0o666 & ~umask)


def _mkdtemp(final: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-{os.getpid()}-", dir=final.parent))


@contextlib.contextmanager
def atomic_output(final: Path, overwrite: bool, command: str | None = None,
                  protect: Iterable[Path] = (), inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``final`` (checked again first:
    the folder may have appeared meanwhile), on any failure or interruption it is removed."""
    final = _resolve(final)
    protect, inputs = list(protect), list(inputs)
    clean_stale(final)
    check_output(final, overwrite, protect, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _mkdtemp(final, "tmp")
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary folder
        (tmp / MARKER).write_text(_marker(command))
        yield tmp
        check_output(final, overwrite, protect, inputs)
        (tmp / MARKER).write_text(_marker(command))  # a nested writer may have removed it
        _ordinary_permissions(tmp)
        old = None
        if final.exists():
            old = _mkdtemp(final, "old")
            (old / MARKER).write_text(_marker(command))
            final.rename(old / "x")
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _clean_stale_files(path: Path, min_age_s: float = 600.0) -> None:
    """Remove ``.NAME.tmp-PID-*`` files of ours whose process is gone and that are old
    (a file has no room for a marker, so age stands in for the host check)."""
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            m = _TEMP.match(p.name)
            if not m or m["name"] != path.name or ".tmp-" not in p.name or p.is_symlink() or not p.is_file():
                continue
            st = p.stat()
            if st.st_uid == os.getuid() and time.time() - st.st_mtime > min_age_s and not _alive(int(m["pid"])):
                p.unlink()


def write_json_atomic(path: Path, data, indent: int | None = 2) -> None:
    """Write JSON to ``path`` through a temporary sibling and os.replace: readers see the
    old file or the new one, never half of one. The file gets the umask's permissions."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(data, indent=indent) + "\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
