"""The ledger over hivemind: a libp2p request/response handler plus a background loop (DESIGN §3, §6).

Requests and responses are the canonical-CBOR messages of ``LedgerNode.handle``; they travel as libp2p *unary*
messages over the connections the DHT already holds (so relays and NAT traversal apply), through the daemon
client of a P2P instance replicated from the DHT's (hivemind 1.1.12's ``P2P._client``: pinned version).
The caller's peer id is authenticated by libp2p's handshake; Koinon's member id *is* that peer id.

The loop, every ``sync_interval`` seconds: anti-entropy with up to ``fanout`` random connected peers, then
``LedgerNode.tick`` (propose / cosign cuts). Nothing here raises into the caller; failures are logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections.abc import Callable

from koinon.ledger import cbor
from koinon.ledger.node import LedgerNode

logger = logging.getLogger("koinon.ledger")

CALL_TIMEOUT = 10.0
MAX_REQUEST = 1 << 16


class LedgerService:
    def __init__(
        self,
        dht,
        node: LedgerNode,
        protocol: str,
        sync_interval: float = 0.5,
        fanout: int = 3,
        theta: Callable[[], bytes | None] = lambda: None,
        outbox=None,
        handlers: dict[str, Callable[[bytes], bytes]] | None = None,
    ) -> None:
        self.dht, self.node, self.protocol = dht, node, protocol
        self.outbox = outbox  # koinon.ledger.outbox.Outbox: events the CLI asks this peer to append
        self.sync_interval, self.fanout, self.theta = sync_interval, fanout, theta
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="koinon-ledger")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._p2p = None
        self.kick = threading.Event()  # set to sync at once (e.g. after appending an event)
        self.handlers = dict(handlers or {})  # more request/response protocols served on the same connections

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the ledger service did not start")

    def stop(self) -> None:
        self._stop.set()
        self.kick.set()
        self._thread.join(timeout=10)

    # --- the background loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except Exception as e:
            logger.warning("ledger service stopped: %r", e)
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._p2p = await self.dht.replicate_p2p()
        await self._p2p._client.add_unary_handler(self.protocol, self._handle)
        for name, fn in self.handlers.items():
            await self._p2p._client.add_unary_handler(name, self._wrap(fn))
        self._ready.set()
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            try:
                if self.outbox is not None and await loop.run_in_executor(None, self.outbox.drain):
                    self.kick.set()  # push what the CLI asked for at once
                peers = [p.peer_id for p in await self._p2p.list_peers()]
                for peer in random.sample(peers, min(self.fanout, len(peers))):
                    call = self._caller(peer, loop)
                    await loop.run_in_executor(None, self.node.sync_with, peer.to_base58(), call)
                await loop.run_in_executor(None, lambda: self.node.tick(self.theta()))
            except Exception as e:  # a bug or a vanished daemon must not kill the peer
                logger.debug("ledger loop: %r", e)
            await loop.run_in_executor(None, self.kick.wait, self.sync_interval)
            self.kick.clear()
        for name in [self.protocol, *self.handlers]:
            try:
                await self._p2p._client.remove_unary_handler(name)
            except Exception:
                pass

    def _caller(self, peer, loop: asyncio.AbstractEventLoop) -> Callable[[bytes], bytes]:
        def call(request: bytes) -> bytes:
            future = asyncio.run_coroutine_threadsafe(
                self._p2p._client.call_unary_handler(peer, self.protocol, request), loop
            )
            return future.result(timeout=CALL_TIMEOUT)

        return call

    def call(self, peer: str, protocol: str, request: bytes, timeout: float = CALL_TIMEOUT) -> bytes:
        """One request/response to ``peer`` (base58 id) over ``protocol``, from any thread but the service's."""
        from hivemind.p2p import PeerID

        if self._loop is None or self._p2p is None:
            raise ConnectionError("the ledger service is not running")
        future = asyncio.run_coroutine_threadsafe(
            self._p2p._client.call_unary_handler(PeerID.from_base58(peer), protocol, request), self._loop
        )
        return future.result(timeout=timeout)

    @staticmethod
    def _wrap(fn: Callable[[bytes], bytes]):
        async def handle(request: bytes, remote_id) -> bytes:
            if len(request) > MAX_REQUEST:
                return cbor.encode({"error": "request too large"})
            return await asyncio.get_running_loop().run_in_executor(None, fn, request)

        return handle

    async def _handle(self, request: bytes, remote_id) -> bytes:
        if len(request) > MAX_REQUEST:
            return cbor.encode({"error": "request too large"})
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.node.handle, remote_id.to_base58(), request)
