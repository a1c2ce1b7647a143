"""Secure aggregation (peers/secagg): fixed point, Shamir sharing, and the masked round with and
without dropouts. Pure: no service, no network."""

import hashlib
import itertools
import secrets

import numpy as np
import pytest
from scipy import stats

from peers.secagg import Participant, decode, encode, max_abs, shamir, unmask
from peers.secagg.fixedpoint import SCALE_BITS


def rel_err(got, want):
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def fixed_secret(*labels) -> bytes:
    return hashlib.sha256(repr(labels).encode()).digest()


def make_round(ids, threshold, round=0, seeded=False):
    """Participants (seeded: keys and seeds fixed by id, so the test is reproducible), their
    public keys, and held[k][j]: the shares participant k received from j."""
    kw = (
        (lambda i: {"mask_key": fixed_secret("key", i), "self_seed": fixed_secret("seed", i, round)})
        if seeded
        else None
    )
    parts = {i: Participant(i, round, threshold, **(kw(i) if kw else {})) for i in ids}
    pks = {i: p.public_key for i, p in parts.items()}
    held: dict[int, dict] = {k: {} for k in ids}
    for j, p in parts.items():
        for k, pair in p.share_secrets(ids).items():
            held[k][j] = pair
    return parts, pks, held


def run_round(inputs, threshold, dropped=(), round=0, seeded=False):
    """Mask every input, sum those that arrive (all but ``dropped``), collect the survivors'
    reveals and unmask; returns the encoded sum."""
    ids = sorted(inputs)
    parts, pks, held = make_round(ids, threshold, round, seeded)
    length = len(next(iter(inputs.values())))
    masked = {i: parts[i].mask(encode(inputs[i], summands=len(ids)), pks) for i in ids}
    survivors = [i for i in ids if i not in dropped]
    total = np.sum([masked[i] for i in survivors], axis=0, dtype=np.uint64)
    reveals = {k: parts[k].reveal(survivors, dropped, held[k]) for k in survivors}
    return unmask(total, survivors, dropped, pks, reveals, threshold, round, length)


# fixed point


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fixed_point_round_trip(dtype):
    x = np.random.default_rng(0).normal(0, 3, size=(50, 40)).astype(dtype)
    enc = encode(x)
    assert enc.dtype == np.uint64 and enc.shape == x.shape
    back = decode(enc)
    assert np.abs(back - x.astype(np.float64)).max() <= 2.0 ** -(SCALE_BITS + 1)
    assert rel_err(back, x.astype(np.float64)) < 1e-6


