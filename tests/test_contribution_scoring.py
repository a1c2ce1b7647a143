"""Contribution scoring from evidence (peers.scoring, peers.validator): one round of real local
training on digits from a common reference, with honest peers of different data sizes and one
peer of each kind that must earn nothing (random labels, Gaussian noise, an echo, a near echo,
a free rider, NaN, a wrong shape). Scores come from the validator's own data and the models
alone, and are recomputed exactly from the JSON evidence. CPU, a few seconds."""

import json
import math

import numpy as np
import pytest
import torch

from peers import scoring
from peers.attacks import corrupt
from peers.data import LocalData, digits_shards, load_local_data
from peers.models import build_model
from peers.scoring import score_from_evidence, score_round, scores_ppm
from peers.training import LocalTrainer
from peers.validator import Validator

SEED = 0
HIDDEN = 32
BATCH = 32
TWICE, BASE_A, BASE_B, HALF = 1, 2, 3, 4  # honest: 360, 180, 180 and 90 samples
RANDOM_LABELS, NOISE, ECHO, FREE_RIDE, NEAR_ECHO, NAN, SHAPE = 5, 6, 7, 8, 9, 10, 11
HONEST = (TWICE, BASE_A, BASE_B, HALF)
UNPAID = (RANDOM_LABELS, NOISE, ECHO, FREE_RIDE, NEAR_ECHO, NAN, SHAPE)
# declared sample counts, capped by the validator (never a peer's own report); the random-label
# peer and the noise peer declare as much as the largest honest one
DECLARED = {
    TWICE: 360.0,
    BASE_A: 180.0,
    BASE_B: 180.0,
    HALF: 90.0,
    RANDOM_LABELS: 360.0,
    NOISE: 360.0,
    ECHO: 180.0,
    FREE_RIDE: 180.0,
    NEAR_ECHO: 180.0,
    NAN: 180.0,
    SHAPE: 180.0,
}


def mlp() -> torch.nn.Module:
    return build_model("mlp", 64, 10, hidden=HIDDEN, seed=SEED)


def train(start: dict, X: np.ndarray, y: np.ndarray, *, epochs: int, lr: float, seed: int) -> dict:
    data = LocalData(X, y, X[:0], y[:0], num_features=64, num_classes=10)
    trainer = LocalTrainer(mlp(), data, lr=lr, batch_size=BATCH, device="cpu", seed=seed)
    trainer.load_state(start)
    trainer.train(epochs * math.ceil(len(y) / BATCH))
    return trainer.state()


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def round_(one_thread):
    """(validator, reference, updates in arrival order) of one round."""
    shards = digits_shards(10, seed=SEED)
    X_val = np.concatenate([shards[0][0], shards[1][0]])
    y_val = np.concatenate([shards[0][1], shards[1][1]])
    validator = Validator(mlp(), X_val, y_val)
    # the previous round's consensus: 20 epochs on a shard of its own
    init = {k: v.clone() for k, v in mlp().state_dict().items()}
    reference = train(init, *shards[2], epochs=20, lr=0.3, seed=SEED)

    def local(X, y, seed):
        return train(reference, X, y, epochs=5, lr=0.1, seed=seed)

    twice = (np.concatenate([shards[3][0], shards[4][0]]), np.concatenate([shards[3][1], shards[4][1]]))
    rng = np.random.default_rng(SEED)
    updates = {
        TWICE: local(*twice, 1),
        BASE_A: local(*shards[5], 2),
        BASE_B: local(*shards[6], 3),
        HALF: local(shards[7][0][:90], shards[7][1][:90], 4),
        RANDOM_LABELS: local(shards[8][0], rng.integers(0, 10, len(shards[8][1])), 5),
        NOISE: corrupt(reference, "gaussian", reference, seed=SEED),
    }
    updates[ECHO] = {k: v.clone() for k, v in updates[BASE_A].items()}
    updates[FREE_RIDE] = corrupt(updates[BASE_B], "free-ride", reference)
    gen = torch.Generator().manual_seed(SEED)
    # BASE_B's model plus noise of 1% of its step's size (per tensor): a near copy
    updates[NEAR_ECHO] = {
        k: v + 0.01 * (v - reference[k]).norm() / math.sqrt(v.numel()) * torch.randn(v.shape, generator=gen)
        for k, v in updates[BASE_B].items()
    }
    updates[NAN] = corrupt(updates[BASE_A], "nan")
    updates[SHAPE] = corrupt(updates[BASE_A], "shape")
    return validator, reference, updates


