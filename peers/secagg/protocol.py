"""The steps of one Bonawitz et al. (2017) round, as a participant object and a server function.

For participant i with input x_i (already ``fixedpoint.encode``d), self-mask seed b_i and X25519
mask key pair (sk_i, pk_i), and s_ij = HKDF(X25519(sk_i, pk_j), round, "pairwise") = s_ji:

    y_i = x_i + PRG(b_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)   (mod 2^64)

Over the survivors S (whose y arrived) the pairwise masks between two survivors cancel; what is
left is each survivor's PRG(b_u) and, for each dropped participant d (shared its secrets, then
vanished), the masks between d and the survivors. Everyone Shamir-shares both sk_i and b_i;
``reveal`` hands the server, per peer, the share of b for a survivor or of sk for a dropped one,
never both (both would give the server b_u and all of u's pairwise seeds, so y_u minus its
masks: u's input in the clear). ``unmask`` rebuilds the secrets from ``threshold`` reveals and
strips the masks, leaving the sum of the survivors' inputs.

Ids: node ids (ints >= 0); a node's Shamir x-coordinate is its id + 1, because 0 is where
the secret lies. The set a participant masks against must be the set whose shares it holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from peers.secagg import prg, shamir

SharePair = tuple[int, int]
"""(share of the mask private key, share of the self-mask seed) that a participant holds for one peer."""

PAIRWISE = "pairwise"
SELF = "self"


class Participant:
    """One node's secrets for one round. ``mask_key`` (raw 32-byte X25519 private key) and
    ``self_seed`` default to fresh random ones; pass them only to replay or to test."""

    def __init__(
        self,
        node_id: int,
        round: int,
        threshold: int,
        *,
        mask_key: bytes | None = None,
        self_seed: bytes | None = None,
    ):
        _check_node_ids([node_id])
        if type(threshold) is not int or threshold < 1:
            raise ValueError(f"threshold must be a positive int, got {threshold!r}")
        prg.check_round(round)
        if self_seed is not None and len(self_seed) != shamir.SECRET_LEN:
            raise ValueError(f"self_seed must be {shamir.SECRET_LEN} bytes, got {len(self_seed)}")
        self.node_id = node_id
        self.round = round
        self.threshold = threshold
        self._key = X25519PrivateKey.generate() if mask_key is None else X25519PrivateKey.from_private_bytes(mask_key)
        self._seed = secrets.token_bytes(shamir.SECRET_LEN) if self_seed is None else self_seed
        self._masked = False
        self._revealed: dict[int, str] = {}  # peer id -> SELF (seed share) or PAIRWISE (key share)

    @property
    def public_key(self) -> bytes:
        """Raw 32-byte X25519 public key, for every peer to mask against."""
        return _public_bytes(self._key)

    def share_secrets(self, peer_ids: Iterable[int]) -> dict[int, SharePair]:
        """Shamir shares (threshold t) of the mask private key and of the self-mask seed for
        every id in ``peer_ids`` and this node itself. Each must reach its peer encrypted and
        authenticated: whoever holds t shares of both kinds can unmask this node's input."""
        ids = sorted(set(peer_ids) | {self.node_id})
        _check_node_ids(ids)
        if self.threshold > len(ids):
            raise ValueError(f"threshold {self.threshold} exceeds the {len(ids)} participants")
        xs = [i + 1 for i in ids]
        keys = shamir.split(_private_bytes(self._key), self.threshold, xs)
        seeds = shamir.split(self._seed, self.threshold, xs)
        return {i: (keys[i + 1], seeds[i + 1]) for i in ids}

    def mask(self, encoded: npt.NDArray[np.uint64], peer_public_keys: Mapping[int, bytes]) -> npt.NDArray[np.uint64]:
        """y_i (module docstring) for the 1-D uint64 vector ``encoded``; ``peer_public_keys`` are
        the peers whose shares this node holds (its own entry, if present, is skipped). Once per
        round: two vectors under the same masks would give away their difference (keep y to resend)."""
        if self._masked:
            raise ValueError(f"node {self.node_id} already masked an input in round {self.round}")
        y = _check_vector(encoded).copy()
        self._masked = True
        y += prg.expand(prg.derive_seed(self._seed, self.round, SELF), y.size)
        for j, pk in sorted(peer_public_keys.items()):
            if j == self.node_id:
                if pk != self.public_key:
                    raise ValueError(f"the public key given for this node ({j}) is not its own")
                continue
            m = prg.expand(_pairwise_seed(self._key, pk, self.round), y.size)
            if j > self.node_id:
                y += m
            else:
                y -= m
        return y

    def reveal(
        self, survivors: Iterable[int], dropped: Iterable[int], held_shares: Mapping[int, SharePair]
    ) -> dict[int, int]:
        """``{peer: share}``: the self-mask seed share of each survivor, the mask key share of each
        dropped peer, from ``held_shares`` (what each peer's ``share_secrets`` gave this node).
        Refuses (``ValueError``, nothing revealed) a peer in both sets or asked the other kind of
        share than in an earlier call, fewer survivors than the threshold (the server could
        single out an input), or this node among the dropped."""
        surv, drop = set(survivors), set(dropped)
        if both := surv & drop:
            raise ValueError(f"peers {sorted(both)} are both survivors and dropped: never reveal both secrets")
        flipped = [u for u in surv if self._revealed.get(u) == PAIRWISE] + [
            d for d in drop if self._revealed.get(d) == SELF
        ]
        if flipped:
            raise ValueError(f"peers {sorted(flipped)} had the other secret revealed earlier: never reveal both")
        if self.node_id in drop:
            raise ValueError(f"node {self.node_id} is answering, it cannot be dropped")
        if len(surv) < self.threshold:
            raise ValueError(f"only {len(surv)} survivors, threshold {self.threshold}: refusing to unmask")
        if missing := (surv | drop) - held_shares.keys():
            raise ValueError(f"no shares held from peers {sorted(missing)}")
        self._revealed.update(dict.fromkeys(surv, SELF) | dict.fromkeys(drop, PAIRWISE))
        return {u: held_shares[u][1] for u in surv} | {d: held_shares[d][0] for d in drop}


