"""The swarm (DESIGN §3): hivemind underneath, Koinon's protocol on top.

- ``node.py``: start/stop a DHT whose libp2p identity is the member key; the HIVEMIND.md traps handled.
- ``averaging.py``: ``ExactAverager`` — all-reduce whose result is bit-identical on every peer, all-or-nothing,
  rejecting NaN/Inf or malformed parts with the sender's id.
- ``compression.py``: fp16 and Koinon's blockwise int8 encoding of pseudo-gradients.
- ``peer.py``: ``Peer`` — the DiLoCo round loop, DHT announcements, state sync for late joiners and stragglers.
- ``metrics.py``: ``MetricsLog`` — the peer's ``metrics.jsonl`` and its one-line round summary.
- ``attacks.py``: ``apply_attack`` — the Byzantine pseudo-gradients of ``koinon start --attack`` (a testing tool).
"""
