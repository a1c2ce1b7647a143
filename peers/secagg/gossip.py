"""Secure aggregation for gossip neighbourhoods: each peer i learns the sum of its neighbours'
models, never one of them (``peers.worker`` wires these steps into live rounds). Bonawitz et al.
(2017) double masking, one recipient at a time.

Masks. For a round, sender j sends recipient i (its neighbour) not its model x_j but

    y_ji = enc(x_j) + PRG(b_ji) + sum_{k in N(i), k > j} PRG(s_jk; job, round, i) - sum_{k in N(i), k < j} PRG(s_jk; job, round, i)

(mod 2^64, ``fixedpoint`` encoding), where N(i) are i's neighbours (the senders of its round),
s_jk the X25519 agreement between j and k, and b_ji a fresh random 32-byte seed of j's for this
(job, round, i) alone: its self mask. Summed over N(i) the pairwise masks cancel; the self masks
do not, and i can remove them only with the holders' help (below).

Shares. j splits b_ji t-of-(|N(i)| - 1) (``shamir``) among the holders, i's other senders k != j,
each share sealed for its holder with AES-256-GCM under a key derived (HKDF) from s_jk and bound
to (job, round, i, j, k), the same five numbers as the associated data. The sealed shares travel
with y_ji to i (``pack_upload``: a fixed binary layout, never pickle); i cannot open them. j keeps
no copy of b_ji.

Unmasking, every round. i names the senders whose uploads arrived, A, and the others, D
(A and D partition N(i)), and sends each k in A one signed request with A, D and the shares sealed
for k by the senders in A - {k}. Holder k answers once per (job, round, i), and only when k is
in A, A and D are disjoint, A u D is N(i) as k's own plan names it and |A| >= max(MIN_SUM, t + 1):
with the shares of b_ji for each j in A - {k} (never one for a j in D) and, if D is not empty,
``correction(k, D)``, the net pairwise mask k added for D (never one for a j in A). i rebuilds
each b_ji (j in A) from t shares, subtracts PRG(b_ji) and the corrections, and decodes the sum
over A. A sender whose upload arrived and who vanished before the request is still unmasked:
its seed comes from the other holders' shares and its pairwise masks cancel (Bonawitz's
drop-after-send). A holder in A that does not answer fails the round only if its correction is
needed (D not empty) or its shares are.

Threshold: ``share_threshold(n, f)`` for |N(i)| = n senders is ``tree.threshold(n, f) - 1``: the
holders left to a sender when strictly fewer than the fraction f of N(i) drop (the job's
``secagg_dropout``, at most and by default 1/2), so i unmasks whenever fewer than that drop. With
f = 1/2: n = 3 (the job form's minimum) gives t = 1 and tolerates one drop; n = 4 and 5 give 2,
n = 6 gives 3, n = 8 gives 4. A smaller f asks more holders (t + 1 colluders with i unmask one
sender) and tolerates fewer drops: f = 1/5 with n = 6 gives t = 4.

Why a recipient cannot claim a live sender dropped (the hole pairwise masks alone leave): to read
x_j from y_ji, i needs b_ji, i.e. t shares, so t holders whose request names j alive; and every
pairwise mask of j, i.e. the correction for j of every other sender, which a holder gives only
to a request naming j dropped. A holder answers one (A, D) only, so a holder that gave its share
kept its correction for j: that pairwise mask stays in y_ji and cancels only against y_ki, whose
self mask i can remove only with shares from holders that name k alive, and so on. Whatever camps
i splits the holders into, what it can unmask is a sum over a set closed under this, holding j
and the >= t holders that named j alive: at most sums of >= t + 1 inputs, never one input. With
fewer than t holders on j's side, its seed stays hidden (t - 1 Shamir shares say nothing).
Coalitions: i together with fewer than t of its neighbours learns no single input either; t or
more colluders can hand i a seed.

Not run: the paper's consistency round (holders do not check that the others were sent the same
A and D; the argument above does not need it, at the cost of the residual sums), and nothing
hides the answers from whoever reads i's inbox (they travel signed, not encrypted, as before:
such a reader learns what i learns, the sum). Keys: a node's X25519 key is derived from its
Ed25519 node key, the one the signed plan already vouches for (the private scalar is SHA-512 of
the Ed25519 seed, as Ed25519 itself uses it; the public key is the birational map
u = (1 + y) / (1 - y) of the Edwards point, libsodium's ``crypto_sign_ed25519_pk_to_curve25519``).
So the platform only has to tell each peer who is in each neighbour's neighbourhood
(``Neighbour.neighbourhood``), and no new key travels. Seeds are bound to the recipient and
round, so nothing a holder reveals says anything about another recipient or round.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from peers.secagg import prg, shamir

_P = 2**255 - 19
MIN_SUM = 2  # a sum over fewer inputs is one input in the clear: never computed nor sent
MAX_NEIGHBOURHOOD = 4096  # senders per recipient a payload may name (bounds what a reader holds)

# Wire layouts (big-endian; the masked vector and the correction little-endian uint64):
#   upload:  b"SMU1", u32 n, n x (u64 holder, sealed share), masked vector
#   answer:  b"SMA1", u32 n, n x (u64 sender, share value), correction (empty when nothing dropped)
#   sealed shares forwarded in a request (``peers.protocol.SecAggRecover.shares``): n x (u64 sender, sealed share)
SHARE_BYTES = (shamir.PRIME.bit_length() + 7) // 8  # a share value over GF(2^521 - 1): 66
_NONCE_BYTES = 12
SEALED_BYTES = _NONCE_BYTES + SHARE_BYTES + 16  # nonce, ciphertext, GCM tag
RECORD_BYTES = 8 + SEALED_BYTES  # what peers.protocol.SECAGG_SHARE_RECORD_BYTES must equal
_UPLOAD, _ANSWER = b"SMU1", b"SMA1"
_HEAD = struct.Struct(">4sI")
_ID = struct.Struct(">Q")
_AD = struct.Struct(">16sQQQQQ")


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


class Agreements:
    """An X25519 key that remembers what it agreed with each other key: s_jk is the same every
    round and recipient, so a peer computes it once (the functions here take this or a bare key)."""

    LIMIT = 4 * MAX_NEIGHBOURHOOD

    def __init__(self, key: X25519PrivateKey):
        self.key = key
        self._shared: dict[bytes, bytes] = {}

    def agree(self, other_public: bytes) -> bytes:
        shared = self._shared.get(other_public)
        if shared is None:
            if len(self._shared) >= self.LIMIT:
                self._shared.clear()
            shared = self._shared[other_public] = _exchange(self.key, other_public)
        return shared


Key = X25519PrivateKey | Agreements


def _agree(key: Key, other_public: bytes) -> bytes:
    return key.agree(other_public) if isinstance(key, Agreements) else _exchange(key, other_public)


def _exchange(key: X25519PrivateKey, other_public: bytes) -> bytes:
    return key.exchange(X25519PublicKey.from_public_bytes(other_public))  # ValueError on low-order keys


def pair_mask(
    key: Key, other_public: bytes, job: int, round: int, recipient: int, length: int
) -> npt.NDArray[np.uint64]:
    """PRG(s_jk; job, round, recipient): the mask j and k share for what they send ``recipient``."""
    shared = _agree(key, other_public)
    return prg.expand(prg.derive_seed(shared, round, f"gossip/{job}/{recipient}"), length)


def _signed_masks(
    sender: int,
    key: Key,
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
    key: Key,
    others: Mapping[int, bytes],
    *,
    job: int,
    round: int,
    recipient: int,
    self_seed: bytes,
) -> npt.NDArray[np.uint64]:
    """y_ji for the 1-D encoded model of ``sender``; ``others``: the X25519 public keys of the
    other senders of ``recipient``'s neighbourhood; ``self_seed``: b_ji (fresh, 32 bytes)."""
    if len(set(others) | {sender}) < MIN_SUM:
        raise ValueError(f"recipient {recipient} would sum fewer than {MIN_SUM} inputs: its sum would be ours")
    x = np.asarray(encoded)
    if x.dtype != np.uint64 or x.ndim != 1:
        raise ValueError("mask takes a 1-D uint64 vector (fixedpoint.encode, flattened)")
    own = self_mask(self_seed, job=job, round=round, recipient=recipient, length=x.size)
    return x + own + _signed_masks(sender, key, others, job, round, recipient, x.size)


