"""Starting and stopping a hivemind node bound to the member's key, with the traps of shared/HIVEMIND.md handled.

- The member's Ed25519 key file is the p2pd identity (trap 9): the libp2p peer id is the member id.
- SIGINT is saved and restored around starting the averager, which sets it to ignored (trap 8).
- Shutdown runs averager first, then DHT (trap 7); callers run each peer in its own process group.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Sequence

from koinon.errors import AddressInUse, ConfigError, PeerTimeout, SwarmError
from koinon.identity import Identity

logger = logging.getLogger("koinon.swarm")


def quiet_hivemind(verbose: bool) -> None:
    """hivemind logs every retry and traceback at WARNING; Koinon shows them only with -v."""
    level = "INFO" if verbose else "CRITICAL"
    os.environ.setdefault("HIVEMIND_LOGLEVEL", level)
    try:
        from hivemind.utils import logging as hm_logging

        hm_logging.get_logger("hivemind").setLevel(getattr(logging, level))
    except Exception:  # hivemind missing is reported elsewhere with a clear message
        pass


def _check_maddr(maddr: str, option: str) -> None:
    try:
        from hivemind.utils.multiaddr import Multiaddr

        Multiaddr(maddr)
    except Exception as e:
        raise ConfigError(
            f"{option} {maddr!r} is not a multiaddr; expected something like /ip4/192.0.2.1/tcp/31337/p2p/12D3KooW…"
        ) from e


def _tcp_port_in_use(maddr: str) -> bool:
    parts = maddr.strip("/").split("/")
    if len(parts) < 4 or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp" or parts[3] == "0":
        return False
    family = socket.AF_INET if parts[0] == "ip4" else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((parts[1], int(parts[3])))
        except OSError:
            return True
    return False


def start_dht(
    identity: Identity | None,
    listen: Sequence[str],
    initial_peers: Sequence[str],
    announce: Sequence[str] = (),
    connect_timeout: float = 15.0,
):
    """Start a ``hivemind.DHT`` whose libp2p identity is the member key (``None``: a fresh one, for a node that
    only announces or looks up, like ``koinon serve`` and ``koinon ask``). Raises a SwarmError with the fix."""
    import hivemind

    for maddr in listen:
        _check_maddr(maddr, "--listen")
        if _tcp_port_in_use(maddr):
            raise AddressInUse(f"listen address {maddr} is already in use; pick another port or use tcp/0")
    for maddr in initial_peers:
        _check_maddr(maddr, "--initial-peers")
    for maddr in announce:
        _check_maddr(maddr, "--announce")
    try:
        dht = hivemind.DHT(
            start=True,
            host_maddrs=list(listen),
            announce_maddrs=list(announce) or None,
            initial_peers=list(initial_peers),
            **(dict(identity_path=str(identity.path), check_if_identity_free=False) if identity else {}),
            await_ready=True,
        )
    except Exception as e:
        text = str(e)
        if initial_peers and ("initial" in text.lower() or "bootstrap" in text.lower() or "connect" in text.lower()):
            raise PeerTimeout(
                f"none of the initial peers answered ({', '.join(initial_peers)}); check the address, that the "
                "peer is running and that its port is reachable"
            ) from e
        if "address already in use" in text.lower():
            raise AddressInUse(f"a listen address is already in use ({', '.join(listen)}); pick another port") from e
        raise SwarmError(f"could not start the swarm node: {text.splitlines()[0] if text else type(e).__name__}") from e
    if identity is not None and dht.peer_id.to_base58() != identity.member_id:
        dht.shutdown()
        raise SwarmError("p2pd did not take the member key as its identity; is the key file readable?")
    if initial_peers:
        _wait_for_neighbours(dht, initial_peers, connect_timeout)
    return dht


def _wait_for_neighbours(dht, initial_peers: Sequence[str], timeout: float) -> None:
    """Fail clearly when --initial-peers were given but nobody could be reached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            peers = dht.run_coroutine(_list_peers)
        except Exception:
            peers = []
        if peers:
            return
        time.sleep(0.25)
    dht.shutdown()
    raise PeerTimeout(
        f"none of the initial peers answered within {timeout:.0f} s ({', '.join(initial_peers)}); check the "
        "address, that the peer is running and that its port is reachable"
    )


async def _list_peers(dht, node) -> list:
    return [p for p in await node.p2p.list_peers()]


def start_averager(averager_cls, *args, **kwargs):
    """Create an averager in the main thread, restoring the SIGINT handler it replaces (HIVEMIND.md trap 8)."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        return averager_cls(*args, **kwargs)
    finally:
        signal.signal(signal.SIGINT, previous)


def shutdown(averager, dht) -> None:
    """Averager first, then DHT: the reverse order races (HIVEMIND.md trap 7)."""
    for name, component in (("averager", averager), ("dht", dht)):
        if component is None:
            continue
        try:
            if component.is_alive():
                component.shutdown()
        except Exception as e:  # leaving must never raise: we are already on the way out
            logger.debug("shutting down %s: %r", name, e)
