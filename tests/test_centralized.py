"""Centralized baselines through the star: FedAvg, FedProx, FedAdam; and the check that
DPASGD with tau = 1 on the complete graph behaves like FedAvg."""

import pytest
import torch

from peers.centralized import FedAdam, proximal
from peers.simulate import SimConfig, run_simulation


def sim(**kw):
    base = dict(peers=4, rounds=6, partition="iid", local_steps=10, lr=0.3, hidden=32, device="cpu", seed=3)
    return run_simulation(SimConfig(**{**base, **kw}))


@pytest.mark.parametrize("rule, params", [("fedavg", {}), ("fedprox", {"mu": 0.1}), ("fedadam", {"server_lr": 0.05})])
def test_server_rules_learn(rule, params):
    result = sim(topology="star", rule=rule, rule_params=params)
    assert result.rounds[-1].global_accuracy > 0.85
    assert result.rounds[-1].global_accuracy > result.rounds[0].global_accuracy


def test_tau_one_on_the_complete_graph_behaves_like_fedavg():
    gossip = sim(topology="complete", rule="mean", local_steps=1, rounds=40)
    fedavg = sim(topology="star", rule="fedavg", local_steps=1, rounds=40)
    curve = [abs(a.global_accuracy - b.global_accuracy) for a, b in zip(gossip.rounds, fedavg.rounds)]
    assert max(curve[5:]) < 0.05, curve
    assert abs(gossip.final_global_accuracy - fedavg.final_global_accuracy) < 0.02


def test_proximal_term_pulls_towards_the_anchor():
    model = torch.nn.Linear(3, 1, bias=False)
    anchor = {"weight": torch.zeros(1, 3)}
    with torch.no_grad():
        model.weight.fill_(2.0)
    with proximal(model, anchor, mu=0.5):
        model(torch.zeros(1, 3)).sum().backward()  # data gradient is zero here
    assert torch.allclose(model.weight.grad, torch.full((1, 3), 1.0))  # mu * (w - anchor)
    model.weight.grad = None
    model(torch.zeros(1, 3)).sum().backward()  # the hook is gone
    assert torch.count_nonzero(model.weight.grad) == 0


def test_fedadam_moves_along_the_pseudo_gradient():
    server = FedAdam(lr=0.1)
    g = {"w": torch.zeros(4)}
    out = server.step(g, {"w": torch.tensor([1.0, -1.0, 0.0, 2.0])})
    assert out["w"][0] > 0 > out["w"][1] and out["w"][2] == 0
