"""The simulated Byzantine peers (peers.attacks): what each mode sends, that the honest peer's
code knows nothing of them, and that a job with an attacker of each new kind still runs (its
weights are well-formed, so only a robust rule or detection can stop it)."""

import asyncio
import inspect

import numpy as np
import pytest
import torch

from peers.attacks import ATTACK_MODES, ByzantinePeer, corrupt, flip_labels, make_peer
from peers.data import load_local_data
from peers.transport.memory import MemoryTransport
from peers.wire.signing import NodeKey
from peers.worker import Peer
from tests.federation import run_federation


def states():
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(8, 4, generator=gen), "b": torch.randn(4, generator=gen), "steps": torch.tensor(3)}
    trained = {k: (v + 0.1 if v.is_floating_point() else v) for k, v in start.items()}
    return start, trained


def test_sign_flip_sends_the_update_reversed():
    start, trained = states()
    sent = corrupt(trained, "sign-flip", start)
    torch.testing.assert_close(sent["w"] - start["w"], -(trained["w"] - start["w"]))
    assert sent["steps"].item() == 3


def test_free_ride_sends_the_starting_model():
    start, trained = states()
    sent = corrupt(trained, "free-ride", start)
    assert all(torch.equal(sent[k], start[k]) for k in start)


def test_gaussian_sends_seeded_noise_around_the_start():
    start, trained = states()
    a, b, c = (corrupt(trained, "gaussian", start, seed=s) for s in (1, 1, 2))
    assert torch.equal(a["w"], b["w"]) and not torch.equal(a["w"], c["w"])
    assert torch.isfinite(a["w"]).all()
    assert float((a["w"] - start["w"]).std()) > 2 * float(start["w"].std())


def test_modes_that_need_the_start_refuse_without_it_and_unknown_modes_fail():
    _, trained = states()
    for mode in ("sign-flip", "gaussian", "free-ride"):
        with pytest.raises(ValueError, match="starting model"):
            corrupt(trained, mode)
    with pytest.raises(ValueError, match="unknown attack"):
        corrupt(trained, "backdoor")


def test_label_flip_changes_only_the_training_labels():
    data = load_local_data("digits:0/4")
    flipped = flip_labels(data)
    assert np.array_equal(flipped.y_train, data.num_classes - 1 - data.y_train)
    assert flipped.y_train.dtype == data.y_train.dtype
    assert np.array_equal(flipped.y_eval, data.y_eval) and flipped.X_train is data.X_train


def test_make_peer_picks_the_class_and_the_honest_peer_knows_no_attack():
    data, transport = load_local_data("digits:0/4"), MemoryTransport()
    kinds = {}
    for mode in ATTACK_MODES:
        peer = make_peer(1, NodeKey.generate(), data, transport, None, platform_key="ab" * 32, attack=mode)
        kinds[mode] = type(peer)
    assert kinds["none"] is Peer and kinds["label-flip"] is Peer
    assert all(kinds[m] is ByzantinePeer for m in ATTACK_MODES if m not in ("none", "label-flip"))
    assert "self.attack" not in inspect.getsource(Peer)  # the honest send path has no attack branch


@pytest.mark.parametrize("mode", ["sign-flip", "gaussian", "free-ride", "label-flip"])
def test_a_job_with_an_attacker_runs_and_its_weights_are_accepted(mode):
    reports, _, _ = asyncio.run(run_federation(4, 2, graph="complete", attacks={2: mode}))
    assert len(reports) == 8
    honest = [r for r in reports if r["node_id"] != 2]
    assert all(not r["rejected"] for r in honest)  # well-formed: nothing to reject on the wire


def simulate(rule: str, attackers: int, attack: str = "gaussian"):
    from peers.simulate import SimConfig, run_simulation

    cfg = SimConfig(
        peers=8,
        topology="complete",
        rule=rule,
        rounds=15,
        partition="iid",
        device="cpu",
        attack=attack if attackers else "none",
        attackers=attackers,
    )
    return run_simulation(cfg).rounds[-1].global_accuracy


def test_two_noisy_attackers_of_eight_break_the_mean_not_the_median():
    """`python -m peers simulate --attack gaussian --attackers 2`: accuracy is the honest peers'."""
    assert simulate("mean", 2) < 0.5
    assert simulate("median", 2) > 0.8


def test_simulate_refuses_attackers_it_cannot_place():
    from peers.simulate import SimConfig, run_simulation

    for bad in (
        {"attack": "gaussian", "attackers": 0},
        {"attack": "none", "attackers": 2},
        {"attack": "gaussian", "attackers": 8},
        {"attack": "gaussian", "attackers": 1, "topology": "star", "rule": "fedavg"},
        {"attack": "backdoor", "attackers": 1},
    ):
        with pytest.raises(ValueError):
            run_simulation(SimConfig(**{"peers": 8, "rounds": 1, "device": "cpu", **bad}))