def self_mask(seed: bytes, *, job: int, round: int, recipient: int, length: int) -> npt.NDArray[np.uint64]:
    """PRG(b_ji): the self mask of a seed, bound to the job, round and recipient."""
    return prg.expand(prg.derive_seed(seed, round, f"gossip-self/{job}/{recipient}"), length)


def share_threshold(size: int, dropout_fraction: float = 0.5) -> int:
    """t, the shares of a sender's self-mask seed that unmask it, for a recipient with ``size``
    senders: the holders left to a sender when strictly fewer than ``dropout_fraction`` (at most
    1/2: the job's ``secagg_dropout``) of the senders drop, ``peers.secagg.tree.threshold(size,
    dropout_fraction) - 1`` (at least 1)."""
    if type(size) is not int or size < MIN_SUM:
        raise ValueError(f"a neighbourhood has at least {MIN_SUM} senders, got {size!r}")
    if not 0 < dropout_fraction <= 0.5:
        raise ValueError(f"dropout fraction must be in (0, 1/2], got {dropout_fraction!r}")
    return max(1, size - math.ceil(dropout_fraction * size))


def seal_shares(
    seed: bytes,
    sender: int,
    key: Key,
    holders: Mapping[int, bytes],
    *,
    job: int,
    round: int,
    recipient: int,
    threshold: int,
) -> dict[int, bytes]:
    """``{holder: sealed share}``: ``seed`` split ``threshold``-of-len(holders) (share x = holder
    + 1), each share sealed (AES-256-GCM) for its holder, whose X25519 public key ``holders``
    gives."""
    shares = shamir.split(seed, threshold, [k + 1 for k in holders])
    out = {}
    for k, public in holders.items():
        nonce = os.urandom(_NONCE_BYTES)
        aead, ad = _share_cipher(key, public, job, round, recipient, sender, k)
        out[k] = nonce + aead.encrypt(nonce, shares[k + 1].to_bytes(SHARE_BYTES, "big"), ad)
    return out


