"""An exclusive lock on a run directory, so that two training processes never share one.

``with RunLock(workdir, primary=jax.process_index() == 0): train(...)``. The lock is a
``flock(2)`` on ``WORKDIR/run.lock``; the file holds who took it (pid, host, start time) so that a
second process fails at once with :class:`RunLockedError` naming the holder. The kernel drops a
``flock`` when its process ends in any way (exit, exception, ``kill -9``), so a lock left by a
crashed run is free: the next process takes it over and logs whose it was. In a multi-host run
only the primary process (``primary=True``) takes the lock; the others hold nothing.

Caveat: ``flock`` is reliable on local file systems. On NFS, Linux emulates it with ``fcntl``
byte-range locks (NFSv4: held through a lease, released some seconds after a client crashes);
on file systems without lock support (some FUSE / object-store mounts) it may succeed for
everyone, so the lock is then no protection.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError"]

_LOG = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """The run directory is locked by another live process (or cannot be locked)."""


def _describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
        f"since {holder.get('started', '?')}"
    )


def _read_holder(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        holder = json.loads(text)
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """Exclusive, non-blocking lock on ``workdir`` (a context manager; also ``acquire`` /
    ``release``). ``primary=False`` makes it a no-op (non-primary hosts of a multi-host run).

    ``acquire`` raises :class:`RunLockedError` at once if another live process holds it;
    ``stale`` is then the holder record of a crashed previous run that was taken over (or None).
    """

    def __init__(self, workdir, *, primary: bool = True):
        self.path = os.path.join(os.path.abspath(os.fspath(workdir)), LOCK_FILE)
        self.primary = primary
        self.stale: dict | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        if not self.primary or self._fd is not None:
            return self
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise RunLockedError(f"cannot create the run lock {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"run directory {os.path.dirname(self.path)} is in use by {_describe(holder)} "
                f"(lock {self.path}); stop that run or use another workdir"
            ) from None
        except OSError as error:
            os.close(fd)
            raise RunLockedError(f"cannot lock {self.path}: {error.strerror}") from None
        previous = _read_holder(fd)
        if previous:  # released locks are emptied: a record left behind is a crashed run's
            self.stale = previous
            _LOG.warning("took over the stale run lock of %s", _describe(previous))
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Empty the record and drop the lock (the file stays: removing it would race)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
