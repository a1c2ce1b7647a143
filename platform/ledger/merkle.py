"""Merkle trees and leaves exactly as contracts/TrainingLedger.sol checks them.

Leaves are double-hashed ABI encodings (``keccak256(bytes.concat(keccak256(abi.encode(...))))``),
pairs are hashed sorted (OpenZeppelin ``MerkleProof``, commutative). A level with an odd node
count carries its last node up unhashed, so a proof is just the siblings that exist.
"""

from __future__ import annotations

from collections.abc import Sequence

from eth_abi import encode
from eth_utils import keccak, to_canonical_address

__all__ = ["MerkleTree", "contribution_leaf", "hash_pair", "reward_leaf", "verify"]


def _double_hash(types: list[str], values: list[object]) -> bytes:
    return keccak(keccak(encode(types, values)))


def reward_leaf(job_id: int, round: int, index: int, account: str | bytes, amount: int) -> bytes:
    """The leaf ``claim``/``payBatch`` pay against: abi.encode(uint256 x3, address, uint256)."""
    return _double_hash(
        ["uint256", "uint256", "uint256", "address", "uint256"],
        [job_id, round, index, to_canonical_address(account), amount],
    )


def contribution_leaf(job_id: int, round: int, node_id: int, score_ppm: int, evidence_hash: bytes) -> bytes:
    """A contribution record: abi.encode(uint256 x4, bytes32)."""
    if len(evidence_hash) != 32:
        raise ValueError("evidence_hash must be 32 bytes")
    return _double_hash(
        ["uint256", "uint256", "uint256", "uint256", "bytes32"], [job_id, round, node_id, score_ppm, evidence_hash]
    )


def hash_pair(a: bytes, b: bytes) -> bytes:
    """OpenZeppelin's commutative pair hash: keccak256 of the two nodes, smaller first."""
    return keccak(a + b) if a < b else keccak(b + a)


class MerkleTree:
    """A tree over ``leaves`` in the given order (leaf ``i`` is index ``i``)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a Merkle tree needs at least one leaf")
        for leaf in leaves:
            if len(leaf) != 32:
                raise ValueError("every leaf must be 32 bytes")
        self.levels: list[list[bytes]] = [list(leaves)]
        level = self.levels[0]
        while len(level) > 1:
            up = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                up.append(level[-1])  # odd one out: carried up as is
            self.levels.append(up)
            level = up

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    def __len__(self) -> int:
        return len(self.levels[0])

    def proof(self, i: int) -> list[bytes]:
        """Sibling hashes from leaf ``i`` up to the root."""
        if not 0 <= i < len(self):
            raise IndexError(f"leaf index {i} out of range 0..{len(self) - 1}")
        path = []
        for level in self.levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            i //= 2
        return path


def verify(proof: Sequence[bytes], root: bytes, leaf: bytes) -> bool:
    """``MerkleProof.verify``: fold the proof into the leaf and compare with ``root``."""
    node = leaf
    for sibling in proof:
        node = hash_pair(node, sibling)
    return node == root
