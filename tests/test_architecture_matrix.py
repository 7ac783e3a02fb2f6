"""Every capability on every architecture class: the right result, or the one-line refusal.

The classes are small hand-written networks (fast enough to run the whole matrix in the
default suite): depthwise convolutions, an inverted residual with squeeze-excitation,
channel concatenation, a pre-activation residual, LayerNorm + attention, functional
activations and an RNN. Each cell either checks the capability's result (function
preserved, counts, shapes) or the exact refusal.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgetrain.errors import EdgetrainError

pytest.importorskip("torch_pruning")
pytest.importorskip("onnxruntime")


def _bn_relu(c: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(c), nn.ReLU()]


class Depthwise(nn.Module):
    """A depthwise-separable stack (MobileNetV1 / DS-CNN style)."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), *_bn_relu(8))
        self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), *_bn_relu(8))
        self.pw = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), *_bn_relu(16))
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pw(self.dw(self.stem(x))).mean((2, 3)))


class InvertedResidualSE(nn.Module):
    """MobileNetV2's inverted residual with a squeeze-excitation gate (V3 / EfficientNet)."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), *_bn_relu(8))
        self.expand = nn.Sequential(nn.Conv2d(8, 24, 1, bias=False), *_bn_relu(24))
        self.dw = nn.Sequential(
            nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False), *_bn_relu(24)
        )
        self.se1 = nn.Conv2d(24, 6, 1)
        self.se2 = nn.Conv2d(6, 24, 1)
        self.project = nn.Sequential(nn.Conv2d(24, 8, 1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.dw(self.expand(x))
        gate = torch.sigmoid(self.se2(F.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        x = x + self.project(y * gate)
        return self.fc(x.mean((2, 3)))


class Concat(nn.Module):
    """A DenseNet-style block: a conv whose output is concatenated with its input."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), *_bn_relu(8))
        self.grow = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), *_bn_relu(8))
        self.mix = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), *_bn_relu(12))
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.grow(x)], dim=1)
        return self.fc(self.mix(x).mean((2, 3)))


class PreActivation(nn.Module):
    """A pre-activation residual (BN -> ReLU -> conv, identity added after the conv)."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.conv1(F.relu(self.bn1(x)))
        x = x + self.conv2(F.relu(self.bn2(y)))
        return self.fc(x.mean((2, 3)))


class Attention(nn.Module):
    """Patch embedding, a pre-norm transformer block (LayerNorm, attention, GELU MLP)."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.norm1 = nn.LayerNorm(16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(16)
        self.mlp1 = nn.Linear(16, 32)
        self.mlp2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.mlp2(F.gelu(self.mlp1(self.norm2(x))))
        return self.head(x.mean(1))


class Functional(nn.Module):
    """Activations written as functions, no activation module anywhere."""

    input_shape = (3, 16, 16)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x))).mean((2, 3))
        return self.fc2(F.gelu(self.fc1(x)))


class Recurrent(nn.Module):
    """A GRU over a sequence of 12 steps of 6 features, then a linear classifier."""

    input_shape = (12, 6)

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.act = nn.ReLU()
        self.rnn = nn.GRU(16, 16, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.act(self.embed(x)))
        return self.fc(out[:, -1])


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "depthwise": Depthwise,
    "inverted-residual-se": InvertedResidualSE,
    "concat": Concat,
    "pre-activation": PreActivation,
    "attention": Attention,
    "functional": Functional,
    "rnn": Recurrent,
}


def _build(arch: str) -> nn.Module:
    torch.manual_seed(0)
    model = ARCHITECTURES[arch]()
    for m in model.modules():  # statistics that differ per channel, as after training
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _inputs(model: nn.Module, n: int = 4) -> torch.Tensor:
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(1))


