"""Koinon's exceptions: one tree, named after the outcome.

::

    KoinonError
     ├── ConfigError (also ValueError)   a setting or argument is wrong; the message says how to fix it
     ├── IdentityError                   the member key file is missing, unreadable or corrupted
     ├── DataError                       a data path is unreadable, empty or too small to train on
     ├── SwarmError                      the swarm could not be joined or left cleanly
     │    ├── PeerTimeout                nobody answered within the time allowed
     │    └── AddressInUse               a listen address is already taken by another program
     ├── StateError                      a model state (θ, optimizer) failed verification
     │    └── HashMismatch               bytes do not match the hash they were announced with
     └── LedgerError                     the ledger refused or could not verify something
          ├── InvalidEvent               an event is malformed, badly signed, mislinked or of an unknown kind
          │    └── Equivocation          two different events with the same (author, seq): the author is banned
          ├── InvalidProof               a Merkle inclusion or consistency proof does not verify
          └── AuditFailure               replaying the ledger found a bad event (named in the message)

The CLI turns every ``KoinonError`` into a one-line message and a non-zero exit code; anything else is a bug
and is shown with its traceback.
"""

from __future__ import annotations


class KoinonError(Exception):
    """Base class of every error Koinon raises on purpose."""


class ConfigError(KoinonError, ValueError):
    """A configuration value or command-line argument is invalid."""


class IdentityError(KoinonError):
    """The member identity (Ed25519 key) cannot be used."""


class DataError(KoinonError):
    """Training data cannot be read or is unusable."""


class SwarmError(KoinonError):
    """Joining, running or leaving the swarm failed."""


class PeerTimeout(SwarmError):
    """A peer or the swarm did not answer in time."""


class AddressInUse(SwarmError):
    """A listen address is already in use."""


class StateError(KoinonError):
    """A model state failed verification."""


class HashMismatch(StateError):
    """Data does not match the hash it was announced with."""


class LedgerError(KoinonError):
    """The ledger refused an input or could not verify something."""


class InvalidEvent(LedgerError):
    """An event is malformed, badly signed, mislinked, of an unknown kind, or otherwise refused."""


class Equivocation(InvalidEvent):
    """Two different signed events share (author, seq): a self-contained proof that bans the author.

    ``proof`` holds the two encoded events (sorted), which anyone can verify offline."""

    def __init__(self, message: str, a: bytes = b"", b: bytes = b"") -> None:
        super().__init__(message)
        self.proof = (a, b)


class InvalidProof(LedgerError):
    """A Merkle inclusion or consistency proof does not verify."""


class AuditFailure(LedgerError):
    """An offline replay of the ledger failed; the message names the first bad event."""


class GovernanceError(KoinonError, ValueError):
    """A charter, proposal, vote or delegation is invalid (the message says what to change)."""


__all__ = [
    "AddressInUse",
    "AuditFailure",
    "Equivocation",
    "InvalidEvent",
    "InvalidProof",
    "LedgerError",
    "ConfigError",
    "DataError",
    "GovernanceError",
    "HashMismatch",
    "IdentityError",
    "KoinonError",
    "PeerTimeout",
    "StateError",
    "SwarmError",
]
