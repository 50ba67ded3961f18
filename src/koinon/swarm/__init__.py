"""The swarm (DESIGN §3): hivemind underneath, Koinon's protocol on top.

- ``node.py``: start/stop a DHT whose libp2p identity is the member key; the HIVEMIND.md traps handled.
- ``averaging.py``: ``ExactAverager`` — all-reduce whose result is bit-identical on every peer, all-or-nothing,
  rejecting NaN/Inf or malformed parts with the sender's id.
- ``compression.py``: fp16 and Koinon's blockwise int8 encoding of pseudo-gradients.
- ``announce.py``: ``Announcer`` — signed DHT records of each peer's height and ETA (scheduling hints only).
- ``rounds.py``: ``RoundProtocol`` and friends — which θ is the swarm's: pure decisions from signed data.
- ``certificates.py``: ``RoundChain`` — certified heights from signed round events; ``governance_in_force``.
- ``peer.py``: ``Peer`` — a thin driver of the round protocol: run → join → attempt → resolve → apply.
- ``options.py``: ``PeerOptions`` — what ``koinon start`` asks of a peer.
- ``trainer.py``: ``LocalTrainer`` — what a peer trains and how: model, θ, optimizers, data, governance in force.
- ``services.py``: ``PeerServices`` — the DHT, the ledger service and its protocols, the averager; leaving in order.
- ``exchange.py``: ``Exchange`` — one all-reduce per attempt, scheduled from the DHT hints.
- ``sync.py``: ``StateSync`` — serve our last certified state; adopt another only if a certificate vouches for it.
- ``chainview.py``: ``ChainView`` — the certified rounds our ledger proves, live and final.
- ``metrics.py``: ``MetricsLog`` — the peer's ``metrics.jsonl`` and its one-line round summary.
- ``attacks.py``: ``apply_attack`` — the Byzantine pseudo-gradients of ``koinon start --attack`` (a testing tool).
"""
