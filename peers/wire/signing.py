"""Ed25519 node identities: every weights transfer header is signed by its sender."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

_RAW_LEN = 32


class NodeKey:
    """A node's Ed25519 private key."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key_hex: str = raw.hex()

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, data: bytes) -> NodeKey:
        """Parse a PEM (PKCS#8) key or the raw 32-byte private key."""
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError("PEM key is not an Ed25519 private key")
            return cls(key)
        if len(data) != _RAW_LEN:
            raise ValueError(f"raw Ed25519 key must be {_RAW_LEN} bytes, got {len(data)}")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    def to_pem(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def load_or_create(cls, path: str | os.PathLike) -> NodeKey:
        """Load the key at ``path``, or create it (PEM, mode 0600, parent dirs made)."""
        path = Path(path)
        if path.exists():
            return cls.from_bytes(path.read_bytes())
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race: use its key
            return cls.from_bytes(path.read_bytes())
        with os.fdopen(fd, "wb") as f:
            f.write(key.to_pem())
        return key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def seed(self) -> bytes:
        """The raw 32-byte private seed (peers.secagg.gossip derives the node's X25519 key from it)."""
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def verify(public_key_hex: str, data: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data``; never raises."""
    try:
        raw = bytes.fromhex(public_key_hex)
        if len(raw) != _RAW_LEN or not isinstance(signature, (bytes, bytearray)):
            return False
        Ed25519PublicKey.from_public_bytes(raw).verify(bytes(signature), bytes(data))
        return True
    except Exception:
        return False
