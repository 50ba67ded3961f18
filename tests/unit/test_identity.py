"""Member keys (src/koinon/identity/keys.py)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from koinon.errors import IdentityError
from koinon.identity.keys import (
    KEY_FILE,
    Identity,
    member_id_from_public_key,
    public_key_from_member_id,
    short_id,
    verify_signature,
)


def test_create_writes_a_68_byte_key_with_mode_0600(tmp_path: Path):
    home = tmp_path / "alice"
    identity = Identity.create(home)
    path = home / KEY_FILE
    assert identity.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert len(raw) == 68
    assert raw[:4] == bytes([0x08, 0x01, 0x12, 0x40])
    assert raw[36:] == identity.public_key
    assert not list(home.glob("*.tmp")), "no temporary file is left behind"


def test_create_is_0600_even_with_a_permissive_umask(tmp_path: Path):
    old = os.umask(0)
    try:
        identity = Identity.create(tmp_path / "bob")
    finally:
        os.umask(old)
    assert stat.S_IMODE(identity.path.stat().st_mode) == 0o600


def test_load_or_create_returns_the_same_member_the_second_time(tmp_path: Path):
    first, created = Identity.load_or_create(tmp_path)
    assert created is True
    second, created_again = Identity.load_or_create(tmp_path)
    assert created_again is False
    assert second.member_id == first.member_id
    assert second.public_key == first.public_key
    assert second.sign(b"m") == first.sign(b"m")  # Ed25519 is deterministic: same key, same signature


def test_two_members_get_different_ids(tmp_path: Path):
    assert Identity.create(tmp_path / "a").member_id != Identity.create(tmp_path / "b").member_id


def test_member_id_format_and_inverse(tmp_path: Path):
    identity = Identity.create(tmp_path)
    member = identity.member_id
    assert member.startswith("12D3KooW")
    assert len(member) == 52
    assert identity.short_id == member[-8:] == short_id(member)
    assert public_key_from_member_id(member) == identity.public_key
    assert member_id_from_public_key(public_key_from_member_id(member)) == member
    assert member_id_from_public_key(bytes(32)).startswith("12D3KooW")


def test_member_id_matches_libp2p_peer_id(tmp_path: Path):
    """The member id is the libp2p peer id of the key file, built here with libp2p's own protobuf messages
    (not Koinon's hand-written prefixes): identity multihash of the serialised PublicKey."""
    from hivemind.p2p import PeerID
    from hivemind.proto import crypto_pb2

    identity = Identity.create(tmp_path)
    key = crypto_pb2.PrivateKey.FromString(identity.path.read_bytes())
    assert key.key_type == crypto_pb2.KeyType.Ed25519
    assert key.data[32:] == identity.public_key
    public = crypto_pb2.PublicKey(key_type=crypto_pb2.KeyType.Ed25519, data=identity.public_key).SerializeToString()
    multihash = bytes([0x00, len(public)]) + public  # 0x00 = identity hash function
    assert PeerID(multihash).to_base58() == identity.member_id


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "not base58 0OIl",
        "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",  # a valid but RSA/sha256 style peer id
        "12D3KooW",
    ],
)
def test_public_key_from_member_id_rejects_other_strings(bad: str):
    with pytest.raises(IdentityError):
        public_key_from_member_id(bad)


def test_member_id_from_public_key_rejects_wrong_length():
    with pytest.raises(IdentityError, match="32 bytes"):
        member_id_from_public_key(bytes(31))


def test_sign_and_verify(tmp_path: Path):
    alice = Identity.create(tmp_path / "alice")
    mallory = Identity.create(tmp_path / "mallory")
    message = b"round 7 state abc"
    signature = alice.sign(message)
    assert len(signature) == 64
    verify_signature(alice.member_id, message, signature)  # does not raise

    with pytest.raises(IdentityError, match="invalid signature"):
        verify_signature(alice.member_id, message, mallory.sign(message))
    with pytest.raises(IdentityError, match="invalid signature"):
        verify_signature(alice.member_id, b"round 7 state abd", signature)
    with pytest.raises(IdentityError, match="invalid signature"):
        verify_signature(mallory.member_id, message, signature)
    with pytest.raises(IdentityError):
        verify_signature("garbage", message, signature)
    with pytest.raises(IdentityError, match="invalid signature"):
        verify_signature(alice.member_id, message, signature[:-1])


def test_truncated_key_file_raises_with_what_to_do(tmp_path: Path):
    identity = Identity.create(tmp_path)
    identity.path.write_bytes(identity.path.read_bytes()[:40])
    with pytest.raises(IdentityError) as info:
        Identity.load(tmp_path)
    text = str(info.value)
    assert "corrupted" in text and "40 bytes" in text
    assert "restore it from a backup" in text and "koinon id" in text
    with pytest.raises(IdentityError):  # load_or_create must not silently replace a damaged key
        Identity.load_or_create(tmp_path)
    assert len(identity.path.read_bytes()) == 40


def test_wrong_prefix_raises(tmp_path: Path):
    identity = Identity.create(tmp_path)
    raw = bytearray(identity.path.read_bytes())
    raw[1] = 0x00  # key type RSA instead of Ed25519
    identity.path.write_bytes(bytes(raw))
    with pytest.raises(IdentityError, match="corrupted"):
        Identity.load(tmp_path)


def test_flipped_public_key_bytes_raise_with_what_to_do(tmp_path: Path):
    identity = Identity.create(tmp_path)
    raw = bytearray(identity.path.read_bytes())
    for i in range(36, 40):
        raw[i] ^= 0xFF
    identity.path.write_bytes(bytes(raw))
    with pytest.raises(IdentityError) as info:
        Identity.load(tmp_path)
    text = str(info.value)
    assert "public key does not match" in text
    assert "restore it from a backup" in text and "koinon id" in text


def test_missing_key_file_raises_with_what_to_do(tmp_path: Path):
    home = tmp_path / "nobody"
    with pytest.raises(IdentityError) as info:
        Identity.load(home)
    text = str(info.value)
    assert str(home / KEY_FILE) in text
    assert f"koinon id --home {home}" in text


def test_key_path_that_is_a_directory_raises_identity_error(tmp_path: Path):
    (tmp_path / KEY_FILE).mkdir()
    with pytest.raises(IdentityError, match="cannot read identity"):
        Identity.load(tmp_path)
