"""Seeds to masks: HKDF-SHA256 derives a fresh 32-byte seed per (secret, round, purpose), and
AES-256-CTR expands a seed into a vector of uniform uint64 ring elements.

Why the all-zero CTR nonce is safe here: CTR breaks when one (key, nonce) pair encrypts two
different messages, because their keystreams cancel. Here no message is encrypted: the
keystream itself is the output, and the key is a seed that ``derive_seed`` makes unique per
secret, round and purpose, then uses for exactly one vector. Re-expanding the same seed gives the
same vector on purpose: both ends of a pair, and the server after a dropout, must all produce
the identical mask. The 128-bit counter starts at zero and cannot wrap for any vector that fits
in memory (2^132 bytes).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_LEN = 32
_NONCE = bytes(16)
_INFO_PREFIX = b"dfl-secagg/v1"


def check_round(round: int) -> None:
    """``ValueError`` unless ``round`` fits the 8 bytes it takes in the HKDF info."""
    if type(round) is not int or not 0 <= round < 2**64:
        raise ValueError(f"round must be an int in [0, 2**64), got {round!r}")


def derive_seed(secret: bytes, round: int, purpose: str) -> bytes:
    """A 32-byte seed from ``secret`` (a Diffie-Hellman output or a self-mask seed) bound to the
    ``round`` and the ``purpose`` label, so that reusing a key across rounds never reuses a mask
    and one secret never feeds two different uses."""
    check_round(round)
    if not purpose or "\x00" in purpose:
        raise ValueError(f"purpose must be a non-empty label without NUL, got {purpose!r}")
    # NUL-separated, fixed-width round: no two (purpose, round) pairs give the same info
    info = b"\x00".join([_INFO_PREFIX, purpose.encode(), round.to_bytes(8, "big")])
    return HKDF(algorithm=hashes.SHA256(), length=SEED_LEN, salt=None, info=info).derive(secret)


def expand(seed: bytes, length: int) -> npt.NDArray[np.uint64]:
    """``length`` uniform uint64 values from a 32-byte ``seed``: the AES-256-CTR keystream
    (nonce zero, see the module docstring) read as little-endian words. Read-only: add it, don't
    write to it."""
    if len(seed) != SEED_LEN:
        raise ValueError(f"seed must be {SEED_LEN} bytes, got {len(seed)}")
    if type(length) is not int or length < 0:
        raise ValueError(f"length must be a non-negative int, got {length!r}")
    enc = Cipher(algorithms.AES(seed), modes.CTR(_NONCE)).encryptor()
    stream = enc.update(bytes(8 * length)) + enc.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64, copy=False)


__all__ = ["SEED_LEN", "check_round", "derive_seed", "expand"]
