"""The model zoo shared by all peers of a job (names and kinds: peers.protocol.MODEL_ZOO; ResNet-18
and MobileNetV3-Small: peers.zoo). Inputs arrive flattened (batch, features); image models restore
(C, H, W) themselves, so every model trains on the same tensors."""

from __future__ import annotations

import math

import torch
from torch import nn

from peers import zoo
from peers.protocol import MODEL_ZOO

MODEL_CHOICES = tuple(MODEL_ZOO)  # the names and what each takes: peers.protocol.MODEL_ZOO
IMAGE_MODELS = tuple(name for name, info in MODEL_ZOO.items() if info.inputs == "image")


def infer_image_shape(num_features: int) -> tuple[int, int, int]:
    """(C, H, W) for square grey or RGB images whose pixels were flattened channel-first."""
    for channels in (1, 3):
        side = math.isqrt(num_features // channels)
        if num_features % channels == 0 and side * side * channels == num_features:
            return channels, side, side
    raise ValueError(f"{num_features} features are not a square grey or RGB image; pass input_shape")


class SmallCNN(nn.Module):
    """Two 3x3 conv blocks and a linear head: small enough for CPUs, fine for 8x8 to 32x32."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 32):
        super().__init__()
        channels, height, _ = shape
        self.unflatten = nn.Unflatten(1, shape)
        pool = 2 if height >= 16 else 1
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(pool),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Linear(2 * width * 16, num_classes)

    def forward(self, x):
        return self.head(self.features(self.unflatten(x)).flatten(1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        # GroupNorm, not BatchNorm: running statistics do not average meaningfully across peers.
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.GroupNorm(8, cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.GroupNorm(8, cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(8, cout))
        )

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ResNet(nn.Module):
    """ResNet-style network for 32x32 images: a stem and three stages of two basic blocks."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, width: int = 16):
        super().__init__()
        self.unflatten = nn.Unflatten(1, shape)
        self.stem = nn.Sequential(nn.Conv2d(shape[0], width, 3, 1, 1, bias=False), nn.GroupNorm(8, width), nn.ReLU())
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            stages += [BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(self.unflatten(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build_model(
    name: str,
    num_features: int,
    num_classes: int,
    *,
    hidden: int = 64,
    seed: int | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a model; with `seed`, every caller gets bit-identical initial weights."""
    if name not in MODEL_CHOICES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_CHOICES)}")
    if num_features < 1 or num_classes < 1:
        raise ValueError(f"need num_features >= 1 and num_classes >= 1, got {num_features}, {num_classes}")
    if name == "mlp" and hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    shape: tuple[int, ...] = ()
    if name in IMAGE_MODELS:
        if input_shape:
            shape = tuple(input_shape)
        else:
            try:
                shape = infer_image_shape(num_features)
            except ValueError:
                raise ValueError(
                    f"{name} is an image model and this data is tabular ({num_features} features, "
                    "no channels × height × width): choose logreg or mlp"
                ) from None
        if len(shape) != 3 or math.prod(shape) != num_features:
            raise ValueError(f"input_shape {shape} does not hold {num_features} features")

    def image_shape() -> tuple[int, int, int]:
        channels, height, width = shape
        return channels, height, width

    def make() -> nn.Module:
        if name == "logreg":
            return nn.Linear(num_features, num_classes)
        if name == "cnn":
            return SmallCNN(image_shape(), num_classes)
        if name == "resnet":
            return ResNet(image_shape(), num_classes)
        if name in zoo.ARCHITECTURES:
            return zoo.build(name, image_shape(), num_classes)
        return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    if seed is None:
        return make()
    # Seed only inside a forked RNG so the caller's global torch RNG state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
