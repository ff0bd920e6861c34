"""One writer per run or sweep: a lease in its storage directory.

A run or sweep that starts or resumes takes ``lease.json`` in its storage: who holds it (user,
host, process, command) and a heartbeat the holder renews every `HEARTBEAT_S` seconds while it
works; the holder removes it when it ends, however it ends. A second command on the same run or
sweep (a second ``--resume``, a driver that a Kubernetes Job retried) finds the lease and stops,
naming the holder, before it writes anything: two writers would interleave checkpoints, metrics,
Tune's state and the Optuna study.

A lease whose heartbeat is older than `STALE_AFTER_S` was left by a process that died without
removing it (killed, or its machine lost); ``--break-lease`` takes it over. A holder on this
machine whose process is gone is known to be dead, and its lease is taken over at once.

Object stores cannot create a file only where none exists, so taking a lease is a write followed
by a read-back: of two commands that start in the same instant, the one whose write lands last
keeps the lease and the other stops; the holder's heartbeat also notices a lease taken from it.
"""

from __future__ import annotations

import getpass
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

from raylsl.errors import StateError
from raylsl.storage import Storage, StorageError

LEASE = "lease.json"
HEARTBEAT_S = 30.0
"""How often the holder renews its lease."""
STALE_AFTER_S = 300.0
"""A lease not renewed for this long may be broken (``--break-lease``)."""


class Lease:
    """The lease this process holds on ``storage`` (use `take`), renewed by a background thread
    until `release`; a context manager that releases it on exit."""

    def __init__(self, storage: Storage, record: dict[str, Any]):
        self.storage = storage
        self.record = record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="raylsl-lease", daemon=True)

    @classmethod
    def take(cls, storage: Storage, break_stale: bool = False) -> "Lease":
        """Takes the lease on the run or sweep in ``storage`` and starts renewing it.

        Args:
            break_stale: take over a lease whose heartbeat is older than `STALE_AFTER_S`.

        Raises:
            StateError: another process holds the lease (named, with what to do).
        """
        held = _read(storage)
        if held is not None:
            _check_takeover(storage, held, break_stale)
        record = {"owner": f"{getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})",
                  "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                  "command": " ".join(["raylsl", *sys.argv[1:]]) if sys.argv else "raylsl",
                  "started": time.time(), "heartbeat": time.time()}
        storage.write_json(LEASE, record)
        won = _read(storage)
        if won is None or won.get("token") != record["token"]:  # another command wrote in between
            raise StateError(f"{storage.uri} was just taken by {(won or {}).get('owner', 'another process')}: "
                             f"one command at a time works on a run or sweep")
        lease = cls(storage, record)
        lease._thread.start()
        return lease

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Stops renewing and removes the lease, unless another process has taken it since."""
        self._stop.set()
        self._thread.join()
        held = _read(self.storage)
        if held is not None and held.get("token") == self.record["token"]:
            self.storage.delete(LEASE)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = _read(self.storage)
                if held is None or held.get("token") != self.record["token"]:
                    taker = (held or {}).get("owner", "someone who removed it")
                    print(f"raylsl: warning: the lease on {self.storage.uri} was taken by {taker}; this process "
                          f"is no longer its only writer: stop one of them", file=sys.stderr, flush=True)
                    return
                self.record["heartbeat"] = time.time()
                self.storage.write_json(LEASE, self.record)
            except StorageError:
                pass  # an outage: the run's own writes report it; the lease goes stale only if it lasts


def _read(storage: Storage) -> dict[str, Any] | None:
    """The lease record in ``storage``; None when there is none, or when it is unreadable (a
    holder killed while writing it holds nothing)."""
    if not storage.is_file(LEASE):
        return None
    try:
        record = storage.read_json(LEASE)
    except StateError:
        return None
    return record if isinstance(record, dict) else None


def _check_takeover(storage: Storage, held: dict[str, Any], break_stale: bool) -> None:
    """Returns when the lease ``held`` may be taken over; raises `StateError` naming its holder otherwise."""
    owner = held.get("owner", "an unknown process")
    if held.get("host") == socket.gethostname() and not _alive(held.get("pid")):
        print(f"raylsl: taking over the lease of {owner}, which is no longer running", file=sys.stderr, flush=True)
        return
    age = time.time() - float(held.get("heartbeat", 0))
    if age > STALE_AFTER_S:
        if break_stale:
            print(f"raylsl: breaking the stale lease of {owner} (last heartbeat {age / 60:.0f} min ago)",
                  file=sys.stderr, flush=True)
            return
        raise StateError(f"{storage.uri} is leased by {owner} (`{held.get('command', '?')}`), whose last heartbeat was "
                         f"{age / 60:.0f} min ago: if no process works on it any more, rerun with --break-lease")
    raise StateError(f"{storage.uri} is in use by {owner} (`{held.get('command', '?')}`, heartbeat {age:.0f} s ago): "
                     f"wait for it to end or stop it; a lease not renewed for {STALE_AFTER_S / 60:.0f} min can be "
                     f"broken with --break-lease")


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: assume it runs
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        pass
    return True
