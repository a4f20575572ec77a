"""The built-in networks: LeNet-300-100, LeNet-5 (Caffe variant) and a small VGG-style CNN."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def lenet300(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """784-300-100-10 fully connected (Han et al. 2015, LeCun et al. 1998)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * 28 * 28, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Caffe's LeNet-5: conv 20, conv 50, fc 500, fc 10 (431k weights)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )


def _conv_block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def vgg_small(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Conv-BN-ReLU blocks (32-32-pool-64-64-pool-128-pool): channels to prune structurally."""
    return nn.Sequential(
        *_conv_block(in_channels, 32),
        *_conv_block(32, 32),
        nn.MaxPool2d(2),
        *_conv_block(32, 64),
        *_conv_block(64, 64),
        nn.MaxPool2d(2),
        *_conv_block(64, 128),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128 * 3 * 3, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "vgg_small": vgg_small,
}


def build_network(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Build a built-in network by name; the error lists the names that exist."""
    if name not in NETWORKS:
        raise ValueError(
            f"model.network must be one of {sorted(NETWORKS)} (or an nn.Module), got {name!r}"
        )
    return NETWORKS[name](num_classes=num_classes, in_channels=in_channels)
