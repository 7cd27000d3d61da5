"""Writing files so that a failure leaves nothing half-written and says so in one line.

Every writer of the project goes through here: a result table or view (:func:`atomic_write`), a
checkpoint or a model cache folder (:func:`replacing`). A full disk is the common failure, and the
libraries that write large files do not raise ``OSError`` for it: ``torch.save`` raises
``RuntimeError`` ("file write failed") and safetensors its own ``SafetensorError``
(:func:`write_failure` recognises all three), which used to give 21-35-line tracebacks and leave a
40 MB temporary folder filling the disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from pipeline.core.errors import PipelineError

HOST = socket.gethostname().split(".")[0]
_WRITE_WORDS = ("write", "space", "disk", "quota", "i/o", "storage")


def temp_name(path: Path) -> Path:
    """A sibling temp name that says which host and process own it (for :func:`clean_stale`)."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # make a rename durable (POSIX only)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[str]], None]) -> None:
    """Write ``path`` via a temp file in its directory, fsync, then ``os.replace``: on any
    failure (Ctrl-C too) the temp file is removed and the old file is untouched."""
    tmp = temp_name(path)
    try:
        with open(tmp, "x", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)



def write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of a whole text; a failed write is one line (the old file is intact)."""
    try:
        atomic_write(path, lambda fh: fh.write(text))
    except OSError as err:
        raise PipelineError(f"could not write {path}: {write_failure(err)} (the previous file is intact)") from err


def write_failure(err: BaseException) -> str | None:
    """The reason, in a few words, if ``err`` is a failed write (a full disk, a quota, an I/O
    error), from ``open``/``os`` (``OSError``), ``torch.save`` (``RuntimeError``) or safetensors
    (``SafetensorError``); None for any other error (a bug is not hidden as a write failure)."""
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if (isinstance(err, RuntimeError) or type(err).__name__ == "SafetensorError") and any(
            w in text.lower() for w in _WRITE_WORDS):
        return text
    return None


@contextlib.contextmanager
def replacing(target: Path, what: str, *, keeps: str = "nothing half-written is left") -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``target`` to fill; on leaving, it replaces
    ``target`` in one rename. On any failure (Ctrl-C too) the temporary folder is removed and
    ``target`` is untouched; a failed write becomes one line: ``could not write <what> <target>:
    <reason> (<keeps>; free space and run again)``."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.iterdir():  # on disk before the rename that makes it current
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(err)
        if reason is None:
            raise
        raise PipelineError(f"could not write {what} {target}: {reason} ({keeps}; free space and run again)") from err
