"""Progressive stochastic binarization: the number format, PSB layers, to_psb, operation
counts, the samples grid and the recipe method."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from edgetrain.compress import (
    PSBConfig,
    PSBConv2d,
    PSBLinear,
    apply,
    finetune_psb,
    load_recipe,
    operation_cost,
    plot_sample_grid,
    psb_accuracy,
    psb_layers,
    sample_grid,
    set_samples,
    to_psb,
)
from edgetrain.compress.psb.format import (
    decompose,
    max_relative_std,
    relative_std,
    sample_weights,
    to_fixed_point,
)
from edgetrain.errors import ConfigError
from edgetrain.models import create

pytestmark = pytest.mark.usefixtures("single_thread")


def _weights(n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g) * torch.logspace(-3, 1, n)


def test_decompose_is_exact_with_p_in_unit_interval():
    w = torch.cat([_weights(), torch.tensor([0.0, 1.0, -0.5, 3.0, 1e-30])])
    s, e, p = decompose(w)
    assert torch.equal(s * torch.exp2(e) * (1 + p), w)
    assert bool(((p >= 0) & (p < 1)).all())
    assert e[-4:-1].tolist() == [0.0, -1.0, 1.0]
    assert (s[-5], p[-5]) == (0, 0)  # zero


@pytest.mark.parametrize("samples", [1, 4, 16])
def test_sampling_is_unbiased_and_its_relative_std_follows_the_formula(samples):
    w = _weights()
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([sample_weights(w, samples, generator=g) for _ in range(3000)])
    std = w.abs() * relative_std(w, samples)
    # the mean of 3000 draws is within 5 standard errors of w, for every weight
    assert bool(((draws.mean(0) - w).abs() <= 5 * std / math.sqrt(3000) + 1e-12).all())
    measured = draws.std(0) / w.abs()
    formula = relative_std(w, samples)
    _, _, p = decompose(w)
    typical = (p > 0.1) & (p < 0.9)  # rare events (p near 0 or 1) have noisy estimates
    assert torch.allclose(measured[typical], formula[typical], rtol=0.1)
    assert float(measured.square().sum() / formula.square().sum()) == pytest.approx(1, abs=0.03)
    bound = max_relative_std(samples)
    assert bool((formula <= bound + 1e-7).all())
    assert float(measured.max()) <= 1.1 * bound
    # the bound is reached at p = 1/3
    assert float(relative_std(torch.tensor([4.0 / 3.0]), samples)) == pytest.approx(bound)


def test_one_sample_is_a_signed_power_of_two_next_to_w():
    w = _weights()
    drawn = sample_weights(w, 1)
    s, e, _ = decompose(w)
    assert bool(((drawn == s * torch.exp2(e)) | (drawn == s * torch.exp2(e + 1))).all())


def test_powers_of_two_are_deterministic_and_zero_stays_zero():
    w = torch.tensor([2.0**k * sign for k in range(-10, 6) for sign in (1, -1)] + [0.0, -0.0])
    for samples in (1, 3, 32):
        for _ in range(5):
            assert torch.equal(sample_weights(w, samples), w)
    layer = PSBLinear.from_float(nn.Linear(4, 3), PSBConfig(samples=1))
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, 0] = 0.3
    for _ in range(20):
        sampled = layer.weight_sample()
        assert int(torch.count_nonzero(sampled)) == 1


def test_a_changed_weight_is_sampled_from_its_new_value():
    # expected weights with p rounded to 8 bits: exact for these values, and computed
    # from the cached split of the weights, which must follow every change
    layer = PSBLinear.from_float(nn.Linear(3, 2), PSBConfig(samples=0, p_bits=8))
    values = torch.tensor([[1.0, 2.0, 0.75], [0.5, -1.5, 8.0]])
    with torch.no_grad():
        layer.weight.copy_(values)
    assert torch.equal(layer.weight_sample(), values)
    with torch.no_grad():
        layer.weight.mul_(2)
    assert torch.equal(layer.weight_sample(), 2 * values)
    layer.load_state_dict({**layer.state_dict(), "weight": values / 4})
    assert torch.equal(layer.weight_sample(), values / 4)
    opt = torch.optim.SGD(layer.parameters(), lr=1.0)
    layer.weight.grad = torch.full_like(values, 0.125)
    opt.step()
    assert torch.equal(layer.weight_sample(), values / 4 - 0.125)


@pytest.mark.parametrize("bits", [4, 2, 1])
def test_p_quantization_keeps_bits_levels(bits):
    w = _weights(2000)
    quantized = sample_weights(w, 0, p_bits=bits)
    _, _, p = decompose(quantized)
    levels = torch.unique(p)
    assert len(levels) <= 2**bits
    assert torch.equal(levels * 2**bits, torch.round(levels * 2**bits))
    # rounding p moves a weight by at most half a step of 2^-bits (relative to 2^e)
    assert float(((quantized - w).abs() / w.abs()).max()) <= 2.0 ** -(bits + 1) + 1e-6
    # samples of quantized weights average to the quantized weight
    g = torch.Generator().manual_seed(0)
    mean = torch.stack([sample_weights(w, 2, bits, g) for _ in range(2000)]).mean(0)
    assert torch.allclose(mean, quantized, rtol=0.05, atol=1e-6)


def test_fixed_point_rounds_and_saturates_in_the_q_format():
    x = torch.tensor([0.3, -0.3, 127.99, 500.0, -500.0, 1e-4], requires_grad=True)
    q = to_fixed_point(x, 8)
    assert q.tolist() == [77 / 256, -77 / 256, 32765 / 256, 32767 / 256, -128.0, 0.0]
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones(6))  # straight through
    layer = PSBConv2d.from_float(nn.Conv2d(2, 3, 3), PSBConfig(samples=2, fixed_point=4))
    out = layer(torch.randn(1, 2, 6, 6) * 50)
    assert torch.equal(out * 16, torch.round(out * 16))
    assert float(out.detach().abs().max()) <= 2048


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_pruning_zeroes_the_smallest_weights_and_keeps_them_zero(fraction):
    conv = nn.Conv2d(4, 8, 3)
    magnitude = conv.weight.detach().abs().clone()
    layer = PSBConv2d.from_float(conv, PSBConfig(samples=2, prune=fraction))
    n = conv.weight.numel()
    zeros = layer.weight == 0
    assert int(zeros.sum()) == int(fraction * n)
    assert float(magnitude[zeros].max()) <= float(magnitude[~zeros].min())
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(2, 4, 6, 6)).square().mean().backward()
        opt.step()
    assert torch.equal(layer.weight == 0, zeros)
    assert int((layer.weight_sample() == 0).sum()) >= int(fraction * n)


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_ste_gradient_equals_the_gradient_of_the_unsampled_layer(kind):
    torch.manual_seed(0)
    if kind == "conv":
        plain = nn.Conv2d(3, 5, 3, padding=1)
        x = torch.randn(4, 3, 7, 7)
    else:
        plain = nn.Linear(6, 5)
        x = torch.randn(4, 6)
    psb = (PSBConv2d if kind == "conv" else PSBLinear).from_float(plain, PSBConfig(samples=1))
    upstream = torch.randn_like(plain(x))
    (plain(x) * upstream).sum().backward()
    out = psb(x)
    assert not torch.allclose(out, plain(x))  # the forward really uses a sample
    (out * upstream).sum().backward()
    assert torch.allclose(psb.weight.grad, plain.weight.grad, atol=1e-6)
    assert torch.allclose(psb.bias.grad, plain.bias.grad, atol=1e-6)


def _bn_net(make_tiny_net):
    net = make_tiny_net(num_classes=4, in_shape=(1, 8, 8))
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_to_psb_folds_batchnorm_and_converges_to_the_float_model(make_tiny_net):
    net = _bn_net(make_tiny_net)
    x = torch.randn(16, 1, 8, 8)
    with torch.no_grad():
        reference = net(x)
    psb = to_psb(copy.deepcopy(net), samples=0, input_shape=(1, 8, 8))
    assert isinstance(psb.bn, nn.Identity)
    assert [type(m).__name__ for _, m in psb_layers(psb)] == ["PSBConv2d", "PSBLinear"]
    with torch.no_grad():
        assert torch.allclose(psb(x), reference, atol=1e-5)  # expected weights: exact
    torch.manual_seed(0)
    errors = []
    for samples in (1, 4, 16, 64):
        set_samples(psb, samples)
        with torch.no_grad():
            errors.append(sum(float((psb(x) - reference).abs().mean()) for _ in range(20)) / 20)
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.3 * errors[0]  # about 1/sqrt(64) of the one-sample error


def test_to_psb_errors_leave_the_model_untouched(make_tiny_net):
    net = _bn_net(make_tiny_net)
    with pytest.raises(ConfigError, match="pass input_shape"):
        to_psb(net)
    with pytest.raises(ConfigError, match="psb layers: layer pattern 'conv9' matches no module"):
        to_psb(net, layers=["conv9"], input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match="'bn' is a BatchNorm2d; PSB converts nn.Conv2d"):
        to_psb(net, layers=["bn"], input_shape=(1, 8, 8))
    with pytest.raises(ConfigError, match=r"psb prune must be in \[0, 1\)"):
        to_psb(net, prune=0.5 + 0.5, input_shape=(1, 8, 8))
    assert isinstance(net.bn, nn.BatchNorm2d) and not psb_layers(net)


def test_operation_cost_counts_a_shift_and_an_add_per_product():
    net = to_psb(create("vgg_small"), samples=4)
    cost = operation_cost(net)
    conv1, fc = cost.by_layer()["conv1"], cost.by_layer()["fc"]
    assert conv1.products == 32 * 32 * 16 * 3 * 9
    assert fc.products == 64 * 4 * 4 * 10
    assert conv1.adds == 4 * conv1.products
    assert conv1.shifts == 4 * conv1.products + 16 * 32 * 32  # + one 1/n scaling per output
    assert cost.products == sum(o.products for o in cost.layers)
    one = operation_cost(net, samples=1)
    assert one.shifts == one.adds == cost.products
    halved = operation_cost(to_psb(create("vgg_small"), samples=4, prune=0.5))
    assert halved.by_layer()["conv1"].products == 32 * 32 * (16 * 3 * 9 // 2)
    with pytest.raises(ConfigError, match="at 0 samples: expected weights are not powers"):
        operation_cost(net, samples=0)


def test_finetune_and_grid_on_blobs(make_tiny_net, tiny_data, tmp_path):
    train, test = tiny_data
    torch.manual_seed(0)
    net = make_tiny_net(num_classes=4, in_shape=(1, 8, 8))
    finetune_psb(to_psb(net, samples=0, input_shape=(1, 8, 8)), train, 1, 0)  # no epochs
    float_net = make_tiny_net(num_classes=4, in_shape=(1, 8, 8))
    opt = torch.optim.SGD(float_net.parameters(), lr=0.05, momentum=0.9)
    x, y = train.inputs, train.targets
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(float_net(x), y).backward()
        opt.step()
    float_net.eval()

    psb = to_psb(copy.deepcopy(float_net), samples=2, prune=0.25, input_shape=(1, 8, 8))
    before = psb.fc.weight.detach().clone()
    pruned = psb.fc.weight == 0
    history = finetune_psb(psb, train, samples=2, epochs=2, lr=0.01, batch_size=16)
    assert len(history) == 2
    assert not torch.equal(psb.fc.weight, before)
    assert torch.equal(psb.fc.weight == 0, pruned)
    score = psb_accuracy(psb, test, samples=8, repeats=3)
    assert 0 <= score.top1_std <= score.top1 <= 100 and score.loss > 0
    assert psb.conv.psb.samples == 2  # restored after evaluation

    grid = sample_grid(
        float_net,
        train,
        test,
        train_samples=(0, 2),
        eval_samples=(1, 32),
        epochs=1,
        repeats=2,
        input_shape=(1, 8, 8),
    )
    assert [len(r) for r in grid.scores] == [2, 2]
    assert len(grid.rows()) == 4
    assert abs(grid.top1[0][-1] - grid.float_top1) <= 10  # many samples: close to float
    assert "| none |" in grid.markdown()
    png = plot_sample_grid(grid, tmp_path / "grid.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"samples": -1}, "number_format: psb samples must be an integer >= 0"),
        ({"samples": "many"}, "option 'samples': Input should be a valid integer"),
        ({"sample": 4}, "number format 'psb' has no option 'sample'; valid options: samples"),
        ({"prune": 1.0}, "number_format: psb prune must be in [0, 1)"),
        ({"p_bits": 0}, "number_format: psb p_bits must be an integer in [1, 16]"),
        ({"fixed_point": 16}, "psb fixed_point must be the number of fractional bits"),
        ({"method": "psc"}, "number_format.method: unknown number format 'psc'; choose one of"),
    ],
)
def test_bad_psb_options_give_one_line(options, expected):
    with pytest.raises(ConfigError) as err:
        load_recipe({"version": 1, "number_format": {"method": "psb", **options}})
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_psb_recipe_refuses_onnx_sections_and_finetune():
    base = {"version": 1, "number_format": {"method": "psb", "samples": 4}}
    with pytest.raises(ConfigError, match="cannot express; remove the export section and"):
        load_recipe({**base, "export": {"format": "onnx"}})
    with pytest.raises(ConfigError, match="remove the export and quantize sections"):
        load_recipe({**base, "export": {}, "quantize": {"method": "int8_dynamic"}})
    with pytest.raises(ConfigError, match="finetune cannot follow number format 'psb'"):
        load_recipe({**base, "finetune": {"epochs": 2, "lr": 0.1}})
    recipe = load_recipe(base).with_params({"number_format.prune": 0.5})
    assert recipe.number_format.options == {"samples": 4, "prune": 0.5}
    assert load_recipe(recipe.to_dict()) == recipe


def test_apply_converts_with_the_recipe_and_reports_shifts_and_adds():
    net = create("vgg_small")
    recipe = {"version": 1, "number_format": {"method": "psb", "samples": 2, "layers": ["conv*"]}}
    bad = {"version": 1, "number_format": {"method": "psb", "layers": ["conv9"]}}
    with pytest.raises(ConfigError, match="psb layers: layer pattern 'conv9'"):
        apply(net, bad)
    assert not psb_layers(net)
    same, report = apply(net, recipe)
    assert same is net
    assert [n for n, _ in psb_layers(net)] == [f"conv{i}" for i in range(1, 7)]
    done = report.number_format
    assert done["method"] == "psb" and done["samples"] == 2
    assert done["cost"]["shifts"] == operation_cost(net).shifts
    assert "psb: 6 layers at 2 samples" in report.summary()


def test_apply_prunes_filters_then_converts():
    pytest.importorskip("torch_pruning")
    recipe = {
        "version": 1,
        "pruners": {"s1": {"method": "l1_filter", "sparsity": 0.5, "layers": ["conv1"]}},
        "number_format": {"method": "psb", "samples": 1},
    }
    net, report = apply(create("vgg_small"), recipe)
    assert isinstance(net.conv1, PSBConv2d) and net.conv1.out_channels == 8
    assert report.filters_after["conv1"] == 8
    assert report.number_format["cost"]["layers"][0]["products"] == 32 * 32 * 8 * 3 * 9


TRAIN = """
name: tiny
epochs: 1
data: {name: digits, batch_size: 32}
model:
  name: resnet_cifar
  options: {stages: 1, blocks: [1], widths: [8], input_size: 8}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
