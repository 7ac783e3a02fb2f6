"""Computational attention of PSB models: head detection, per-position scores, masks,
coverage, the random-mask control and the receptive-field operation count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.compress import attention_forward, evaluate_attention, operation_cost, to_psb
from edgetrain.compress.psb.attention import _ReceptiveFields, _trace_head, position_entropy
from edgetrain.errors import ConfigError
from edgetrain.models import create

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize(
    ("name", "pooled", "side"), [("vgg_small", False, 4), ("resnet20", True, 8)]
)
def test_per_position_scores_average_to_the_logits(name, pooled, side):
    torch.manual_seed(0)
    net = to_psb(create(name), samples=0).eval()  # expected weights: deterministic
    x = torch.randn(3, 3, 32, 32)
    head = _trace_head(net, x[:1])
    assert head.pooled is pooled
    grabbed = []
    hook = head.modules[0].register_forward_pre_hook(lambda _m, a: grabbed.append(a[0]))
    with torch.no_grad():
        logits = net(x)
        hook.remove()
        scores = head.scores(grabbed[0])
    assert scores.shape == (3, 10, side, side)
    assert torch.allclose(scores.mean(dim=(2, 3)), logits, atol=1e-4)


def test_position_entropy_is_zero_for_certain_and_log_k_for_uniform_scores():
    scores = torch.zeros(1, 4, 1, 2)
    scores[0, 2, 0, 0] = 1e4
    entropy = position_entropy(scores)
    assert entropy[0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    assert entropy[0, 0, 1] == pytest.approx(torch.log(torch.tensor(4.0)).item())


def _vgg_float_classifier():
    torch.manual_seed(0)
    # The classifier stays float, so the head is deterministic and the mix can be checked.
    return to_psb(create("vgg_small"), samples=1, layers=["conv*"]).eval()


def test_mask_is_entropy_above_the_image_mean_and_the_head_runs_on_the_mix():
    net = _vgg_float_classifier()
    x = torch.randn(6, 3, 32, 32)
    out = attention_forward(net, x, low=1, high=16, control=True)
    expected = out.entropy > out.entropy.mean(dim=(1, 2), keepdim=True)
    assert torch.equal(out.mask, expected)
    assert out.coverage == pytest.approx(float(expected.float().mean()))
    assert 0 < out.coverage < 1
    mixed = torch.where(out.mask[:, None], out.high_features, out.low_features)
    with torch.no_grad():
        assert torch.allclose(out.logits, net.fc(mixed.flatten(1)), atol=1e-5)
        assert torch.allclose(out.high_logits, net.fc(out.high_features.flatten(1)), atol=1e-5)
    # the control selects as many positions per image, elsewhere
    assert torch.equal(out.random_mask.sum(dim=(1, 2)), out.mask.sum(dim=(1, 2)))
    assert not torch.equal(out.random_mask, out.mask)


def test_dilation_adds_the_neighbours_of_selected_positions():
    net = _vgg_float_classifier()
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    plain = attention_forward(net, x, low=1, high=4)
    torch.manual_seed(1)
    dilated = attention_forward(net, x, low=1, high=4, dilate=True)
    grown = nn.functional.max_pool2d(plain.mask[:, None].float(), 3, 1, 1)[:, 0] > 0
    assert torch.equal(dilated.mask, grown)
    assert dilated.coverage >= plain.coverage


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.conv2(self.relu(self.conv1(x)))))


def test_receptive_fields_of_one_selected_position():
    net = to_psb(_TwoConvs(), samples=1).eval()
    head = _trace_head(net, torch.zeros(1, 1, 8, 8))
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[0, 4, 4] = True  # interior: conv1 outputs in a 3x3 window
    mask[1, 0, 0] = True  # corner: a 2x2 window (the rest is padding)
    shares = _ReceptiveFields(net, head, (1, 8, 8)).shares(mask)
    assert shares["conv2"] == pytest.approx(1 / 64)
    assert shares["conv1"] == pytest.approx((9 + 4) / 2 / 64)


def test_evaluate_attention_reports_accuracies_coverage_and_operations(make_blobs):
    torch.manual_seed(0)
    net = to_psb(_TwoConvs(), samples=1).eval()
    data = make_blobs(40, num_classes=3, shape=(1, 8, 8))
    result = evaluate_attention(net, data, low=1, high=8, batch_size=16)
    assert set(result.top1) == set(result.loss) == {"low", "high", "attention", "random"}
    assert 0 < result.coverage < 1 and result.positions == 64
    layers = operation_cost(net, (1, 8, 8), samples=8).by_layer()
    expected = result.shifts["low"] + sum(
        result.receptive_share.get(n, 1.0) * o.shifts for n, o in layers.items()
    )
    assert result.shifts["attention"] == pytest.approx(expected)
    assert (
        result.shifts["low"]
        < result.shifts["attention"]
        < result.shifts["low"] + result.shifts["high"]
    )
    assert result.receptive_share["conv2"] == pytest.approx(result.coverage)
    assert net.conv1.psb.samples == 1  # restored
    again = evaluate_attention(net, data, low=1, high=8, batch_size=16)
    assert again.top1 == result.top1  # seeded


class _FunctionalFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(2 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        (lambda: create("kws_cnn"), (1, 32, 32), "KWSCNN feeds its classifier 'fc' from 'drop2'"),
        (_FunctionalFlatten, (1, 8, 8), "feeds its classifier 'fc' from a functional op"),
    ],
)
def test_unsupported_models_get_one_line_naming_the_supported_shapes(model, shape, expected):
    net = to_psb(model(), samples=1).eval()
    with pytest.raises(ConfigError) as err:
        attention_forward(net, torch.randn(2, *shape))
    message = str(err.value)
    assert "needs a model ending in conv ... -> nn.Flatten -> nn.Linear" in message
    assert expected in message and "\n" not in message


def test_attention_needs_psb_layers_and_ordered_sample_counts():
    with pytest.raises(ConfigError, match="has no PSB layer; convert it first"):
        attention_forward(create("vgg_small"), torch.randn(1, 3, 32, 32))
    net = to_psb(create("vgg_small"), samples=1)
    with pytest.raises(ConfigError, match="1 <= low <= high"):
        attention_forward(net, torch.randn(1, 3, 32, 32), low=8, high=2)