def _dense_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Forward MACs of the conv/linear layers, counted from their output shapes."""
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        per_sample = out.numel() // out.shape[0]
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += per_sample * kernel * module.in_channels // module.groups
        else:
            total += per_sample * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(x[:1])
    for h in handles:
        h.remove()
    return total


# --------------------------------------------------------------------------- capabilities
def cost(model: nn.Module, tmp: Path) -> str:
    from edgetrain.cost import analyze

    report = analyze(model, model.input_shape)
    assert report.unsupported == []
    rows = report.conventional_layers
    assert sum(r.forward for r in rows) == report.total().forward_macs
    counted = {r.name for r in rows if r.forward > 0}
    layers = {
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear | nn.MultiheadAttention | nn.GRU)
    }
    layers -= {f"{n}.out_proj" for n in layers}  # attention counts its own projection
    assert layers <= counted, layers - counted
    # conv MACs skip the zeros of padding (the border convention), so they are a little
    # below the dense count of the conv/linear layers; attention and GRU add their own
    assert report.total().forward_macs >= 0.9 * _dense_macs(model, _inputs(model))
    assert report.conventional.step_macs > 2 * report.total().forward_macs
    return "ok"


def layer_order(model: nn.Module, tmp: Path) -> str:
    from edgetrain.models import output_layers, parameter_layers

    layers = [n for n, _ in parameter_layers(model, model.input_shape)]
    weights = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    assert set(layers) <= weights and len(layers) == len(set(layers))
    assert output_layers(model) == [layers[-1]]  # the classifier is last, always
    return "ok"


def bn_folding(model: nn.Module, tmp: Path) -> str:
    from edgetrain.finetune.fold import fold_batchnorm

    x = _inputs(model)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folded = fold_batchnorm(model, model.input_shape)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    notes = sorted({str(w.message).split(":")[0] for w in caught})
    return f"folded {len(folded)}" + (f"; {'; '.join(notes)}" if notes else "")


def reconfiguration(model: nn.Module, tmp: Path) -> str:
    from edgetrain.prune.graph import channel_groups
    from edgetrain.prune.reconfigure import reconfigure

    x = _inputs(model)
    refused: dict[str, str] = {}
    groups = channel_groups(model, x[:1], refused=refused)
    if not groups:
        return "no groups; " + "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
    for group in groups:  # kill the first channel of every group in every layer it couples
        for member in group.members:
            if member.is_weight_layer:
                idx = member.idxs[member.root_idxs.index(0)]
                with torch.no_grad():
                    if member.role == "out":
                        member.module.weight[idx] = 0
                        if member.module.bias is not None:
                            member.module.bias[idx] = 0
                    else:
                        member.module.weight[:, idx] = 0
    with torch.no_grad():
        before = model(x)
    params = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        reconfigure(model, None, x[:1], threshold=0.0)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    removed = params - sum(p.numel() for p in model.parameters())
    return "removed" if removed > 0 else "kept"


def l1_compression(model: nn.Module, tmp: Path) -> str:
    from edgetrain.compress import apply

    x = _inputs(model)
    recipe = {"version": 1, "pruners": {"all": {"method": "l1_filter", "sparsity": 0.5}}}
    recipe["pruners"]["all"]["layers"] = ["*"]
    params = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned, _ = apply(model, recipe, example_input=x[:1])
    with torch.no_grad():
        assert pruned(x).shape == (4, 5)  # every class kept
    notes = "; ".join(
        [f"{n}: {m.num_heads} heads of {m.head_dim}" for n, m in _attention(pruned)]
        + sorted({str(w.message) for w in caught})
    )
    if sum(p.numel() for p in pruned.parameters()) < params:
        return "pruned" + (f"; {notes}" if notes else "")
    return f"unchanged; {notes}"


def _attention(model: nn.Module) -> list[tuple[str, nn.MultiheadAttention]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]


def net2net(model: nn.Module, tmp: Path) -> str:
    from edgetrain.models import parameter_layers
    from edgetrain.prune.grow.widen import widen

    x = _inputs(model)
    first = parameter_layers(model, model.input_shape)[0]
    name, layer = first
    width = layer.out_channels if isinstance(layer, nn.Conv2d) else layer.out_features
    with torch.no_grad():
        before = model(x)
    widen(model, name, width + 4, example_input=x[:1])
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    return "widened"


def onnx_export(model: nn.Module, tmp: Path) -> str:
    from edgetrain.compress import export_onnx

    result = export_onnx(model, tmp / "m.onnx", tuple(model.input_shape))
    assert result.max_abs_error is not None and result.max_abs_error < 1e-4
    return "ok"


def int8(model: nn.Module, tmp: Path) -> str:
    import onnxruntime as ort

    from edgetrain.compress import export_onnx, quantize_onnx

    export_onnx(model, tmp / "m.onnx", tuple(model.input_shape))
    batches = [_inputs(model).numpy()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_onnx(tmp / "m.onnx", tmp / "q.onnx", calibration_data=batches)
    session = ort.InferenceSession(str(tmp / "q.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: batches[0]})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(batches[0])).numpy()
    assert out.shape == reference.shape
    assert abs(out - reference).max() < 0.1 * abs(reference).max() + 0.05
    return "ok"


def recorder(model: nn.Module, tmp: Path) -> str:
    from edgetrain.diagnostics import PatternRecorder

    x = _inputs(model)
    with PatternRecorder(model) as rec, torch.no_grad():
        model(x)
    return ", ".join(f"{n}:{int(c.sum())}" for n, c in rec.counts().items())


CAPABILITIES: dict[str, Callable[[nn.Module, Path], str]] = {
    "cost": cost,
    "layer-order": layer_order,
    "bn-folding": bn_folding,
    "reconfiguration": reconfiguration,
    "l1": l1_compression,
    "net2net": net2net,
    "export": onnx_export,
    "int8": int8,
    "recorder": recorder,
}


def _outcome(capability: str, arch: str, tmp: Path) -> str:
    model = _build(arch)
    try:
        return CAPABILITIES[capability](model, tmp)
    except EdgetrainError as exc:
        message = str(exc)
        assert "\n" not in message, message  # a refusal is one line
        return f"refused: {message}"


# The outcome of every cell: "ok" and the like after the capability's own checks passed
# (outputs within 1e-5 where the function must be preserved), the refusal line, or what
# was recorded (layer:samples; per token after linear, attention and recurrent layers).
_RNN = (
    "Torch-Pruning's graph cannot follow its channels, which feed the recurrent layer 'rnn' "
    "(GRU) (list index out of range)"
)
EXPECTED: dict[tuple[str, str], str] = {
    **dict.fromkeys([("cost", a) for a in ARCHITECTURES], "ok"),
    **dict.fromkeys([("layer-order", a) for a in ARCHITECTURES], "ok"),
    **dict.fromkeys([("export", a) for a in ARCHITECTURES], "ok"),
    **dict.fromkeys([("int8", a) for a in ARCHITECTURES], "ok"),
    ("bn-folding", "depthwise"): "folded 3",
    ("bn-folding", "inverted-residual-se"): "folded 4",
    ("bn-folding", "concat"): "folded 3",
    # bn1's conv output also feeds the residual add: that batch-norm stays
    ("bn-folding", "pre-activation"): (
        "folded 1; batch-norms not folded, the model is unchanged there"
    ),
    ("bn-folding", "attention"): "folded 0",
    ("bn-folding", "functional"): "folded 2",
    ("bn-folding", "rnn"): "folded 0",
    **{("reconfiguration", a): "removed" for a in ARCHITECTURES if a != "rnn"},
    ("reconfiguration", "rnn"): f"no groups; embed: {_RNN}",
    **{("l1", a): "pruned" for a in ARCHITECTURES if a not in ("attention", "rnn")},
    ("l1", "attention"): "pruned; attn: 1 heads of 8",  # whole heads: 2 of 8 -> 1 of 8
    ("l1", "rnn"): (
        "refused: pruners.all.layers: no layer can lose filters (the output layers and "
        f"layers tied to them cannot); 'embed': {_RNN}"
    ),
    ("net2net", "depthwise"): (
        "refused: widen: 'stem.0' is tied to the grouped convolution 'dw.0' (groups=8); "
        "only groups=1 convolutions can be widened"
    ),
    **{("net2net", a): "widened" for a in ("inverted-residual-se", "concat", "pre-activation")},
    ("net2net", "functional"): "widened",
    ("net2net", "attention"): (
        "refused: widen: 'patch' is tied to a LayerNorm, which normalises across channels "
        "(copies would change its statistics); widen another layer"
    ),
    ("net2net", "rnn"): f"refused: widen: 'embed': {_RNN}",
    ("recorder", "depthwise"): "stem.2:1024, dw.2:1024, pw.2:1024",
    ("recorder", "inverted-residual-se"): "stem.2:1024, expand.2:1024, dw.2:1024, relu():4",
    ("recorder", "concat"): "stem.2:1024, grow.2:1024, mix.2:1024",
    ("recorder", "pre-activation"): "relu():1024, relu()#2:1024",
    ("recorder", "attention"): "gelu():64",  # 4 samples x 16 tokens
    ("recorder", "functional"): "relu():1024, relu()#2:256, gelu():4",
    ("recorder", "rnn"): "act:48",  # 4 samples x 12 steps
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("capability", list(CAPABILITIES))
def test_capability_on_architecture(capability: str, arch: str, tmp_path: Path) -> None:
    assert _outcome(capability, arch, tmp_path) == EXPECTED[(capability, arch)]


def test_every_cell_has_an_expected_outcome() -> None:
    assert set(EXPECTED) == {(c, a) for c in CAPABILITIES for a in ARCHITECTURES}
