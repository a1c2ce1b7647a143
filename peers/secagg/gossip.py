"""Secure aggregation for gossip neighbourhoods: each peer i learns the sum of its neighbours'
models, never one of them (``peers.worker`` wires these steps into live rounds).

For a round, sender j sends recipient i (its neighbour) not its model x_j but

    y_ji = enc(x_j) + sum_{k in N(i), k > j} PRG(s_jk; job, round, i) - sum_{k in N(i), k < j} PRG(s_jk; job, round, i)

(mod 2^64, ``fixedpoint`` encoding), where N(i) are i's neighbours (the senders of its round) and
s_jk the X25519 agreement between j and k. Summed over N(i) the masks cancel: i decodes the sum.

Keys: a node's X25519 key is derived from its Ed25519 node key, the one the signed plan already
vouches for (the private scalar is SHA-512 of the Ed25519 seed, as Ed25519 itself uses it; the
public key is the birational map u = (1 + y) / (1 - y) of the Edwards point, libsodium's
``crypto_sign_ed25519_pk_to_curve25519``). So the platform only has to tell each peer who is in
each neighbour's neighbourhood (``Neighbour.neighbourhood``), and no new key travels.

Dropouts: when some senders D of N(i) sent nothing, i asks every survivor j for
``correction(j, D)``, the net mask j added for D in this (job, round, i) only; subtracting the
survivors' corrections leaves the survivors' sum. Seeds are bound to the recipient and round, so
a correction reveals nothing about any other recipient or round. A correction for k is only safe
while y_k never reached i: the receiver must drop a y_k that arrives after it asked (the
protocol trusts recipients to be honest-but-curious on this; ``peers.secagg.protocol``'s self
masks with Shamir shares would close it, at a round trip of shares per round).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from peers.secagg import prg

_P = 2**255 - 19
MIN_SUM = 2  # a sum over fewer inputs is one input in the clear: never computed nor sent


def x25519_private(ed25519_seed: bytes) -> X25519PrivateKey:
    """The X25519 key of an Ed25519 key given by its raw 32-byte seed (private bytes)."""
    if len(ed25519_seed) != 32:
        raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(ed25519_seed)}")
    return X25519PrivateKey.from_private_bytes(hashlib.sha512(ed25519_seed).digest()[:32])  # X25519 clamps


def x25519_public(ed25519_public_hex: str) -> bytes:
    """The raw X25519 public key matching an Ed25519 public key (hex of its 32 raw bytes)."""
    raw = bytes.fromhex(ed25519_public_hex)
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _P or y == 1:
        raise ValueError("not an Ed25519 public key")
    u = (1 + y) * pow(1 - y, -1, _P) % _P
    return u.to_bytes(32, "little")


def pair_mask(
    key: X25519PrivateKey, other_public: bytes, job: int, round: int, recipient: int, length: int
) -> npt.NDArray[np.uint64]:
    """PRG(s_jk; job, round, recipient): the mask j and k share for what they send ``recipient``."""
    shared = key.exchange(X25519PublicKey.from_public_bytes(other_public))  # ValueError on low-order keys
    return prg.expand(prg.derive_seed(shared, round, f"gossip/{job}/{recipient}"), length)


def _signed_masks(
    sender: int,
    key: X25519PrivateKey,
    others: Mapping[int, bytes],
    job: int,
    round: int,
    recipient: int,
    length: int,
) -> npt.NDArray[np.uint64]:
    total = np.zeros(length, dtype=np.uint64)
    for k, public in sorted(others.items()):
        if k == sender:
            continue
        m = pair_mask(key, public, job, round, recipient, length)
        if k > sender:
            total += m
        else:
            total -= m
    return total


def mask(
    encoded: npt.NDArray[np.uint64],
    sender: int,
    key: X25519PrivateKey,
    others: Mapping[int, bytes],
    *,
    job: int,
    round: int,
    recipient: int,
) -> npt.NDArray[np.uint64]:
    """y_ji for the 1-D encoded model of ``sender``; ``others``: the X25519 public keys of the
    other senders of ``recipient``'s neighbourhood."""
    if len(set(others) | {sender}) < MIN_SUM:
        raise ValueError(f"recipient {recipient} would sum fewer than {MIN_SUM} inputs: its sum would be ours")
    x = np.asarray(encoded)
    if x.dtype != np.uint64 or x.ndim != 1:
        raise ValueError("mask takes a 1-D uint64 vector (fixedpoint.encode, flattened)")
    return x + _signed_masks(sender, key, others, job, round, recipient, x.size)


def correction(
    sender: int,
    key: X25519PrivateKey,
    dropped: Mapping[int, bytes],
    *,
    job: int,
    round: int,
    recipient: int,
    length: int,
) -> npt.NDArray[np.uint64]:
    """What ``sender`` added to its y for the ``dropped`` senders (their public keys): the
    recipient subtracts it from the sum."""
    return _signed_masks(sender, key, dropped, job, round, recipient, length)


__all__ = ["MIN_SUM", "correction", "mask", "pair_mask", "x25519_private", "x25519_public"]
