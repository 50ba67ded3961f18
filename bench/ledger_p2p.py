"""Ledger replication for bench/ledger_bench.py: two ``LedgerNode``s over real hivemind P2P on loopback.

Peer A holds a ledger of N events in a ``LedgerStore`` file, peer B starts empty; both run
``koinon.ledger.p2p.LedgerService`` on a ``hivemind.DHT`` started by ``koinon.swarm.node.start_dht`` (listening on
/ip4/127.0.0.1/tcp/0, identity = the peer's member key file, check_if_identity_free=False). The clock runs from
B's ``LedgerService.start()`` until B's store holds all N events, or until B makes no progress for ``stall_s``.

A and B are observers, not members of the ledger's swarm (the ledger's authors are other keys), so neither
proposes nor cosigns a cut during the measurement: B's count grows only by replication.

:func:`backlog_repro` replays, without hivemind (``sync_with`` calling ``handle`` directly), the case that stalled with
an earlier ``node.py`` (a backlog by several authors whose feeds cite each other; fixed since): B must end up with
every event. See docs/benchmarks-ledger.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from koinon.identity import Identity
from koinon.ledger.event import Event
from koinon.ledger.node import LedgerNode
from koinon.ledger.p2p import LedgerService
from koinon.ledger.store import LedgerStore

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def clock_ms() -> int:
    return int(time.time() * 1000)


def p2pd_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "p2pd"], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def descends_from_me(pid: int) -> bool:
    """True if ``pid`` is a descendant of this process (other people's p2pd may run on the same machine)."""
    me = os.getpid()
    while pid and pid > 1:
        pid = _parent(pid) or 0
        if pid == me:
            return True
    return False


def hivemind_sockets() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("hivemind-*.sock"))


def remove_dead_sockets(paths: set[Path]) -> int:
    """Remove those of these Unix sockets nobody listens on (hivemind leaves them behind: HIVEMIND.md trap 12)."""
    removed = 0
    for path in paths:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(str(path))
                continue  # somebody listens: not ours to remove
            except OSError:
                pass
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


def fill_store(path: Path, wires: list[bytes]) -> LedgerStore:
    """A's store, filled outside the measurement. Signatures were made by the generator and are checked by the
    audit section; here only the store's other checks run."""
    store = LedgerStore(path)
    for wire in wires:
        store.append(Event.from_wire(wire), verify_signatures=False)
    return store


def _replicate(name: str, wires: list[bytes], dhts, identities, home: Path, timeout_s: float, stall_s: float) -> dict:
    store_a = fill_store(home / f"{name}-a.sqlite", wires)
    node_a = LedgerNode(store_a, identities[0], clock_ms)
    store_b = LedgerStore(home / f"{name}-b.sqlite")
    node_b = LedgerNode(store_b, identities[1], clock_ms)
    protocol = f"koinon/ledger/{name}"
    service_a = LedgerService(dhts[0], node_a, protocol)
    service_b = LedgerService(dhts[1], node_b, protocol)
    service_a.start()
    n = len(wires)
    held, timeline = 0, []
    try:
        start = time.perf_counter()
        service_b.start()
        last_change, last_held = start, 0
        while True:
            time.sleep(0.02)
            now = time.perf_counter()
            held = store_b.count()
            if held != last_held:
                last_change, last_held = now, held
                timeline.append((round(now - start, 3), held))
            if held >= n or now - last_change > stall_s or now - start > timeout_s:
                break
        elapsed = last_change - start  # when B got its last event: all N, or the last progress before a stall
    finally:
        service_b.stop()
        service_a.stop()
    rejects = {reason: count for per_peer in node_b.reject_reasons.values() for reason, count in per_peer.items()}
    store_a.close()
    store_b.close()
    complete = held >= n
    return {
        "events": n,
        "held": held,
        "complete": complete,
        "seconds": round(elapsed, 3),
        "events_per_s": round(n / elapsed, 1) if complete else None,
        "stalled_after_s": None if complete else round(elapsed, 3),
        "timeline": timeline[:: max(1, len(timeline) // 40)] + timeline[-1:],
        "rejects_at_b": rejects,
    }


def replicate_over_hivemind(name: str, wires: list[bytes], home: Path, timeout_s: float, stall_s: float) -> dict:
    """One scenario on a fresh pair of DHTs (started, then shut down, and their p2pd checked gone).

    Fresh DHTs each time: ``DHT.replicate_p2p`` caches one P2P replica per process, bound to the event loop of the
    first ``LedgerService`` that asked for it, so a second service on the same DHT fails to start ("Event loop is
    closed" in ``add_unary_handler``): see docs/benchmarks-ledger.md."""
    from koinon.swarm.node import start_dht

    home.mkdir(parents=True, exist_ok=True)
    identities = [Identity.create(home / "peer-a"), Identity.create(home / "peer-b")]
    before, sockets_before = p2pd_pids(), hivemind_sockets()
    dhts, mine = [], set()
    out: dict = {}
    try:
        started = time.perf_counter()
        dhts.append(start_dht(identities[0], [LOOPBACK], []))
        maddrs = [str(m) for m in dhts[0].get_visible_maddrs()]
        dhts.append(start_dht(identities[1], [LOOPBACK], maddrs))
        out["dht_start_s"] = round(time.perf_counter() - started, 2)
        mine = {pid for pid in p2pd_pids() - before if descends_from_me(pid)}
        out["p2pd_started"] = len(mine)
        out.update(_replicate(name, wires, dhts, identities, home, timeout_s, stall_s))
    finally:
        for dht in reversed(dhts):
            dht.shutdown()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and mine & p2pd_pids():
        time.sleep(0.1)
    out["p2pd_before"] = sorted(before)
    out["p2pd_after"] = sorted(p2pd_pids())
    out["p2pd_left_by_bench"] = sorted(mine & p2pd_pids())
    out["dead_sockets_removed"] = remove_dead_sockets(hivemind_sockets() - sockets_before)
    return out


def backlog_repro(wires: list[bytes], home: Path, syncs: int = 20) -> dict:
    """B (empty) pulls A's ledger through ``sync_with`` → ``handle`` directly, ``syncs`` times: what B holds after."""
    home.mkdir(parents=True, exist_ok=True)
    store_a = fill_store(home / "repro-a.sqlite", wires)
    node_a = LedgerNode(store_a, Identity.create(home / "repro-peer-a"), clock_ms)
    node_b = LedgerNode(LedgerStore(":memory:"), Identity.create(home / "repro-peer-b"), clock_ms)
    for _ in range(syncs):
        node_b.sync_with(node_a.me, lambda request: node_a.handle(node_b.me, request))
    rejects = {reason: count for per_peer in node_b.reject_reasons.values() for reason, count in per_peer.items()}
    out = {
        "events": len(wires),
        "syncs": syncs,
        "held": node_b.store.count(),
        "rejects_at_b": rejects,
        "b_rate_limits_a": node_b.is_rate_limited(node_a.me),
    }
    store_a.close()
    node_b.store.close()
    return out
