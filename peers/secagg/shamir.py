"""Shamir t-of-n secret sharing of a 32-byte secret over the prime field GF(2^521 - 1).

The secret is the constant term of a random polynomial of degree t - 1; share ``i`` is its value
at x = i. Any t shares determine the polynomial (Lagrange interpolation at 0); t - 1 shares are
consistent with every possible secret, so they reveal nothing. The Mersenne prime 2^521 - 1
holds any 32-byte secret with room to spare, and that room is a check: a wrong reconstruction
(too few, corrupted or mixed shares) lands in the 32-byte range with probability 2^-265, so
``combine`` refuses it instead of returning garbage.
"""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1
SECRET_LEN = 32


def split(secret: bytes, threshold: int, share_ids: list[int]) -> dict[int, int]:
    """``{id: share}`` for each id in ``share_ids`` (distinct, in [1, PRIME)); any ``threshold``
    of them recover ``secret``. Randomness from ``secrets``."""
    if len(secret) != SECRET_LEN:
        raise ValueError(f"secret must be {SECRET_LEN} bytes, got {len(secret)}")
    _check_ids(share_ids)
    if type(threshold) is not int or not 1 <= threshold <= len(share_ids):
        raise ValueError(f"threshold must be an int in [1, {len(share_ids)}], got {threshold!r}")
    coefs = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: _evaluate(coefs, x) for x in share_ids}


def combine(shares: dict[int, int], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (the ``threshold`` lowest ids are used).
    ``ValueError`` on too few shares, bad ids or values, or a result that is not a 32-byte secret."""
    if type(threshold) is not int or threshold < 1:
        raise ValueError(f"threshold must be a positive int, got {threshold!r}")
    if len(shares) < threshold:
        raise ValueError(f"too few shares: {len(shares)} given, {threshold} needed")
    _check_ids(list(shares))
    if any(type(y) is not int or not 0 <= y < PRIME for y in shares.values()):
        raise ValueError("share values must be ints in [0, PRIME)")
    xs = sorted(shares)[:threshold]
    secret = 0
    for i in xs:  # Lagrange basis at 0: prod_{j != i} x_j / (x_j - x_i)
        num = den = 1
        for j in xs:
            if j != i:
                num = num * j % PRIME
                den = den * (j - i) % PRIME
        secret = (secret + shares[i] * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * SECRET_LEN):
        raise ValueError("shares do not reconstruct a 32-byte secret: too few, corrupted or mixed shares")
    return secret.to_bytes(SECRET_LEN, "big")


def _evaluate(coefs: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coefs):  # Horner
        acc = (acc * x + c) % PRIME
    return acc


def _check_ids(ids: list[int]) -> None:
    if any(type(i) is not int or not 0 < i < PRIME for i in ids):
        raise ValueError(f"share ids must be ints in [1, PRIME) (0 is where the secret lies), got {ids!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate share ids: {ids!r}")


__all__ = ["PRIME", "SECRET_LEN", "combine", "split"]
