"""Pieces of a study shared by several processes with the same ``--out`` (``--workers``, or a second
command started beside the first): each piece is done by the process that takes its claim, a file
created exclusively that names the process; a claim whose process has ended is taken over, so a
killed study continues where it stopped. On this machine a process's end is seen at once; a claim of
another machine (a job of a cluster allocation that was preempted, say) counts as ended when its
holder has not refreshed it for ``STALE_S`` (a holder touches its claims every ``HEARTBEAT_S``)."""
from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

UNWRITTEN_S = 60.0  # a claim still without its holder after this long was never finished: free
HEARTBEAT_S = 30.0  # how often a holder refreshes its claims' modification times
STALE_S = 600.0  # another machine's claim not refreshed for this long: its holder has ended

_mine: set[Path] = set()  # the claims this process holds, refreshed by the heartbeat thread
_lock = threading.Lock()
_beat: threading.Thread | None = None


def _me() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _touched_within(path: Path, seconds: float) -> bool:
    """Whether ``path`` exists and was written or refreshed in the last ``seconds``."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False  # given back meanwhile


def holder_alive(path: Path) -> bool:
    """Whether ``path`` is a claim of a process that still runs (one on another machine counts as running)."""
    try:
        host, pid = path.read_text().split()
    except (OSError, ValueError):
        # being written (taken a moment ago), or left empty by a process killed while writing it
        return _touched_within(path, UNWRITTEN_S)
    if host != socket.gethostname():  # its process cannot be asked: its heartbeat tells
        return _touched_within(path, STALE_S)
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def take(path: Path) -> bool:
    """Claim ``path`` for this process: True when taken (also from an ended process), False when a
    running process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if holder_alive(path) or not _remove_ended(path):
                return False
            continue  # its process ended: the piece is free again
        with os.fdopen(fd, "w") as f:
            f.write(_me())
        _hold(path)
        return True
    return False


def _remove_ended(path: Path) -> bool:
    """Remove the claim of an ended process, one remover at a time (a ``.takeover`` file created
    exclusively), so two processes that both saw it ended cannot remove each other's new claim:
    True when it is gone, False when another process is taking it over or has taken it."""
    lock = path.with_name(path.name + ".takeover")
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        if lock.exists() and not _touched_within(lock, UNWRITTEN_S):
            lock.unlink(missing_ok=True)  # left by a remover killed in these few lines
        return False
    try:
        if holder_alive(path):
            return False  # taken over by another process between our look and our lock
        path.unlink(missing_ok=True)
        return True
    finally:
        lock.unlink(missing_ok=True)


def _hold(path: Path) -> None:
    """Keep ``path`` fresh for other machines until it is given back (one daemon thread per process)."""
    global _beat
    with _lock:
        _mine.add(path)
        if _beat is None or not _beat.is_alive():
            _beat = threading.Thread(target=_heartbeat, name="metaft-claims", daemon=True)
            _beat.start()


def _heartbeat() -> None:
    while True:
        time.sleep(HEARTBEAT_S)
        refresh()


def refresh() -> None:
    """Mark every claim this process holds as fresh (what the heartbeat does every ``HEARTBEAT_S``)."""
    with _lock:
        held_now = list(_mine)
    for p in held_now:
        try:
            os.utime(p)
        except OSError:
            pass  # given back meanwhile


def release(path: Path) -> None:
    """Give back a claim this process holds."""
    with _lock:
        _mine.discard(path)
    try:
        if path.read_text().strip() == _me():
            path.unlink()
    except OSError:
        pass


@contextmanager
def held(path: Path) -> Iterator[bool]:
    """``take`` for the length of a ``with`` block, given back at its end (or on an error)."""
    mine = take(path)
    try:
        yield mine
    finally:
        if mine:
            release(path)


def others(folder: Path) -> list[Path]:
    """The claims under ``folder`` held by other running processes."""
    held_by_others = []
    for p in folder.rglob("*.claim"):
        try:
            who = p.read_text().strip()
        except OSError:
            continue  # given back meanwhile
        if who != _me() and holder_alive(p):
            held_by_others.append(p)
    return held_by_others
