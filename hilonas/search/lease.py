"""One driver per study: a lease the driver holds while it searches, released when it stops or dies.

- A SQLite study (``sqlite:///.../study.db``, the default): an OS lock (``fcntl.flock``) on ``<db>.<study>.lock``
  beside the database. The kernel releases it when its process dies (``kill -9`` included), so a resume right after a
  crash finds it free; while it is held no other driver of the study is alive (``exclusive``). The file names the
  holder (pid, host, since when) for the refusal message; it is left in place when released.
- Any other storage URL (PostgreSQL, MySQL): the study user attr ``driver_lease`` (holder and expiry), renewed every
  few seconds by the driver (:meth:`AttrLease.renew`); one not renewed for :data:`LEASE_SECONDS` has expired (its
  driver stopped) and the next driver takes it over. Clocks of the hosts are assumed to agree.

A second driver on the study refuses with one line naming the study, the holder, when its lease ends and the fix.
"""
from __future__ import annotations

import json
import os
import socket
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hilonas.errors import HilonasError

LEASE_SECONDS = 30.0  # an attr lease not renewed for this long has expired
LEASE_ATTR = "driver_lease"
_SETTLE_SECONDS = 0.5  # an attr lease is read back after this long: of two drivers writing at once, the last wins


def _holder() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "token": uuid.uuid4().hex, "since": time.time()}


def _clock(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def busy_message(name: str, holder: dict[str, Any], until: str) -> str:
    """The one line a second driver gets: the study, the holder, when its lease ends, the fix."""
    who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    since = f", since {_clock(holder['since'])}" if isinstance(holder.get("since"), (int, float)) else ""
    return (f"study {name!r} is being searched by another driver ({who}{since}; its lease {until}): wait for it to "
            f"finish or stop it (kill {holder.get('pid', 'PID')} on {holder.get('host', 'its host')}), then run "
            "the same command to continue; or search under another --study name")


def sqlite_path(storage_url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other URLs and in-memory SQLite)."""
    if not storage_url.startswith("sqlite:///"):
        return None
    path = storage_url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


class FileLease:
    """The OS lock beside a SQLite study (see the module docstring). Take it with :meth:`acquire`."""

    exclusive = True  # while held, no other driver of the study is alive

    def __init__(self, path: Path, fd: int, holder: dict[str, Any]) -> None:
        self.path, self._fd, self.holder = path, fd, holder

    @classmethod
    def acquire(cls, name: str, db: Path) -> FileLease:
        """Lock ``<db>.<name>.lock`` without waiting.

        Raises:
            HilonasError: another process holds it (one line naming it and the fix).
        """
        import fcntl

        path = db.with_name(f"{db.name}.{name}.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise HilonasError(f"study {name!r}: cannot open its lock file {path} ({err.strerror or err}): give a "
                               "writable --runs folder (or --storage)") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise HilonasError(busy_message(name, holder, "lasts while that process runs")) from None
        holder = _holder()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)  # one small write: informational, read by a refused driver
        return cls(path, fd, holder)

    def renew(self) -> bool:
        """Nothing to renew: the lock is held until :meth:`release` or the process's end. Always True."""
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder a lock file names ({} when it cannot be read); retried once, the holder may be writing it."""
    for attempt in range(2):
        try:
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        if attempt == 0:
            time.sleep(0.2)
    return {}


class AttrLease:
    """The lease as a study user attr, for storages other than SQLite files (see the module docstring)."""

    exclusive = False  # clocks and a read-back are all it rests on: recovery also asks the trials' heartbeats

    def __init__(self, study: Any, holder: dict[str, Any], seconds: float) -> None:
        self.study, self.holder, self.seconds = study, holder, seconds

    @classmethod
    def acquire(cls, name: str, study: Any, seconds: float = LEASE_SECONDS, settle: float = _SETTLE_SECONDS
                ) -> AttrLease:
        """Take the study's lease when it is free or expired; refuse (HilonasError, one line) when another live
        driver holds it, or won it writing at the same moment."""
        held = study.user_attrs.get(LEASE_ATTR) or {}
        if held.get("expires", 0) > time.time():
            raise HilonasError(busy_message(name, held, f"expires at {_clock(held['expires'])} unless renewed"))
        lease = cls(study, _holder(), seconds)
        lease._write()
        time.sleep(settle)
        now = study.user_attrs.get(LEASE_ATTR) or {}
        if now.get("token") != lease.holder["token"]:
            raise HilonasError(busy_message(name, now, f"expires at {_clock(now.get('expires', 0))} unless renewed"))
        return lease

    def _write(self, expires: float | None = None) -> None:
        expires = time.time() + self.seconds if expires is None else expires
        self.study.set_user_attr(LEASE_ATTR, {**self.holder, "expires": expires})

    def holds(self) -> bool:
        return (self.study.user_attrs.get(LEASE_ATTR) or {}).get("token") == self.holder["token"]

    def renew(self) -> bool:
        """Push the expiry on; False (and nothing written) when another driver took the lease over."""
        if not self.holds():
            return False
        self._write()
        return True

    def release(self) -> None:
        """Expire the lease now, if it is still this driver's."""
        if self.holds():
            self._write(expires=0.0)


Lease = FileLease | AttrLease


def acquire_file_lease(name: str, storage_url: str) -> FileLease | None:
    """The lock of a SQLite study (before its storage is opened); None for other storages (see :class:`AttrLease`,
    which needs the study)."""
    db = sqlite_path(storage_url)
    return FileLease.acquire(name, db) if db is not None else None
