"""Writing files so that a crash never leaves half of one: the one ``atomic_write`` every writer of hilonas uses.

The content goes to a temporary file in the destination's folder (same filesystem), is flushed and fsynced, then
renamed over the destination with ``os.replace``: readers see the old file or the new one, never a mix. The
temporary file is removed when anything fails. No torch import here.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Union

__all__ = ["atomic_write", "write_csv_rows", "DEFAULT_TABLES_DIR", "DEFAULT_RUNS_DIR"]

# Where hilonas keeps what it writes, unless told otherwise (relative to the working directory).
DEFAULT_TABLES_DIR = "latency_tables"
DEFAULT_RUNS_DIR = "runs"

Content = Union[str, bytes, Callable[[str], object]]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, content: Content, *, encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` atomically and return the path.

    Args:
        path: the destination; its folder must exist.
        content: text (written with ``encoding``), bytes, or a callable ``write(tmp_path)`` that writes the file
            itself (pandas ``to_csv``, safetensors ``save_file``, ...).
        encoding: encoding of text content.

    The file gets the permissions an ordinary ``open(path, 'w')`` would give (umask applied), not mkstemp's private
    ones: tables, exports and pages are data to share.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        if callable(content):
            os.close(fd)
            fd = -1
            content(tmp)
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        else:
            data = content.encode(encoding) if isinstance(content, str) else content
            with os.fdopen(fd, "wb") as fh:
                fd = -1
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd != -1:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def write_csv_rows(path: str | Path, rows: list[dict]) -> Path:
    """``rows`` (dicts with the same keys) as a CSV file, written atomically; the folder is created."""
    import csv

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else [])
            writer.writeheader()
            writer.writerows(rows)

    return atomic_write(path, write)
