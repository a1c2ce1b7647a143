"""peers.rules.clipped_gossip: the peer's own model plus each neighbour's pull clipped to tau
(adaptive: the (m - f)-th smallest distance). Exact on hand-computed inputs; attackers that
scale, flip or add noise move a peer by at most their weight times tau."""

import pytest
import torch

from peers.rules import get_rule
from peers.rules.clipped_gossip import adaptive_tau

rule = get_rule("clipped_gossip")


def state(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32), "steps": torch.tensor(3)}


def test_without_clipping_it_is_the_weighted_mean():
    ups = [state(0.0, 0.0), state(1.0, 0.0), state(0.0, 2.0)]
    out = rule(ups, [0.5, 0.25, 0.25])  # f = 0: tau is the farthest distance, nobody is clipped
    torch.testing.assert_close(out["w"], torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(out["w"], get_rule("mean")(ups, [0.5, 0.25, 0.25])["w"])
    assert out["steps"].dtype == torch.int64


def test_the_farthest_f_are_pulled_in_to_the_adaptive_tau():
    own = state(0.0)
    ups = [own, state(1.0), state(2.0), state(100.0)]  # distances 1, 2, 100; f = 1 -> tau = 2
    out = rule(ups, f=1)
    # 0 + (1 + 2 + 2 * sign(100)) / 4 with equal weights
    torch.testing.assert_close(out["w"], torch.tensor([(1.0 + 2.0 + 2.0) / 4]))
    assert adaptive_tau([1.0, 2.0, 100.0], 1) == 2.0 and adaptive_tau([1.0], 1) == 0.0


def test_a_given_tau_overrides_and_tau_zero_keeps_the_own_model():
    ups = [state(0.0, 0.0), state(3.0, 4.0)]  # distance 5
    torch.testing.assert_close(rule(ups, tau=1.0)["w"], torch.tensor([0.3, 0.4]))  # pulled 1 along, halved
    torch.testing.assert_close(rule(ups, f=1)["w"], torch.tensor([0.0, 0.0]))  # the one neighbour distrusted


@pytest.mark.parametrize("attack", ["scale", "sign-flip", "noise"])
def test_attackers_move_a_peer_by_at_most_their_weight_times_tau(attack):
    g = torch.Generator().manual_seed(0)
    own = {"w": torch.ones(1000)}
    honest = [{"w": 1.0 + 0.01 * torch.randn(1000, generator=g)} for _ in range(6)]
    bad = {
        "scale": {"w": torch.full((1000,), -1000.0)},
        "sign-flip": {"w": -torch.ones(1000)},
        "noise": {"w": 100 * torch.randn(1000, generator=g)},
    }[attack]
    ups = [own, *honest, bad, bad]
    out = rule(ups, f=2)
    clean = rule([own, *honest], f=0)
    tau = adaptive_tau([float((h["w"] - own["w"]).norm()) for h in honest] + [1e9, 1e9], 2)
    moved = float((out["w"] - clean["w"]).norm())
    assert moved <= 2 / len(ups) * tau + float((clean["w"] - own["w"]).norm()) + 1e-4
    assert float((out["w"] - 1.0).abs().max()) < 0.05  # the mean would be ruined: -249 or -0.5 per coordinate


def test_bad_params_and_inputs_are_refused():
    ups = [state(0.0), state(1.0)]
    for params in ({"f": -1}, {"f": 1.5}, {"tau": 0}, {"tau": float("nan")}, {"max_norm": 1}):
        with pytest.raises(ValueError, match="clipped_gossip"):
            rule(ups, **params)
    with pytest.raises(ValueError, match=r"not finite|non-finite"):
        rule([state(0.0), state(float("nan"))])