def open_share(
    sealed: bytes,
    holder: int,
    key: Key,
    sender_public: bytes,
    *,
    job: int,
    round: int,
    recipient: int,
    sender: int,
) -> int:
    """The share value ``sender`` sealed for ``holder`` (whose key is ``key``); ``ValueError`` when
    it was not sealed by that sender for this holder, job, round and recipient."""
    if len(sealed) != SEALED_BYTES:
        raise ValueError(f"a sealed share is {SEALED_BYTES} bytes, got {len(sealed)}")
    aead, ad = _share_cipher(key, sender_public, job, round, recipient, sender, holder)
    try:
        plain = aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], ad)
    except InvalidTag:
        raise ValueError(f"the share from {sender} does not open: not sealed for this holder and round") from None
    value = int.from_bytes(plain, "big")
    if value >= shamir.PRIME:
        raise ValueError(f"the share from {sender} is out of range")
    return value


def rebuild_seed(shares: Mapping[int, int], threshold: int) -> bytes:
    """b_ji from ``{holder: share value}`` (at least ``threshold``); ``ValueError`` otherwise."""
    return shamir.combine({k + 1: v for k, v in shares.items()}, threshold)


def _share_cipher(
    key: Key, other_public: bytes, job: int, round: int, recipient: int, sender: int, holder: int
) -> tuple[AESGCM, bytes]:
    shared = _agree(key, other_public)
    seed = prg.derive_seed(shared, round, f"gossip-share/{job}/{recipient}/{sender}/{holder}")
    return AESGCM(seed), _AD.pack(b"dfl-secagg-share", job, round, recipient, sender, holder)


# -- payloads --------------------------------------------------------------------------------
def pack_upload(masked: npt.NDArray[np.uint64], sealed: Mapping[int, bytes]) -> bytes:
    """j's upload to i: the sealed shares of b_ji, then y_ji."""
    return _HEAD.pack(_UPLOAD, len(sealed)) + pack_sealed(sealed) + masked.astype("<u8").tobytes()


def unpack_upload(
    payload: bytes | bytearray, length: int, holders: set[int]
) -> tuple[npt.NDArray[np.uint64], dict[int, bytes]]:
    """(y_ji, {holder: sealed share}) from an upload; ``ValueError`` (with the reason) unless it
    holds one sealed share for each of ``holders`` and a masked vector of ``length`` values."""
    count, body = _head(payload, _UPLOAD, "upload")
    if count != len(holders):
        raise ValueError(f"{count} sealed shares, expected {len(holders)}")
    if len(body) != count * RECORD_BYTES + 8 * length:
        raise ValueError(f"{len(payload)} bytes, expected {_HEAD.size + count * RECORD_BYTES + 8 * length}")
    sealed = unpack_sealed(body[: count * RECORD_BYTES])
    if set(sealed) != holders:
        raise ValueError(f"sealed shares for {sorted(sealed)}, expected {sorted(holders)}")
    return np.frombuffer(body[count * RECORD_BYTES :], dtype="<u8").astype(np.uint64), sealed


