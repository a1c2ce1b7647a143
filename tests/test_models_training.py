"""Models, local training and mixing (peers.models, peers.training)."""

import pytest
import torch

from peers.data import load_local_data
from peers.models import MODEL_CHOICES, build_model
from peers.training import LocalTrainer, mix, select_device


def _sd(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("name", MODEL_CHOICES)
def test_same_seed_same_initial_weights(name):
    rng_before = torch.get_rng_state()
    a, b = _sd(build_model(name, 64, 10, seed=7)), _sd(build_model(name, 64, 10, seed=7))
    assert torch.equal(torch.get_rng_state(), rng_before)  # global RNG untouched
    c = _sd(build_model(name, 64, 10, seed=8))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_model_shapes_and_unknown_name():
    m = build_model("mlp", 5, 3, hidden=16, seed=0)
    assert m(torch.zeros(2, 5)).shape == (2, 3)
    assert sum(p.numel() for p in m.parameters()) == 5 * 16 + 16 + 16 * 3 + 3
    assert isinstance(build_model("logreg", 5, 3), torch.nn.Linear)
    with pytest.raises(ValueError, match="logreg, mlp"):
        build_model("vgg", 5, 3)


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda:0")
    with pytest.raises(ValueError):
        select_device("tpu")


def test_mlp_learns_digits_shard():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_local_data("digits:0/1", seed=0)
    model = build_model("mlp", data.num_features, data.num_classes, seed=0)
    trainer = LocalTrainer(model, data, lr=0.1, batch_size=32, device=select_device("auto"), seed=0, momentum=0.9)
    before = trainer.evaluate()
    assert before.samples == len(data.y_eval)
    res = trainer.train(200)
    assert res.samples_seen == 200 * 32 and res.duration_s > 0
    after = trainer.evaluate()
    assert after.accuracy > 0.85, after
    assert after.loss < before.loss
    assert res.loss < before.loss


def test_state_round_trip_and_determinism():
    data = load_local_data("digits:0/4", seed=0)

    def run():
        t = LocalTrainer(build_model("logreg", 64, 10, seed=1), data, lr=0.05, batch_size=16, device="cpu", seed=3)
        t.train(20)
        return t

    t1, t2 = run(), run()
    s1, s2 = t1.state(), t2.state()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)  # same seeds -> same trajectory
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 and not v.requires_grad for v in s1.values())
    s1["weight"].zero_()  # a copy: the model is unaffected
    assert t1.model.weight.abs().sum() > 0
    t1.load_state(s1)
    assert t1.model.weight.abs().sum() == 0


def test_mix_exact():
    a = {"w": torch.tensor([[4.0, -8.0], [0.0, 12.0]]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([[8.0, 4.0], [16.0, -4.0]]), "b": torch.tensor([3.0])}
    m = mix([(0.25, a), (0.75, b)])
    assert torch.equal(m["w"], torch.tensor([[7.0, 1.0], [12.0, 0.0]]))
    assert torch.equal(m["b"], torch.tensor([2.5]))
    assert m["w"].dtype == torch.float32
    # weights are renormalised: 1 and 3 is the same as 0.25 and 0.75
    m2 = mix([(1.0, a), (3.0, b)])
    assert all(torch.equal(m[k], m2[k]) for k in m)
    assert torch.equal(mix([(2.0, a)])["w"], a["w"])


def test_mix_rejects_bad_input():
    a = {"w": torch.ones(2)}
    with pytest.raises(ValueError):
        mix([])
    with pytest.raises(ValueError, match="names"):
        mix([(1.0, a), (1.0, {"v": torch.ones(2)})])
    with pytest.raises(ValueError, match="shape"):
        mix([(1.0, a), (1.0, {"w": torch.ones(3)})])
    with pytest.raises(ValueError, match="positive"):
        mix([(0.0, a), (0.0, a)])
    with pytest.raises(ValueError):
        mix([(-1.0, a), (2.0, a)])
