"""ResNet-18 and MobileNetV3-Small for the peers' model zoo, built from scratch (no pretrained
weights, nothing downloaded) with GroupNorm in place of BatchNorm: BatchNorm's running statistics
do not average across peers, and DP-SGD (Opacus) has no per-sample gradient through it.

Layers and parameter names follow torchvision's ``resnet18(norm_layer=...)`` and
``mobilenet_v3_small(norm_layer=...)`` (conv1, bn1, layer1..4, fc; features, classifier), so a
state dict maps one to one. Images under 64 pixels a side (8x8 digits, 32x32 pictures) get the
usual small-image stem: ResNet's first conv is 3x3 with stride 1 and no max-pool, MobileNet's first
conv has stride 1. They are written here rather than imported from torchvision: PyPI's torchvision
0.28.0 is linked against the CUDA build of torch 2.13.0 and does not import beside the CPU build
(``operator torchvision::nms does not exist``), and the peers need nothing else from it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SMALL_IMAGE = 64  # sides under this many pixels get the small-image stem


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least two channels each."""
    return nn.GroupNorm(math.gcd(max(channels // 2, 1), 32), channels)


# ------------------------------------------------------------------------------- ResNet-18


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = group_norm(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = group_norm(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), group_norm(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        channels, height, width = shape
        small = min(height, width) < SMALL_IMAGE
        self.conv1 = (
            nn.Conv2d(channels, 64, 3, 1, 1, bias=False) if small else nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
        )
        self.bn1 = group_norm(64)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        inplanes, layers = 64, []
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride), BasicBlock(planes, planes)))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------- MobileNetV3-Small


def _make_divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def conv_norm_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: type | None = None):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        group_norm(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, act: type, stride: int):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_norm_act(cin, expanded, 1, act=act))
        layers.append(conv_norm_act(expanded, expanded, kernel, stride, groups=expanded, act=act))
        if se:
            layers.append(SqueezeExcitation(expanded, _make_divisible(expanded // 4)))
        layers.append(conv_norm_act(expanded, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# (input channels, kernel, expanded channels, output channels, squeeze-excitation, activation, stride):
# MobileNetV3-Small's bottlenecks (Howard et al. 2019, table 2; torchvision's configuration).
RE, HS = nn.ReLU, nn.Hardswish
MOBILENET_V3_SMALL = (
    (16, 3, 16, 16, True, RE, 2),
    (16, 3, 72, 24, False, RE, 2),
    (24, 3, 88, 24, False, RE, 1),
    (24, 5, 96, 40, True, HS, 2),
    (40, 5, 240, 40, True, HS, 1),
    (40, 5, 240, 40, True, HS, 1),
    (40, 5, 120, 48, True, HS, 1),
    (48, 5, 144, 48, True, HS, 1),
    (48, 5, 288, 96, True, HS, 2),
    (96, 5, 576, 96, True, HS, 1),
    (96, 5, 576, 96, True, HS, 1),
)


class MobileNetV3Small(nn.Module):
    def __init__(self, shape: tuple[int, int, int], num_classes: int, dropout: float = 0.2):
        super().__init__()
        channels, height, width = shape
        stem_stride = 1 if min(height, width) < SMALL_IMAGE else 2
        layers = [conv_norm_act(channels, 16, 3, stem_stride, act=nn.Hardswish)]
        layers += [InvertedResidual(*conf) for conf in MOBILENET_V3_SMALL]
        layers.append(conv_norm_act(96, 576, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(576, 1024), nn.Hardswish(), nn.Dropout(dropout), nn.Linear(1024, num_classes)
        )
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


ARCHITECTURES = {"resnet18": ResNet18, "mobilenet_v3_small": MobileNetV3Small}


class FlatInput(nn.Module):
    """Takes the peers' flattened (batch, C*H*W) rows and hands ``net`` (batch, C, H, W) images."""

    def __init__(self, shape: tuple[int, int, int], net: nn.Module):
        super().__init__()
        self.unflatten = nn.Unflatten(1, shape)
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.unflatten(x))


def build(name: str, shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """One of ARCHITECTURES for images of ``shape`` (C, H, W), taking flattened inputs."""
    return FlatInput(shape, ARCHITECTURES[name](shape, num_classes))