"""


def test_compress_command_converts_to_psb_and_refuses_export(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from edgetrain.cli import app

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    (tmp_path / "tiny.yaml").write_text(TRAIN)
    trained = runner.invoke(app, ["train", "tiny.yaml", "--no-progress", "--no-report"])
    assert trained.exit_code == 0, trained.output
    (tmp_path / "psb.yaml").write_text(
        "version: 1\nnumber_format: {method: psb, samples: 16, prune: 0.25}\n"
    )
    done = runner.invoke(app, ["compress", "runs/tiny", "--recipe", "psb.yaml", "--out", "out"])
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "out" / "compress.json").read_text())
    psb = report["number_format"]
    assert (psb["method"], psb["samples"], psb["prune"]) == ("psb", 16, 0.25)
    assert psb["folded"] and psb["cost"]["shifts"] > 0
    assert report["deployed"] == [] and 0 <= report["top1_after"] <= 100
    (tmp_path / "psb.yaml").write_text(
        "version: 1\nnumber_format: {method: psb}\nexport: {opset: 17}\n"
    )
    refused = runner.invoke(app, ["compress", "runs/tiny", "--recipe", "psb.yaml", "--out", "o2"])
    assert refused.exit_code == 2
    lines = [ln for ln in refused.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "ONNX file cannot express" in lines[0]
    assert not (tmp_path / "o2").exists()
