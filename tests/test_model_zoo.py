"""Every model of the zoo builds deterministically, takes flattened inputs, and learns; image
models refuse tabular data."""

import pytest
import torch
from opacus.validators import ModuleValidator

from peers.data import load_local_data
from peers.models import IMAGE_MODELS, MODEL_CHOICES, build_model, infer_image_shape
from peers.protocol import MODEL_ZOO
from peers.training import LocalTrainer

ZOO = ("resnet18", "mobilenet_v3_small")


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
    assert set(MODEL_CHOICES) == {"logreg", "mlp", "cnn", "resnet", "resnet18", "mobilenet_v3_small"}


@pytest.mark.slow
def test_cnn_learns_digits():
    data = load_local_data("digits:0/1")
    model = build_model("cnn", data.num_features, 10, seed=0, input_shape=data.input_shape)
    trainer = LocalTrainer(model, data, lr=0.05, batch_size=32, device="cpu", momentum=0.9)
    trainer.train(150)
    assert trainer.evaluate().accuracy > 0.85


@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_zoo_models_are_seeded_take_flat_images_and_have_no_batchnorm(name, shape):
    features = shape[0] * shape[1] * shape[2]
    a = build_model(name, features, 10, seed=3, input_shape=shape)
    b = build_model(name, features, 10, seed=3, input_shape=shape)
    c = build_model(name, features, 10, seed=4, input_shape=shape)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    stem = a.net.conv1 if name == "resnet18" else a.net.features[0][0]
    assert stem.in_channels == shape[0]
    norms = [m for m in a.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not norms and any(isinstance(m, torch.nn.GroupNorm) for m in a.modules())
    assert ModuleValidator.validate(a, strict=False) == []  # DP-SGD (Opacus) can train it
    a.eval()
    assert a(torch.rand(2, features)).shape == (2, 10)
    assert not any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in sa)


def test_zoo_stems_fit_small_and_large_images():
    small = build_model("resnet18", 3 * 32 * 32, 10, seed=0).net
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    large = build_model("resnet18", 3 * 64 * 64, 10, seed=0).net
    assert large.conv1.kernel_size == (7, 7) and large.conv1.stride == (2, 2)
    assert isinstance(large.maxpool, torch.nn.MaxPool2d)
    assert build_model("mobilenet_v3_small", 64, 10, seed=0).net.features[0][0].stride == (1, 1)
    assert build_model("mobilenet_v3_small", 3 * 64 * 64, 10, seed=0).net.features[0][0].stride == (2, 2)
    sizes = {name: sum(p.numel() for p in build_model(name, 3072, 10, seed=0).parameters()) for name in ZOO}
    assert 11_000_000 < sizes["resnet18"] < 11_300_000  # torchvision's resnet18 has 11.2M at 1000 classes
    assert 1_400_000 < sizes["mobilenet_v3_small"] < 1_600_000


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_refuse_tabular_data(name):
    data = load_local_data("synthetic:0.5,0.5:0/2")
    assert data.input_shape is None
    with pytest.raises(ValueError, match=f"{name} is an image model and this data is tabular"):
        build_model(name, data.num_features, data.num_classes, seed=0, input_shape=data.input_shape)
    with pytest.raises(ValueError, match="does not hold"):
        build_model(name, 64, 10, input_shape=(3, 8, 8))


def test_protocol_zoo_says_which_models_take_images():
    assert set(IMAGE_MODELS) == {"cnn", "resnet", *ZOO}
    for name, info in MODEL_ZOO.items():
        assert info.label and info.description and info.inputs in ("features", "image")
        assert not info.batch_norm  # no model of the zoo keeps BatchNorm
        if info.inputs == "features":
            assert build_model(name, 60, 10, seed=0)(torch.rand(2, 60)).shape == (2, 10)


@pytest.mark.slow  # a few seconds each on two idle cores, more on a busy machine
@pytest.mark.parametrize("name, lr", [("resnet18", 0.01), ("mobilenet_v3_small", 0.05)])
def test_zoo_models_learn_digits_with_a_few_sgd_steps(name, lr):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data = load_local_data("digits:0/1")
    X, y = torch.from_numpy(data.X_train[:16]), torch.from_numpy(data.y_train[:16])
    model = build_model(name, data.num_features, 10, seed=0, input_shape=data.input_shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    def loss() -> float:
        model.eval()  # no dropout (MobileNet's head); GroupNorm is the same either way
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(X), y))

    before = loss()
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the dropout masks
        for _ in range(6):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(X), y).backward()
            optimizer.step()
    assert loss() < 0.9 * before
