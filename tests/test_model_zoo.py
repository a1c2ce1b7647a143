"""Every model of the zoo builds deterministically, takes flattened inputs, and learns."""

import pytest
import torch

from peers.data import load_local_data
from peers.models import MODEL_CHOICES, build_model, infer_image_shape
from peers.training import LocalTrainer


@pytest.mark.parametrize("name, features", [("logreg", 64), ("mlp", 64), ("cnn", 64), ("cnn", 3072), ("resnet", 3072)])
def test_models_take_flat_inputs_and_are_seeded(name, features):
    a, b = build_model(name, features, 10, seed=5), build_model(name, features, 10, seed=5)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a(torch.rand(3, features)).shape == (3, 10)


def test_image_shape_inference_and_errors():
    assert infer_image_shape(64) == (1, 8, 8) and infer_image_shape(3072) == (3, 32, 32)
    with pytest.raises(ValueError):
        build_model("cnn", 60, 10)
    with pytest.raises(ValueError, match="choose one of"):
        build_model("transformer", 64, 10)
    assert set(MODEL_CHOICES) == {"logreg", "mlp", "cnn", "resnet"}


@pytest.mark.slow
def test_cnn_learns_digits():
    data = load_local_data("digits:0/1")
    model = build_model("cnn", data.num_features, 10, seed=0, input_shape=data.input_shape)
    trainer = LocalTrainer(model, data, lr=0.05, batch_size=32, device="cpu", momentum=0.9)
    trainer.train(150)
    assert trainer.evaluate().accuracy > 0.85
