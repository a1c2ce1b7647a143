"""platform/ledger/merkle.py: pure checks (the contract accepting its roots and proofs is in
tests/test_training_ledger.py)."""

import pytest
from eth_abi import encode
from eth_utils import keccak

from ledger.merkle import MerkleTree, contribution_leaf, hash_pair, reward_leaf, verify

ACCOUNT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def leaves(n: int) -> list[bytes]:
    return [reward_leaf(7, 3, i, ACCOUNT, 10**18 + i) for i in range(n)]


def test_reward_leaf_is_the_double_hashed_abi_encoding():
    inner = keccak(encode(["uint256", "uint256", "uint256", "address", "uint256"], [7, 3, 2, ACCOUNT, 5]))
    assert reward_leaf(7, 3, 2, ACCOUNT, 5) == keccak(inner)
    # the address's case does not matter; any field changes the leaf
    assert reward_leaf(7, 3, 2, ACCOUNT.lower(), 5) == reward_leaf(7, 3, 2, ACCOUNT, 5)
    assert (
        len(
            {
                reward_leaf(*args)
                for args in [
                    (7, 3, 2, ACCOUNT, 5),
                    (8, 3, 2, ACCOUNT, 5),
                    (7, 4, 2, ACCOUNT, 5),
                    (7, 3, 1, ACCOUNT, 5),
                    (7, 3, 2, ACCOUNT, 6),
                ]
            }
        )
        == 5
    )


def test_contribution_leaf():
    evidence = keccak(b"evidence")
    inner = keccak(encode(["uint256", "uint256", "uint256", "uint256", "bytes32"], [1, 2, 3, 450_000, evidence]))
    assert contribution_leaf(1, 2, 3, 450_000, evidence) == keccak(inner)
    with pytest.raises(ValueError):
        contribution_leaf(1, 2, 3, 450_000, b"short")


def test_pair_hash_is_commutative():
    a, b = keccak(b"a"), keccak(b"b")
    assert hash_pair(a, b) == hash_pair(b, a) == keccak(min(a, b) + max(a, b))


@pytest.mark.parametrize("n", range(1, 18))
def test_every_proof_verifies_and_tampering_fails(n):
    ls = leaves(n)
    tree = MerkleTree(ls)
    assert len(tree) == n
    for i, leaf in enumerate(ls):
        proof = tree.proof(i)
        assert verify(proof, tree.root, leaf), (n, i)
        assert not verify(proof, tree.root, reward_leaf(7, 3, i, ACCOUNT, 10**18 + i + 1))
        if proof:
            bad = list(proof)
            bad[0] = bytes([bad[0][0] ^ 1]) + bad[0][1:]
            assert not verify(bad, tree.root, leaf)
            assert not verify(proof[:-1], tree.root, leaf)
        # another leaf's proof does not prove this one (when the trees differ in that place)
        if n > 1:
            assert not verify(tree.proof((i + 1) % n), tree.root, leaf)


def test_single_leaf_root_is_the_leaf_and_empty_is_refused():
    leaf = leaves(1)[0]
    assert MerkleTree([leaf]).root == leaf and MerkleTree([leaf]).proof(0) == []
    with pytest.raises(ValueError):
        MerkleTree([])
    with pytest.raises(ValueError):
        MerkleTree([b"short"])
    with pytest.raises(IndexError):
        MerkleTree([leaf]).proof(1)


def test_small_trees_by_hand():
    a, b, c = leaves(3)
    assert MerkleTree([a, b]).root == hash_pair(a, b)
    assert MerkleTree([a, b, c]).root == hash_pair(hash_pair(a, b), c)
    assert MerkleTree([a, b, c]).proof(2) == [hash_pair(a, b)]


def test_a_thousand_leaves():
    ls = leaves(1000)
    tree = MerkleTree(ls)
    proofs = [tree.proof(i) for i in range(1000)]
    assert max(len(p) for p in proofs) == 10  # ceil(log2(1000)); carried nodes make some shorter
    assert all(verify(p, tree.root, leaf) for p, leaf in zip(proofs, ls, strict=True))
