"""Ed25519 member keys, stored in libp2p's key format so the member key is also the network identity.

File format (``$KOINON_HOME/identity.key``, mode 0600): libp2p's ``PrivateKey`` protobuf for Ed25519, i.e. the
68 bytes ``08 01 12 40 ‖ seed(32) ‖ public(32)``. hivemind's p2pd reads this file as ``identity_path``.

Member id: the libp2p peer id of the public key — base58btc of the identity multihash
``00 24 ‖ 08 01 12 20 ‖ public(32)`` — which always starts with ``12D3KooW``.
"""

from __future__ import annotations

import base64
import functools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from koinon.errors import IdentityError

KEY_FILE = "identity.key"
_PRIVATE_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])  # KeyType=Ed25519, Data: 64 bytes
_PUBLIC_PREFIX = bytes([0x08, 0x01, 0x12, 0x20])  # KeyType=Ed25519, Data: 32 bytes
_IDENTITY_MULTIHASH = bytes([0x00, len(_PUBLIC_PREFIX) + 32])


def member_id_from_public_key(public: bytes) -> str:
    """The libp2p peer id (base58) of an Ed25519 public key; Koinon uses it as the member id."""
    if len(public) != 32:
        raise IdentityError(f"an Ed25519 public key has 32 bytes, got {len(public)}")
    return base58.b58encode(_IDENTITY_MULTIHASH + _PUBLIC_PREFIX + public).decode()


@functools.lru_cache(maxsize=65536)  # base58 decoding dominated ledger replays; a swarm has few members
def public_key_from_member_id(member_id: str) -> bytes:
    """Inverse of :func:`member_id_from_public_key`; raises IdentityError for anything else."""
    try:
        raw = base58.b58decode(member_id)
    except ValueError as e:
        raise IdentityError(f"member id {member_id!r} is not base58") from e
    head = _IDENTITY_MULTIHASH + _PUBLIC_PREFIX
    if len(raw) != len(head) + 32 or not raw.startswith(head):
        raise IdentityError(f"member id {member_id!r} is not an Ed25519 libp2p peer id")
    return raw[len(head) :]


def short_id(member_id: str) -> str:
    """A short label for logs and tables (the tail of the id; the head is always ``12D3KooW``)."""
    return member_id[-8:]


@functools.lru_cache(maxsize=65536)
def _public_key(member_id: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key_from_member_id(member_id))


def verify_signature(member_id: str, message: bytes, signature: bytes) -> None:
    """Raise IdentityError unless ``signature`` is ``member_id``'s Ed25519 signature of ``message``."""
    public = _public_key(member_id)
    try:
        public.verify(signature, message)
    except InvalidSignature as e:
        raise IdentityError(f"invalid signature by {short_id(member_id)}") from e


@dataclass(frozen=True)
class Identity:
    """A member's key pair. Create or load with :meth:`load_or_create`."""

    private_key: Ed25519PrivateKey
    path: Path

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def member_id(self) -> str:
        return member_id_from_public_key(self.public_key)

    @property
    def short_id(self) -> str:
        return short_id(self.member_id)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)

    @classmethod
    def load(cls, home: Path) -> Identity:
        path = Path(home) / KEY_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError as e:
            raise IdentityError(f"no identity at {path}; create one with `koinon id --home {home}`") from e
        except OSError as e:
            raise IdentityError(f"cannot read identity {path}: {e.strerror}") from e
        if len(raw) != len(_PRIVATE_PREFIX) + 64 or not raw.startswith(_PRIVATE_PREFIX):
            raise IdentityError(
                f"identity file {path} is corrupted (expected a 68-byte libp2p Ed25519 key, got {len(raw)} bytes); "
                "restore it from a backup, or move it away and run `koinon id` to make a new member key"
            )
        seed, public = raw[4:36], raw[36:]
        key = Ed25519PrivateKey.from_private_bytes(seed)
        if key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public:
            raise IdentityError(
                f"identity file {path} is corrupted (public key does not match the private key); "
                "restore it from a backup, or move it away and run `koinon id`"
            )
        return cls(private_key=key, path=path)

    @classmethod
    def create(cls, home: Path) -> Identity:
        home = Path(home)
        home.mkdir(parents=True, exist_ok=True)
        path = home / KEY_FILE
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        # mkstemp creates the file with O_EXCL and mode 0600: the secret is never readable by others, not even
        # for a moment. os.link then publishes it only if no key exists yet, so two processes creating a key at
        # once end up sharing the first one instead of each believing in its own.
        fd, tmp = tempfile.mkstemp(dir=home, prefix=".identity-", suffix=".tmp")
        try:
            os.write(fd, _PRIVATE_PREFIX + seed + public)
            os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return cls.load(home)
        finally:
            os.unlink(tmp)
        return cls(private_key=key, path=path)

    @classmethod
    def load_or_create(cls, home: Path) -> tuple[Identity, bool]:
        """Return (identity, created)."""
        if (Path(home) / KEY_FILE).exists():
            return cls.load(home), False
        return cls.create(home), True

    def public_key_b64(self) -> str:
        return base64.b64encode(self.public_key).decode()
