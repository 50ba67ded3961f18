"""Koinon's exceptions: one tree, named after the outcome.

::

    KoinonError
     ├── ConfigError (also ValueError)   a setting or argument is wrong; the message says how to fix it
     ├── IdentityError                   the member key file is missing, unreadable or corrupted
     ├── DataError                       a data path is unreadable, empty or too small to train on
     ├── SwarmError                      the swarm could not be joined or left cleanly
     │    ├── PeerTimeout                nobody answered within the time allowed
     │    └── AddressInUse               a listen address is already taken by another program
     └── StateError                      a model state (θ, optimizer) failed verification
          └── HashMismatch               bytes do not match the hash they were announced with

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


__all__ = [
    "AddressInUse",
    "ConfigError",
    "DataError",
    "HashMismatch",
    "IdentityError",
    "KoinonError",
    "PeerTimeout",
    "StateError",
    "SwarmError",
]
