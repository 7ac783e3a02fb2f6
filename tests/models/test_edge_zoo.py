"""The standard edge networks: parameter and MAC counts against their references."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.models import create, output_layers


@pytest.mark.parametrize(
    ("name", "params"),
    [  # torchvision's counts of the same layouts at 1000 classes, 224x224
        ("mobilenet_v2", 3_504_872),
        ("mobilenet_v3_small", 2_542_856),
        ("efficientnet_b0", 5_288_548),
    ],
)
def test_imagenet_layouts_match_torchvision(name: str, params: int) -> None:
    net = create(name, num_classes=1000, input_size=224, cifar=False, device="meta")
    assert sum(p.numel() for p in net.parameters()) == params


def test_cifar_strides_keep_a_4x4_last_feature_map() -> None:
    net = create("mobilenet_v2", width_mult=0.5).eval()
    with torch.no_grad():
        assert net.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (4, 4)
        assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def _dense_macs(net: nn.Module, shape: tuple[int, ...]) -> int:
    """Conv and linear MACs counted from the layers' output shapes (every kernel tap)."""
    total = 0

    def count(module: nn.Module, _inputs: object, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            taps = module.kernel_size[0] * module.kernel_size[1]
            total += out[0].numel() * module.in_channels // module.groups * taps
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in net.modules()]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *shape))
    for h in hooks:
        h.remove()
    return total


@pytest.mark.parametrize(
    ("size", "paper_ops", "macs"),
    [("S", 5.4e6, 2_656_768), ("M", 19.8e6, 9_816_384), ("L", 56.9e6, 28_327_812)],
)
def test_ds_cnn_sizes_do_the_papers_operations(size: str, paper_ops: float, macs: int) -> None:
    net = create("ds_cnn", size=size)
    counted = _dense_macs(net, (1, 49, 10))
    assert counted == macs
    assert 2 * counted == pytest.approx(paper_ops, rel=0.02)  # two operations per MAC


def test_vit_tiny_counts_and_its_classifier_is_the_output_layer() -> None:
    net = create("vit_tiny")
    # patch embedding 9,408 + class token 192 + positions 65 x 192 + 12 blocks x 444,864
    # + final norm 384 + head 1,930
    assert sum(p.numel() for p in net.parameters()) == 5_362_762
    assert output_layers(net) == ["head"]
    with torch.no_grad():
        assert net.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
