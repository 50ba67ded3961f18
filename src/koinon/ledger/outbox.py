"""Append to a member's own feed from another process (the CLI) without ever forking it.

A feed must have exactly one writer: two processes appending ``seq n+1`` at once would sign two different events
with the same seq, which is an equivocation and gets the member banned. So:

- a running peer holds an exclusive ``flock`` on ``$HOME/peer.lock`` for its whole life, and drains
  ``$HOME/outbox/`` (:class:`Outbox`): each request file ``<name>.request`` (canonical CBOR ``{kind, body}``) is
  appended with the peer's own :meth:`LedgerNode.append_own` and answered with ``<name>.done`` (the event id,
  or an error text);
- :func:`submit` (the CLI) takes the lock itself when no peer holds it and appends directly to the store (no
  peer can start meanwhile), or else drops a request into the outbox and waits for the answer.

Files are written to a temporary name and renamed, so a reader never sees half a request.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from koinon.errors import KoinonError, LedgerError
from koinon.ledger import cbor

logger = logging.getLogger("koinon.ledger")

LOCK_NAME = "peer.lock"
OUTBOX = "outbox"


@contextlib.contextmanager
def exclusive(home: Path, wait: bool = False) -> Iterator[bool]:
    """Hold ``$HOME/peer.lock``; yields False (holding nothing) when another process has it and ``wait`` is
    False."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def submit(
    home: Path, kind: str, body: dict, append_direct: Callable[[str, dict], bytes], timeout: float = 30.0
) -> tuple[bytes, bool]:
    """Append ``(kind, body)`` to this home's feed: (event id, whether a running peer did it).

    ``append_direct(kind, body)`` is called (with the lock held) when no peer runs on this home."""
    home = Path(home)
    with exclusive(home) as mine:
        if mine:
            return append_direct(kind, body), False
    box = home / OUTBOX
    box.mkdir(exist_ok=True)
    name = uuid.uuid4().hex
    _write_atomic(box / f"{name}.request", cbor.encode({"kind": kind, "body": body}))
    done = box / f"{name}.done"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done.exists():
            answer = cbor.decode(done.read_bytes())
            done.unlink(missing_ok=True)
            if answer.get("error"):
                raise LedgerError(str(answer["error"]))
            return bytes(answer["id"]), True
        time.sleep(0.1)
    (box / f"{name}.request").unlink(missing_ok=True)
    raise LedgerError(
        f"the peer running on {home} did not take the {kind} event within {timeout:.0f} s; is it stuck? "
        "(nothing was appended)"
    )


class Outbox:
    """The running peer's side: append queued requests with ``append_own`` (call :meth:`drain` periodically)."""

    def __init__(self, home: Path, append_own: Callable[[str, dict], object]) -> None:
        self.box = Path(home) / OUTBOX
        self.append_own = append_own

    def drain(self) -> int:
        if not self.box.is_dir():
            return 0
        n = 0
        for request in sorted(self.box.glob("*.request")):
            answer: dict
            try:
                data = cbor.decode(request.read_bytes())
                event = self.append_own(str(data["kind"]), data["body"])
                answer = {"id": event.id}
                n += 1
            except (KoinonError, ValueError, KeyError, TypeError, OSError) as e:
                logger.warning("outbox request %s refused: %s", request.name, e)
                answer = {"error": str(e) or type(e).__name__}
            _write_atomic(request.with_suffix(".done"), cbor.encode(answer))
            request.unlink(missing_ok=True)
        return n


class HomeLock:
    """The running peer's hold on ``$HOME/peer.lock`` (for its whole life): one peer per home, and the CLI then
    goes through the outbox."""

    def __init__(self, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise LedgerError(
                f"another Koinon peer is already running on {home}; stop it first, or use another --home"
            ) from None

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
