"""Member identity (DESIGN §2).

- ``keys.py``: ``Identity`` — an Ed25519 key kept under the member's home with mode 0600. The same key is the
  peer's libp2p identity (the file is in libp2p's protobuf key format and is handed to hivemind's daemon), so
  the member id *is* the libp2p peer id (``12D3KooW…``) and every P2P connection is attributable to a member.
"""

from koinon.identity.keys import Identity, member_id_from_public_key, short_id, verify_signature

__all__ = ["Identity", "member_id_from_public_key", "short_id", "verify_signature"]