def unmask(
    masked_sum: npt.NDArray[np.uint64],
    survivors: Iterable[int],
    dropped: Iterable[int],
    public_keys: Mapping[int, bytes],
    revealed_shares: Mapping[int, Mapping[int, int]],
    threshold: int,
    round: int,
    length: int,
) -> npt.NDArray[np.uint64]:
    """The encoded sum of the survivors' inputs, from ``masked_sum`` (the mod-2^64 sum of their
    y), the survivors' and dropped peers' ``public_keys``, and ``revealed_shares`` (revealer id
    -> what its ``reveal`` returned; at least ``threshold`` revealers). ``ValueError`` when a
    secret cannot be rebuilt or a rebuilt key does not match its public key."""
    total = _check_vector(masked_sum, length).copy()
    surv, drop = set(survivors), set(dropped)
    if both := surv & drop:
        raise ValueError(f"peers {sorted(both)} are both survivors and dropped")
    if missing := (surv | drop) - public_keys.keys():
        raise ValueError(f"no public key for peers {sorted(missing)}")
    for u in sorted(surv):
        seed = _recover(u, revealed_shares, threshold, "self-mask seed")
        total -= prg.expand(prg.derive_seed(seed, round, SELF), length)
    for d in sorted(drop):
        key = X25519PrivateKey.from_private_bytes(_recover(d, revealed_shares, threshold, "mask key"))
        if _public_bytes(key) != public_keys[d]:
            raise ValueError(f"the rebuilt mask key of peer {d} does not match its public key: bad shares")
        for u in sorted(surv):
            m = prg.expand(_pairwise_seed(key, public_keys[u], round), length)
            if d > u:  # u added the masks shared with higher ids, subtracted those with lower ones
                total -= m
            else:
                total += m
    return total


def _recover(owner: int, revealed: Mapping[int, Mapping[int, int]], threshold: int, what: str) -> bytes:
    shares = {k + 1: r[owner] for k, r in revealed.items() if owner in r}
    try:
        return shamir.combine(shares, threshold)
    except ValueError as e:
        raise ValueError(f"cannot recover the {what} of peer {owner}: {e}") from None


def _pairwise_seed(key: X25519PrivateKey, peer_public_key: bytes, round: int) -> bytes:
    # exchange() raises ValueError on a low-order public key (an all-zero shared secret)
    shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public_key))
    return prg.derive_seed(shared, round, PAIRWISE)


def _public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def _check_node_ids(ids: Iterable[int]) -> None:
    if bad := [i for i in ids if type(i) is not int or i < 0]:
        raise ValueError(f"node ids must be ints >= 0, got {bad!r}")


def _check_vector(v: npt.NDArray[np.uint64], length: int | None = None) -> npt.NDArray[np.uint64]:
    a = np.asarray(v)
    if a.dtype != np.uint64 or a.ndim != 1:
        raise ValueError(f"expected a 1-D uint64 vector (fixedpoint.encode, flattened), got {a.dtype} {a.shape}")
    if length is not None and a.size != length:
        raise ValueError(f"expected {length} elements, got {a.size}")
    return a


__all__ = ["PAIRWISE", "SELF", "Participant", "SharePair", "unmask"]
