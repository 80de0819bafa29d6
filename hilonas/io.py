"""Writing files so that a crash never leaves half of one: the one ``atomic_write`` every writer of hilonas uses.

The content goes to a temporary file in the destination's folder (same filesystem), is flushed and fsynced, then
renamed over the destination with ``os.replace``: readers see the old file or the new one, never a mix. The
temporary file is removed when anything fails. Reading goes through ``read_text``, which turns every way a user's text
file can be wrong into one HilonasError line. No torch import here.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Union

from hilonas.errors import HilonasError

__all__ = ["atomic_write", "replace_folder", "write_csv_rows", "read_text", "MAX_TEXT_BYTES", "DEFAULT_TABLES_DIR",
           "DEFAULT_RUNS_DIR"]

# Where hilonas keeps what it writes, unless told otherwise (relative to the working directory).
DEFAULT_TABLES_DIR = "latency_tables"
DEFAULT_RUNS_DIR = "runs"

Content = Union[str, bytes, Callable[[str], object]]
# Configs, spaces and logs are a few kilobytes; a bigger "text" file is a wrong path (a dataset, /dev/zero).
MAX_TEXT_BYTES = 64 * 1024 * 1024


def read_text(path: str | Path, what: str, *, error: type[HilonasError] = HilonasError) -> str:
    """The UTF-8 text of the file ``path``; the one reader of the text files a user hands hilonas.

    Args:
        path: the file.
        what: what the file is, in the user's words (``'config file'``, ``'space file'``), to start the message.
        error: the HilonasError subclass raised.

    Raises:
        HilonasError (``error``): one line naming ``what``, the path and the fix when the file is missing, a folder,
            unreadable (a name too long, a symlink loop, no permission), a named pipe nothing was written to (never
            a hang), larger than :data:`MAX_TEXT_BYTES` or not UTF-8 text (a binary file).
    """
    path = Path(path)
    try:
        # O_NONBLOCK only for the open: a named pipe with no writer would block open() forever (it then reads as
        # empty); reads block again as usual, so a pipe that is being written is read whole.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as fh:  # owns fd from here (a folder is refused here, fd closed)
            os.set_blocking(fd, True)
            data = fh.read(MAX_TEXT_BYTES + 1)
            pipe = stat.S_ISFIFO(os.fstat(fd).st_mode)
    except FileNotFoundError:
        raise error(f"{what} {path} cannot be read (it does not exist): check the path") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder: give the path of a file") from None
    except OSError as err:
        raise error(f"{what} {path} cannot be read ({err.strerror or err}): check the path and its "
                    "permissions") from None
    if pipe and not data:
        raise error(f"{what} {path} is a named pipe nothing was written to: give a regular file")
    if len(data) > MAX_TEXT_BYTES:
        raise error(f"{what} {path} is larger than {MAX_TEXT_BYTES // 2**20} MiB: give a text file of the right "
                    "kind (is this the right path?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{what} {path} is not UTF-8 text (byte {data[err.start]:#04x} at offset {err.start}): give "
                    "a text file (YAML, JSON), not a binary one") from None


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


def replace_folder(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target`` (same file system); an earlier ``target`` is set aside first
    and removed once the new one is in place, so a crash leaves one complete folder, never a mix."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


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