def test_sum_of_n_encodings_decodes_to_the_plain_sum():
    rng = np.random.default_rng(1)
    xs = [rng.normal(0, 1, 10_000).astype(np.float32) for _ in range(12)]
    total = np.sum([encode(x, summands=12) for x in xs], axis=0, dtype=np.uint64)  # wraps mod 2^64
    plain = np.sum([x.astype(np.float64) for x in xs], axis=0)
    assert rel_err(decode(total), plain) < 1e-6


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_fixed_point_refuses_non_finite(bad):
    x = np.zeros(8, dtype=np.float32)
    x[3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        encode(x)


def test_fixed_point_refuses_magnitudes_that_could_overflow_the_sum():
    n = 10
    limit = max_abs(n)
    assert limit == 2.0 ** (63 - SCALE_BITS) / n
    below = np.nextafter(limit, 0)
    total = np.sum([encode(np.array([below, -below]), summands=n)] * n, axis=0, dtype=np.uint64)
    assert np.allclose(decode(total), [n * below, -n * below])  # the largest allowed sum does not wrap
    for x in (limit, -limit, 1e30, np.finfo(np.float32).max):
        with pytest.raises(ValueError, match="overflow"):
            encode(np.array([0.0, x]), summands=n)
    encode(np.array([limit]), summands=1)  # fine alone
    with pytest.raises(ValueError, match="float"):
        encode(np.arange(4))
    with pytest.raises(ValueError, match="summands"):
        encode(np.zeros(4), summands=0)


# the masked round


def test_masked_sum_without_dropout_is_the_plain_sum():
    rng = np.random.default_rng(2)
    inputs = {i: rng.normal(0, 0.05, 5_000).astype(np.float32) for i in (0, 3, 4, 9, 12)}
    out = run_round(inputs, threshold=3)
    plain = np.sum([x.astype(np.float64) for x in inputs.values()], axis=0)
    assert rel_err(decode(out), plain) < 1e-6


def test_a_masked_update_looks_uniform_and_the_plain_one_does_not():
    ids = [1, 2, 3, 4, 5]
    parts, pks, _ = make_round(ids, threshold=3, seeded=True)
    encoded = encode(np.random.default_rng(3).normal(0, 0.01, 20_000), summands=len(ids))

    def top_bits_as_unit(v):
        return (v >> np.uint64(32)).astype(np.float64) / 2.0**32

    assert stats.kstest(top_bits_as_unit(parts[1].mask(encoded, pks)), "uniform").pvalue > 0.01
    assert stats.kstest(top_bits_as_unit(encoded), "uniform").pvalue < 1e-6


def test_dropouts_after_masking_are_recovered_exactly():
    rng = np.random.default_rng(4)
    inputs = {i: rng.normal(0, 1, 3_000) for i in range(7)}
    dropped = [2, 5]
    out = run_round(inputs, threshold=4, dropped=dropped)
    expected = np.sum([encode(x, summands=7) for i, x in inputs.items() if i not in dropped], axis=0, dtype=np.uint64)
    assert np.array_equal(out, expected)


def test_too_few_reveals_cannot_unmask():
    ids = list(range(7))
    parts, pks, held = make_round(ids, threshold=4)
    masked = {i: parts[i].mask(encode(np.ones(100), summands=7), pks) for i in ids}
    survivors, dropped = [0, 1, 2, 3], [4, 5, 6]
    total = np.sum([masked[i] for i in survivors], axis=0, dtype=np.uint64)
    reveals = {k: parts[k].reveal(survivors, dropped, held[k]) for k in survivors[:3]}  # one short
    with pytest.raises(ValueError, match=r"cannot recover .* too few shares: 3 given, 4 needed"):
        unmask(total, survivors, dropped, pks, reveals, 4, 0, 100)
    # and a participant refuses to help unmask fewer inputs than the threshold
    with pytest.raises(ValueError, match="only 3 survivors, threshold 4"):
        parts[3].reveal([0, 1, 3], [2, 4, 5, 6], held[3])


def test_a_participant_never_reveals_both_secrets_of_a_peer():
    ids = list(range(5))
    parts, _, held = make_round(ids, threshold=3)
    p = parts[0]
    with pytest.raises(ValueError, match="both survivors and dropped"):
        p.reveal([0, 1, 2, 3], [3, 4], held[0])
    p.reveal([0, 1, 2, 3], [4], held[0])
    with pytest.raises(ValueError, match=r"\[3, 4\] had the other secret revealed"):
        p.reveal([0, 1, 2, 4], [3], held[0])  # a second ask with 3 and 4 swapped
    assert p.reveal([0, 1, 2, 3], [4], held[0])  # the same answer again is fine


def test_bad_revealed_shares_are_detected():
    ids = list(range(5))
    parts, pks, held = make_round(ids, threshold=3)
    survivors, dropped = [0, 1, 2, 3], [4]
    reveals = {k: parts[k].reveal(survivors, dropped, held[k]) for k in survivors}
    reveals[0][4] = (reveals[0][4] + 1) % shamir.PRIME
    with pytest.raises(ValueError, match="peer 4"):
        unmask(np.zeros(10, dtype=np.uint64), survivors, dropped, pks, reveals, 3, 0, 10)


def test_a_participant_masks_one_input_per_round():
    p = Participant(0, 0, 1)
    p.mask(np.zeros(4, dtype=np.uint64), {})
    with pytest.raises(ValueError, match="already masked"):
        p.mask(np.ones(4, dtype=np.uint64), {})  # y1 - y2 would be x1 - x2


def test_masks_differ_between_rounds():
    ids, zeros = [1, 2, 3], np.zeros(1_000, dtype=np.uint64)
    key, seed = fixed_secret("key", 1), fixed_secret("seed", 1)
    peers = {i: Participant(i, 0, 2, mask_key=fixed_secret("key", i)).public_key for i in ids}

    def masks(round):
        def fresh():
            return Participant(1, round, 2, mask_key=key, self_seed=seed)

        return fresh().mask(zeros, peers), fresh().mask(zeros, {})  # all masks, the self mask alone

    (all_r, self_r), (all_next, self_next) = masks(7), masks(8)
    assert np.array_equal(masks(7)[0], all_r)  # deterministic given keys and seed
    assert not np.any(self_r == self_next)
    assert not np.any((all_r - self_r) == (all_next - self_next))  # the pairwise part too


# Shamir


def test_shamir_any_t_of_n_shares_recover():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 4, [1, 2, 3, 5, 8, 13, 21])
    for ids in itertools.combinations(shares, 4):
        assert shamir.combine({i: shares[i] for i in ids}, 4) == secret
    assert shamir.combine(shares, 4) == secret
    assert shamir.combine(shamir.split(secret, 1, [9]), 1) == secret


def lagrange_at(points: dict[int, int], x: int) -> int:
    p = shamir.PRIME
    total = 0
    for i, y in points.items():
        term = y
        for j in points:
            if j != i:
                term = term * (x - j) * pow(i - j, -1, p) % p
        total += term
    return total % p


def test_shamir_t_minus_1_shares_do_not_recover():
    secret = secrets.token_bytes(32)
    shares = shamir.split(secret, 4, [1, 2, 3, 4, 5, 6, 7])
    three = {i: shares[i] for i in (2, 4, 7)}
    with pytest.raises(ValueError, match="too few shares: 3 given, 4 needed"):
        shamir.combine(three, 4)
    with pytest.raises(ValueError, match=r"not .*32-byte secret"):  # pretend t = 3: garbage, caught
        shamir.combine(three, 3)
    # three shares fit every secret equally well: complete them with a fourth towards any other
    other = secrets.token_bytes(32)
    forged = lagrange_at({0: int.from_bytes(other, "big")} | three, 9)
    assert shamir.combine(three | {9: forged}, 4) == other != secret


def test_shamir_bad_inputs_raise():
    s = bytes(32)
    for secret, t, ids, match in [
        (b"short", 2, [1, 2, 3], "32 bytes"),
        (s, 0, [1, 2, 3], "threshold"),
        (s, 4, [1, 2, 3], "threshold"),
        (s, 2, [1, 2, 2], "duplicate"),
        (s, 2, [0, 1, 2], "share ids"),
        (s, 2, [-1, 1, 2], "share ids"),
        (s, 2, [1, shamir.PRIME], "share ids"),
    ]:
        with pytest.raises(ValueError, match=match):
            shamir.split(secret, t, ids)
    shares = shamir.split(s, 2, [1, 2, 3])
    with pytest.raises(ValueError, match="too few"):
        shamir.combine({1: shares[1]}, 2)
    with pytest.raises(ValueError, match="share ids"):
        shamir.combine({0: 5, 1: shares[1]}, 2)
    with pytest.raises(ValueError, match="share values"):
        shamir.combine({1: shares[1], 2: shamir.PRIME}, 2)
    with pytest.raises(ValueError, match="threshold"):
        shamir.combine(shares, 0)