@pytest.fixture(scope="module")
def scored(round_):
    validator, reference, updates = round_
    return validator.score(reference, updates)


@pytest.fixture(scope="module")
def scored_weighted(round_):
    validator, reference, updates = round_
    return validator.score(reference, updates, weights=DECLARED)


@pytest.fixture(params=["equal", "declared"])
def result(request, scored, scored_weighted):
    return scored if request.param == "equal" else scored_weighted


# ---------------------------------------------------------------- what a round pays


def test_honest_peers_are_all_paid(result):
    assert all(result.peers[i].score > 0 for i in HONEST), result.scores
    assert all(result.ppm()[i] > 0 for i in HONEST)
    assert all(result.peers[i].status == "ok" and result.peers[i].marginal > 0 for i in HONEST)
    assert result.consensus_loss > 0 and result.reference_loss > 0


def test_twice_the_data_scores_higher_than_half(result):
    s = result.scores
    assert s[TWICE] > s[HALF], s
    assert s[TWICE] > 0.1  # a real share, not a rounding edge


def test_random_labels_earn_nothing(result):
    p = result.peers[RANDOM_LABELS]
    assert p.status == "ok"  # a well-formed model: only its measured value can stop it
    assert p.score == 0.0 and result.ppm()[RANDOM_LABELS] == 0
    assert p.marginal <= 0 or p.agreement <= 0, p


def test_gaussian_noise_earns_nothing(result):
    p = result.peers[NOISE]
    assert p.status == "ok" and p.score == 0.0 and result.ppm()[NOISE] == 0
    assert p.marginal < 0  # it makes the mean worse
    assert p.update_norm > 10 * max(result.peers[i].update_norm for i in HONEST)


def test_echoes_and_free_riders_earn_nothing(result):
    echo, near, free = result.peers[ECHO], result.peers[NEAR_ECHO], result.peers[FREE_RIDE]
    assert (echo.status, echo.duplicate_of, echo.score) == ("duplicate", BASE_A, 0.0)
    assert (near.status, near.duplicate_of, near.score) == ("duplicate", BASE_B, 0.0)
    assert (free.status, free.duplicate_of, free.score) == ("no-update", None, 0.0)
    assert free.update_norm == 0.0
    # the copied peers keep their own score: the first model received is the original
    assert result.scores[BASE_A] > 0 and result.scores[BASE_B] > 0


def test_malformed_updates_score_zero_with_a_reason(result):
    nan, shape = result.peers[NAN], result.peers[SHAPE]
    assert (nan.status, nan.score) == ("rejected", 0.0) and "NaN" in nan.reason
    assert (shape.status, shape.score) == ("rejected", 0.0) and "shape" in shape.reason
    rows = {r["node_id"]: r for r in result.as_evidence()["peers"]}
    assert "NaN" in rows[NAN]["reason"] and "shape" in rows[SHAPE]["reason"]


def test_scores_and_ppm_add_up(result):
    s = result.scores
    assert set(s) == set(HONEST) | set(UNPAID)
    assert all(0.0 <= v <= 1.0 for v in s.values())
    assert math.isclose(sum(s.values()), 1.0, rel_tol=1e-12)
    ppm = result.ppm()
    assert sum(ppm.values()) == 1_000_000
    assert all(ppm[i] == 0 for i in UNPAID)
    assert all(abs(ppm[i] - s[i] * 1_000_000) <= 1 for i in s)


def test_evidence_recomputes_the_scores_exactly_after_json(result):
    evidence = result.as_evidence()
    text = json.dumps(evidence, allow_nan=False)  # plain JSON: no NaN, no tensor, no numpy
    again = json.loads(text)
    assert score_from_evidence(again) == result.scores  # exact float equality
    assert again["method"] == "shapley" and again["passes"][0]["members"] == sorted(
        i for i in result.peers if result.peers[i].status == "ok"
    )

    def leaves(x):
        if isinstance(x, dict):
            assert all(isinstance(k, str) for k in x)
            for v in x.values():
                yield from leaves(v)
        elif isinstance(x, list):
            for v in x:
                yield from leaves(v)
        else:
            yield x

    assert all(type(v) in (int, float, str) for v in leaves(evidence))
    # the numbers in it are what the scores follow: lowering the loss of a coalition that holds
    # the half-data peer raises what it is paid
    for row in again["coalitions"]:
        if HALF in row["members"]:
            row["loss"] -= 0.05
    assert score_from_evidence(again)[HALF] > result.scores[HALF]


