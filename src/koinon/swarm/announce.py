"""Short-lived DHT records by which peers find each other's progress (DESIGN §3).

Each peer keeps one record under ``<swarm>_peers`` (subkey: its member id), refreshed every ``ttl / 4`` and
expiring after ``ttl`` seconds: the round it works on, when it expects to finish (``eta``), the round it last
finished (``done``) and its θ and state hashes. Records only steer scheduling and state sync; nothing in them is
trusted for θ itself (a state download is checked against its hash). DHT values are last-writer-wins and
unsigned (HIVEMIND.md trap 10), so a record whose ``member`` field differs from its subkey is ignored.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("koinon.swarm")

ANNOUNCE_TTL = 20.0


class Announcer:
    """One record under ``<swarm>_<kind>``: ``peers`` for training peers (``round`` required), ``servers`` for
    ``koinon serve`` (koinon.serve; ``load`` required)."""

    def __init__(
        self, dht, swarm: str, member: str, ttl: float = ANNOUNCE_TTL, kind: str = "peers", required: str = "round"
    ) -> None:
        self.dht, self.key, self.member, self.ttl = dht, record_key(swarm, kind), member, ttl
        self.required = required
        self._record: dict = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._refresh_loop, daemon=True, name="koinon-announce").start()

    def announce(self, **info: object) -> None:
        """Update our record with ``info`` and publish it now."""
        with self._lock:
            self._record.update(info, member=self.member)
        self._publish()

    def _publish(self) -> None:
        from hivemind.utils import get_dht_time

        with self._lock:
            value = dict(self._record)
        if value:
            try:
                self.dht.store(self.key, value, get_dht_time() + self.ttl, subkey=self.member, return_future=True)
            except Exception as e:  # the next refresh retries
                logger.debug("announce failed: %r", e)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            self._publish()

    def stop(self) -> None:
        self._stop.set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True once the announcer is stopped (for loops that update the record)."""
        return self._stop.wait(seconds)

    def live_peers(self) -> dict[str, dict]:
        """Records of live peers (this one included), by member id. Malformed records are ignored."""
        return live_records(self.dht, self.key, self.required)


def record_key(swarm: str, kind: str) -> str:
    return f"{swarm}_{kind}"


def live_records(dht, key: str, required: str) -> dict[str, dict]:
    """The unexpired records under ``key`` whose ``member`` is their subkey and whose ``required`` field is an
    integer, by subkey (a reader that announces nothing itself, such as ``koinon ask``, calls this directly)."""
    try:
        found = dht.get(key, latest=True)
    except Exception:
        return {}
    out: dict[str, dict] = {}
    if found is None or not isinstance(found.value, dict):
        return out
    for subkey, item in found.value.items():
        value = getattr(item, "value", None)
        if isinstance(value, dict) and isinstance(value.get(required), int) and value.get("member") == subkey:
            out[str(subkey)] = value
    return out