def pack_sealed(sealed: Mapping[int, bytes]) -> bytes:
    """Sealed shares as fixed records (u64 id, sealed share), by id."""
    if any(len(v) != SEALED_BYTES for v in sealed.values()):
        raise ValueError(f"a sealed share is {SEALED_BYTES} bytes")
    return b"".join(_ID.pack(k) + bytes(sealed[k]) for k in sorted(sealed))


def unpack_sealed(blob: bytes | bytearray) -> dict[int, bytes]:
    """The records of ``pack_sealed``; ``ValueError`` on a ragged, oversized or repeating list."""
    if len(blob) % RECORD_BYTES or len(blob) // RECORD_BYTES > MAX_NEIGHBOURHOOD:
        raise ValueError(f"{len(blob)} bytes of sealed shares: not a whole number of {RECORD_BYTES}-byte records")
    out = {}
    view = memoryview(blob)
    for at in range(0, len(blob), RECORD_BYTES):
        (k,) = _ID.unpack_from(view, at)
        if k in out:
            raise ValueError(f"two sealed shares for {k}")
        out[k] = bytes(view[at + 8 : at + RECORD_BYTES])
    return out


def pack_answer(shares: Mapping[int, int], correction: npt.NDArray[np.uint64] | None) -> bytes:
    """A holder's answer: its share of b_ji for each sender j it opened, and its correction."""
    records = b"".join(_ID.pack(j) + shares[j].to_bytes(SHARE_BYTES, "big") for j in sorted(shares))
    tail = b"" if correction is None else correction.astype("<u8").tobytes()
    return _HEAD.pack(_ANSWER, len(shares)) + records + tail


def unpack_answer(
    payload: bytes | bytearray, length: int, senders: set[int], correction: bool
) -> tuple[dict[int, int], npt.NDArray[np.uint64] | None]:
    """({sender: share value}, correction or None) from a holder's answer; ``ValueError`` unless
    its shares are for ``senders`` only and it carries a correction of ``length`` values exactly
    when one is asked for (``correction``)."""
    count, body = _head(payload, _ANSWER, "answer")
    record = 8 + SHARE_BYTES
    tail = 8 * length if correction else 0
    if len(body) != count * record + tail:
        raise ValueError(f"{len(payload)} bytes, expected {_HEAD.size + count * record + tail}")
    shares = {}
    for at in range(0, count * record, record):
        (j,) = _ID.unpack_from(body, at)
        value = int.from_bytes(body[at + 8 : at + record], "big")
        if j not in senders or j in shares or value >= shamir.PRIME:
            raise ValueError(f"a share for {j}: not one asked for, repeated or out of range")
        shares[j] = value
    fix = np.frombuffer(body[count * record :], dtype="<u8").astype(np.uint64) if correction else None
    return shares, fix


def _head(payload: bytes | bytearray, magic: bytes, what: str) -> tuple[int, bytes | bytearray]:
    if len(payload) < _HEAD.size:
        raise ValueError(f"a masked {what} of {len(payload)} bytes has no header")
    tag, count = _HEAD.unpack_from(payload)
    if tag != magic:
        raise ValueError(f"not a masked {what} (tag {tag!r}, expected {magic!r})")
    if count > MAX_NEIGHBOURHOOD:
        raise ValueError(f"{count} shares: more than a neighbourhood holds ({MAX_NEIGHBOURHOOD})")
    return count, payload[_HEAD.size :]


def correction(
    sender: int,
    key: Key,
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


__all__ = [
    "MIN_SUM",
    "RECORD_BYTES",
    "SEALED_BYTES",
    "Agreements",
    "correction",
    "mask",
    "open_share",
    "pack_answer",
    "pack_sealed",
    "pack_upload",
    "pair_mask",
    "rebuild_seed",
    "seal_shares",
    "self_mask",
    "share_threshold",
    "unpack_answer",
    "unpack_sealed",
    "unpack_upload",
    "x25519_private",
    "x25519_public",
]