def test_evidence_that_does_not_add_up_is_refused(scored):
    evidence = scored.as_evidence()
    evidence["passes"][1]["members"] = evidence["passes"][0]["members"]  # keep a dropped peer in
    with pytest.raises(ValueError, match="pass over"):
        score_from_evidence(evidence)


def test_scoring_is_deterministic(round_, scored):
    validator, reference, updates = round_
    assert validator.score(reference, updates).as_evidence() == scored.as_evidence()


def test_harmful_peers_are_dropped_before_the_others_are_valued(scored):
    """Pass 1 values everyone; the noise peer's negative value drops it, and pass 2 values the
    others without it, so nobody is credited for diluting it."""
    passes = scored.as_evidence()["passes"]
    assert len(passes) == 2
    assert NOISE in passes[0]["members"] and NOISE not in passes[1]["members"]
    assert set(passes[1]["members"]) >= set(HONEST)
    assert set(scored.helpful) == set(HONEST)


def test_leave_one_out_stops_the_same_peers(round_):
    validator, reference, updates = round_
    loo = score_round(reference, updates, validator.evaluate, method="loo")
    assert all(loo.peers[i].score == 0.0 for i in UNPAID)
    assert all(loo.peers[i].score > 0 for i in HONEST), loo.scores
    assert loo.scores[TWICE] > loo.scores[HALF]
    assert set(loo.loo_losses) == {i for i, p in loo.peers.items() if p.status == "ok"}
    assert score_from_evidence(json.loads(json.dumps(loo.as_evidence()))) == loo.scores


# ---------------------------------------------------------------- pieces


def test_validator_loss_is_the_trainers_eval_loss(one_thread):
    data = load_local_data("digits:0/4", seed=SEED)
    validator = Validator.from_local_data(mlp(), data)
    trainer = LocalTrainer(mlp(), data, lr=0.1, batch_size=BATCH, device="cpu")
    trainer.train(5)
    assert validator.evaluate(trainer.state()) == pytest.approx(trainer.evaluate().loss, rel=1e-5)


class Exploding(dict):
    """A state dict that raises when read: what a broken decoder might hand over."""

    def __getitem__(self, key):
        raise RuntimeError("truncated payload")


def toy_evaluate(state):
    """A quadratic bowl around (1, 1, 1, 1): a peer that moves towards it helps."""
    return float(((state["w"] - 1.0) ** 2).sum())


def toy(values):
    return {"w": torch.tensor(values, dtype=torch.float32), "steps": torch.tensor(7)}


def test_marginals_agreement_and_bad_inputs_on_a_toy_bowl():
    reference = toy([0.0, 0.0, 0.0, 0.0])
    updates = {
        10: toy([1.0, 1.0, 0.0, 0.0]),  # half the way, on two axes
        11: toy([0.0, 0.0, 1.0, 1.0]),  # the other half: complementary
        12: toy([-1.0, -1.0, -1.0, -1.0]),  # away from the target
        13: {"w": torch.zeros(5), "steps": torch.tensor(7)},  # wrong shape
        14: {"w": torch.full((4,), float("inf")), "steps": torch.tensor(7)},  # not finite
        15: {"v": torch.zeros(4)},  # wrong names
        16: "not a model",  # not a state dict
        17: {"w": torch.zeros(4, dtype=torch.int64), "steps": torch.tensor(7)},  # wrong dtype
        18: Exploding(w=None, steps=None),  # raises when read
    }
    result = score_round(reference, updates, toy_evaluate)
    # exact Shapley (2 peers left in pass 2): symmetric peers share equally
    assert result.scores[10] == result.scores[11] == 0.5
    assert result.peers[12].score == 0 and result.peers[12].marginal < 0 and result.peers[12].agreement < 0
    assert "truncated payload" in result.peers[18].reason
    for i in (13, 14, 15, 16, 17, 18):
        assert result.peers[i].status == "rejected" and result.peers[i].reason and result.peers[i].score == 0
    # with the helpful peers' consensus, itself included: complementary peers still agree
    assert result.peers[10].agreement == pytest.approx(math.sqrt(0.5))
    assert result.peers[12].agreement == pytest.approx(-1.0)
    assert result.reference_loss == 4.0
    assert torch.equal(result.consensus["steps"], torch.tensor(7))  # integer tensors kept as they were
    json.dumps(result.as_evidence(), allow_nan=False)


