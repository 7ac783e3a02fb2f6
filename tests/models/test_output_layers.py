"""Layer order by parameter use and the output layers, from the traced forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.compress.pruning import check_prunable
from edgetrain.errors import ConfigError
from edgetrain.models import create, output_layers, parameter_layers


class TinyTransformer(nn.Module):
    """Patch embedding, one attention block (its out_proj used by the attention module's
    functional forward, not called), LayerNorm, classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 5)
        # registered last, used first: order must come from the forward
        self.pre = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.pre(x))
        a, _ = self.attn(h, h, h)
        h = self.norm(h + a)
        return self.head((h + self.mlp(h)).mean(1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(4, 3)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(torch.relu(self.body(x))) + self.b(x)).softmax(-1)


def test_layers_are_ordered_where_their_weights_are_used() -> None:
    names = [n for n, _ in parameter_layers(TinyTransformer(), (4, 8))]
    assert names == ["pre", "embed", "attn.out_proj", "mlp.0", "mlp.2", "head"]


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        (TinyTransformer, (4, 8), ["head"]),
        (TwoHeads, (4,), ["a", "b"]),  # both reach the output, through a batch-norm
        (lambda: create("resnet20"), None, ["fc"]),
        (lambda: create("kws_cnn"), None, ["fc"]),
    ],
)
def test_the_output_layers_are_those_whose_outputs_are_the_models(model, shape, expected) -> None:
    assert output_layers(model(), shape) == expected


def test_a_named_output_layer_wins_and_an_unknown_one_fails() -> None:
    net = TinyTransformer()
    net.output_layer = "mlp.2"
    assert output_layers(net, (4, 8)) == ["mlp.2"]
    net.output_layer = ["nope"]
    with pytest.raises(AttributeError, match="nope"):
        output_layers(net, (4, 8))


def test_compression_never_prunes_an_output_layer() -> None:
    pytest.importorskip("torch_pruning")
    example = torch.zeros(2, 4)
    with pytest.raises(ConfigError, match="'b' is the model's output layer"):
        check_prunable(TwoHeads(), ["b"], example)
