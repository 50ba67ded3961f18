"""Koinon: a community trains, verifies, governs and serves AI models together over a peer-to-peer network.

Packages, one per trust boundary (see docs/architecture.md):

- ``koinon.identity``  member keys (Ed25519); the key is also the peer's libp2p identity
- ``koinon.training``  the model, the data shards, DiLoCo's inner and outer steps
- ``koinon.swarm``     hivemind: DHT node, exact averaging of pseudo-gradients, compression, the peer loop
- ``koinon.aggregation``  the reducers of each averaged part: mean, trimmed mean, median, CenteredClip
- ``koinon.store``     checkpoints (safetensors, atomic, content-addressed)
- ``koinon.cli``       the ``koinon`` command (never imported by the library)
"""

from koinon.errors import KoinonError

__version__ = "0.1.0"

__all__ = ["KoinonError", "__version__"]