def test_agreement_and_marginal_multiply():
    reference = toy([0.0, 0.0, 0.0, 0.0])
    updates = {1: toy([0.5, 0.5, 0.5, 0.5]), 2: toy([0.6, 0.6, 0.4, 0.4]), 3: toy([0.25, 0.25, 0.25, 0.25])}
    result = score_round(reference, updates, toy_evaluate, method="loo")
    raw = {i: max(0.0, p.marginal) * max(0.0, p.agreement) for i, p in result.peers.items()}
    total = sum(raw.values())
    assert result.scores == pytest.approx({i: v / total for i, v in raw.items()})
    assert all(0 < p.agreement <= 1 for p in result.peers.values())


def test_nothing_eligible_scores_all_zero():
    reference = toy([0.0, 0.0, 0.0, 0.0])
    result = score_round(reference, {1: dict(reference), 2: toy([float("nan")] * 4)}, toy_evaluate)
    assert result.scores == {1: 0.0, 2: 0.0}
    assert scores_ppm(result.scores) == {1: 0, 2: 0}
    assert score_from_evidence(json.loads(json.dumps(result.as_evidence()))) == result.scores
    assert score_round(reference, {}, toy_evaluate).scores == {}


def test_weights_must_be_positive_and_finite():
    reference = toy([0.0, 0.0, 0.0, 0.0])
    updates = {1: toy([0.5, 0.5, 0.5, 0.5]), 2: toy([0.4, 0.4, 0.4, 0.4]), 3: toy([0.3, 0.6, 0.3, 0.3])}
    result = score_round(reference, updates, toy_evaluate, weights={1: 1.0, 2: float("nan")})
    assert result.peers[1].status == "ok"
    assert result.peers[2].status == "rejected" and "weight" in result.peers[2].reason
    assert result.peers[3].status == "rejected" and "weight" in result.peers[3].reason
    numpy_weights = {1: np.float64(2.0), 2: np.int64(1), 3: 0.5}
    assert all(
        p.status == "ok" for p in score_round(reference, updates, toy_evaluate, weights=numpy_weights).peers.values()
    )
    with pytest.raises(ValueError, match="method"):
        score_round(reference, updates, toy_evaluate, method="self-reported")


def test_a_non_finite_loss_counts_as_the_cap():
    reference = toy([0.0, 0.0, 0.0, 0.0])
    result = score_round(reference, {1: toy([1.0, 1.0, 1.0, 1.0])}, lambda s: float(s["w"].sum()) or float("nan"))
    assert result.reference_loss == scoring.LOSS_CAP
    json.dumps(result.as_evidence(), allow_nan=False)


def test_floor_pays_nothing_for_noise_level_contributions():
    def evidence(agreements):
        return {
            "method": "loo",
            "params": {"floor": 0.05, "max_passes": 2},
            "coalitions": [
                {"members": [], "loss": 2.0},
                {"members": [1, 2, 3], "loss": 1.0},
                {"members": [2, 3], "loss": 1.5},
                {"members": [1, 3], "loss": 1.5},
                {"members": [1, 2], "loss": 1.5},
            ],
            "passes": [{"members": [1, 2, 3], "permutations": []}],
            "peers": [{"node_id": i, "status": "ok", "agreement": a} for i, a in zip((1, 2, 3), agreements)],
        }

    # raw 0.5, 0.5, 0.01: the third is below 5% of the mean positive raw score (0.337)
    assert score_from_evidence(evidence([1.0, 1.0, 0.02])) == {1: 0.5, 2: 0.5, 3: 0.0}
    assert score_from_evidence(evidence([1.0, 1.0, 0.4]))[3] == pytest.approx(0.2 / 1.2)


def test_ppm_largest_remainder_ties_to_the_lowest_id():
    assert scores_ppm({3: 1 / 3, 1: 1 / 3, 2: 1 / 3}) == {3: 333_333, 1: 333_334, 2: 333_333}
    assert scores_ppm({5: 0.0, 6: 0.0}) == {5: 0, 6: 0}
    assert scores_ppm({1: 1e-9, 2: 0.0, 3: float("nan"), 4: -1.0}) == {1: 1_000_000, 2: 0, 3: 0, 4: 0}
    odd = {i: 1 / 7 for i in range(7)}
    ppm = scores_ppm(odd)
    assert sum(ppm.values()) == 1_000_000 and sorted(ppm.values()) == [142_857] * 6 + [142_858]
    assert ppm[0] == 142_858
    rng = np.random.default_rng(SEED)
    for _ in range(50):
        raw = rng.random(rng.integers(1, 30))
        raw[raw < 0.3] = 0
        s = {i: float(v) for i, v in enumerate(raw)}
        ppm = scores_ppm(s)
        assert sum(ppm.values()) == (1_000_000 if any(s.values()) else 0)
        assert all(ppm[i] == 0 for i, v in s.items() if v == 0)
