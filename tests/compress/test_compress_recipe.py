"""Compression recipes: validation errors (one line each), loading, parameters, model checks."""

from __future__ import annotations

import pytest

from edgetrain.compress.pruning import PRUNERS
from edgetrain.compress.recipe import Recipe, load_recipe
from edgetrain.errors import ConfigError
from edgetrain.models import create, select_modules
from edgetrain.recipes import COMPRESSION_RECIPES
from edgetrain.registry import RegistryEntry

pytest.importorskip("torch_pruning")


def _pruner(**kw):
    return {"method": "l1_filter", "sparsity": 0.5, "layers": ["layer1.*.conv1"], **kw}


def _recipe(**sections):
    return {"version": 1, **sections}


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (
            _recipe(prunerz={}),
            "unknown key 'prunerz' in the top level; valid keys: version, pruners, finetune, "
            "quantize, export",
        ),
        (
            _recipe(pruners={"s1": _pruner(colour=1)}),
            "pruners.s1: unknown key 'colour'; valid keys: method, sparsity, layers",
        ),
        (
            _recipe(finetune={"epochs": 1, "lr": 0.1, "lrr": 2}),
            "unknown key 'lrr' in finetune; valid keys: epochs, lr, optimizer, scheduler",
        ),
        (
            _recipe(pruners={"s1": _pruner(method="l3_filter")}),
            "pruners.s1.method: unknown pruning method 'l3_filter'; choose one of: l1_filter",
        ),
        (_recipe(pruners={"s1": _pruner(sparsity=1.0)}), "pruners.s1.sparsity: must be in [0, 1)"),
        (_recipe(pruners={"s1": _pruner(sparsity=-0.1)}), "got -0.1"),
        ({"pruners": {}}, "missing required key 'version'; start the recipe with 'version: 1'"),
        (
            _recipe(version=2),
            "version: this edgetrain reads compression recipes of version 1, got 2",
        ),
        (_recipe(pruners={"s1": {"method": "l1_filter", "sparsity": 0.5}}), "'pruners.s1.layers'"),
        (_recipe(pruners={"a.b": _pruner()}), "pruner label 'a.b' must start with a letter"),
        (_recipe(pruners={"finetune": _pruner()}), "is a recipe section name"),
        (
            _recipe(finetune={"epochs": 1, "lr": 0.1, "scheduler": {"name": "exp"}}),
            "finetune.scheduler: unknown scheduler 'exp'; choose one of:",
        ),
        (
            _recipe(finetune={"epochs": 1, "lr": 0.1, "scheduler": {"name": "step", "gama": 1}}),
            "scheduler 'step' has no option 'gama'; valid options: step_size, gamma",
        ),
        (
            _recipe(finetune={"epochs": 1, "lr": 0.1, "optimizer": {"name": "sgd", "lr": 1}}),
            "set the learning rate with finetune.lr",
        ),
        (_recipe(finetune={"epochs": 1}), "missing required key 'finetune.lr'"),
        (_recipe(finetune={"epochs": -1, "lr": 0.1}), "finetune.epochs"),
        (
            _recipe(quantize={"method": "int4"}),
            "quantize.method: unknown quantization method 'int4'; choose one of:",
        ),
        (_recipe(export={"format": "tflite"}), "export.format"),
    ],
)
def test_every_validation_error_is_one_line_naming_the_key_and_fix(tree, expected):
    with pytest.raises(ConfigError) as err:
        load_recipe(tree)
    message = str(err.value)
    assert expected in message
    assert "\n" not in message


def test_valid_recipe_with_every_section_and_defaults():
    recipe = load_recipe(
        _recipe(
            pruners={"s1": _pruner(layers="layer1.0.conv1")},
            finetune={
                "epochs": 3,
                "lr": 0.01,
                "scheduler": {"name": "exponential", "gamma": 0.9, "start_epoch": 2},
            },
            quantize={"method": "int8_static"},
            export={},
        )
    )
    assert recipe.pruners["s1"].layers == ["layer1.0.conv1"]  # one string is a one-item list
    assert recipe.quantize.calibration_batches == 32
    assert (recipe.export.format, recipe.export.opset) == ("onnx", 17)
    assert recipe.finetune.scheduler.options == {"gamma": 0.9, "start_epoch": 2}
    assert load_recipe(recipe.to_dict()) == recipe


def test_load_from_path_yaml_text_dict_and_shipped_name(tmp_path):
    text = "version: 1\npruners:\n  s1: {method: l1_filter, sparsity: 0.5, layers: [conv1]}\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    assert load_recipe(path) == load_recipe(str(path)) == load_recipe(text)
    assert "resnet20-l1" in COMPRESSION_RECIPES.names()
    shipped = load_recipe("resnet20-l1")
    assert set(shipped.pruners) == {"stage1", "stage2", "stage3"}
    assert isinstance(load_recipe(shipped), Recipe)


def test_file_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="recipe 'missing.yaml' not found; pass a YAML path"):
        load_recipe("missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml': invalid YAML at line"):
        load_recipe(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_recipe(bad)
    bad.write_text("version: 1\npruners: {s1: {method: l1_filter, sparsity: 2, layers: [x]}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml': pruners.s1.sparsity: must be in \[0, 1\)"):
        load_recipe(bad)


def test_with_params_returns_a_new_validated_recipe():
    recipe = load_recipe("resnet20-l1")
    changed = recipe.with_params(
        {"stage1.sparsity": 0.25, "pruners.stage2.sparsity": 0.0, "finetune.lr": 0.5}
    )
    assert changed.pruners["stage1"].sparsity == 0.25
    assert changed.pruners["stage2"].sparsity == 0.0
    assert changed.finetune.lr == 0.5
    assert recipe.pruners["stage1"].sparsity == 0.6  # the original is unchanged
    added = load_recipe(_recipe()).with_params({"quantize.method": "int8_dynamic"})
    assert added.quantize.method == "int8_dynamic"
    with pytest.raises(ConfigError, match="names neither a pruner .labels: stage1, stage2"):
        recipe.with_params({"stage9.sparsity": 0.1})
    with pytest.raises(ConfigError, match=r"pruners.stage1.sparsity: must be in \[0, 1\)"):
        recipe.with_params({"stage1.sparsity": 1.5})
    with pytest.raises(ConfigError, match="must look like <pruner label>.<key>"):
        recipe.with_params({"stage1": 0.1})


def test_a_registered_method_becomes_valid_with_its_options_checked(monkeypatch):
    def magnitude(model, layers, sparsity, *, example_input=None, power: int = 1):
        """A stand-in pruning method."""
        return []

    monkeypatch.setitem(PRUNERS._entries, "magnitude", RegistryEntry("magnitude", magnitude))
    recipe = load_recipe(_recipe(pruners={"s1": _pruner(method="magnitude", power=2)}))
    assert recipe.pruners["s1"].options == {"power": 2}
    with pytest.raises(ConfigError, match="unknown key 'pow'; .*options of magnitude: power"):
        load_recipe(_recipe(pruners={"s1": _pruner(method="magnitude", pow=2)}))
    with pytest.raises(ConfigError, match="option 'power': Input should be a valid integer"):
        load_recipe(_recipe(pruners={"s1": _pruner(method="magnitude", power="high")}))


def test_layer_globs_select_modules():
    net = create("resnet20")
    names = [n for n, _ in select_modules(net, ["layer1.*.conv1"])]
    assert names == ["layer1.0.conv1", "layer1.1.conv1", "layer1.2.conv1"]
    assert [n for n, _ in select_modules(net, ["layer3.?.shortcut.0"])] == ["layer3.0.shortcut.0"]


@pytest.fixture(scope="module")
def resnet20():
    return create("resnet20")


def _check(model, pruners):
    return load_recipe(_recipe(pruners=pruners)).check(model)


def test_check_resolves_patterns_in_recipe_order(resnet20):
    resolved = _check(
        resnet20,
        {
            "inner": _pruner(layers=["layer2.*.conv1", "re:layer1\\.0\\.conv1"]),
            "residual": _pruner(layers=["conv1", "layer1.*.conv2"]),
        },
    )
    assert resolved == {
        "inner": ["layer2.0.conv1", "layer2.1.conv1", "layer2.2.conv1", "layer1.0.conv1"],
        "residual": ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
    }


@pytest.mark.parametrize(
    ("pruners", "expected"),
    [
        (
            {"s1": _pruner(layers=["layer9.*.conv1"])},
            "pruners.s1.layers: 'layer9.*.conv1' matches no module; conv/linear layers: conv1, "
            "layer1.0.conv1",
        ),
        (
            {"s1": _pruner(layers=["layer1.0.bn1"])},
            "pruners.s1: 'layer1.0.bn1' is a BatchNorm2d, not a conv or linear layer",
        ),
        (
            {"s1": _pruner(layers=["re:layer1.(["])},
            "pruners.s1.layers: layer pattern 're:layer1.([' is not a valid regex",
        ),
        ({"s1": _pruner(layers=["fc"])}, "pruners.s1: 'fc' is the model's output layer"),
        (
            {"s1": _pruner(layers=["layer1.0.conv2"])},
            "pruners.s1: 'layer1.0.conv2' shares its output channels with conv1, layer1.1.conv2, "
            "layer1.2.conv2 (their outputs are added, as at a residual connection); tied layers "
            "are pruned together: also list conv1, layer1.1.conv2, layer1.2.conv2",
        ),
        (
            {
                "a": _pruner(layers=["conv1", "layer1.0.conv2"]),
                "b": _pruner(layers=["layer1.1.conv2", "layer1.2.conv2"]),
            },
            "layers conv1, layer1.0.conv2, layer1.1.conv2, layer1.2.conv2 share their output "
            "channels (their outputs are added, as at a residual connection) but are split "
            "across pruners 'a' (conv1, layer1.0.conv2), 'b' (layer1.1.conv2, layer1.2.conv2); "
            "list them all in one pruner",
        ),
        (
            {"a": _pruner(layers=["layer1.0.conv1"]), "b": _pruner(layers=["layer1.*.conv1"])},
            "layer 'layer1.0.conv1' is listed by pruners 'a' and 'b'",
        ),
    ],
)
def test_model_checks_name_the_layer_and_the_fix(resnet20, pruners, expected):
    with pytest.raises(ConfigError) as err:
        _check(resnet20, pruners)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_layers_by_kind_select_only_layers_that_can_lose_filters():
    from edgetrain.models import create

    net = create("resnet20", num_classes=10)
    every = load_recipe(
        {
            "version": 1,
            "pruners": {"all": {"method": "l1_filter", "sparsity": 0.5, "layers": ["*"]}},
        }
    ).check(net)["all"]
    assert "fc" not in every and len(every) == 21 and every[0] == "conv1"
    convs = load_recipe(
        {
            "version": 1,
            "pruners": {"c": {"method": "l1_filter", "sparsity": 0.5, "layers": ["type:Conv2d"]}},
        }
    ).check(net)["c"]
    assert convs == every
    linear = {"version": 1, "pruners": {"l": {"method": "l1_filter", "sparsity": 0.5}}}
    linear["pruners"]["l"]["layers"] = ["type:Linear"]
    with pytest.raises(ConfigError, match="no 'Linear' layer can lose filters"):
        load_recipe(linear).check(net)
    linear["pruners"]["l"]["layers"] = ["type:LSTM"]
    with pytest.raises(ConfigError, match="'type:LSTM' matches no module"):
        load_recipe(linear).check(net)


def test_attention_embeddings_lose_whole_heads_with_the_layers_tied_to_them():
    """nn.MultiheadAttention keeps every head embed_dim / num_heads wide: its embedding
    (the residual stream) loses whole heads, with every layer that writes to it."""
    import torch

    from edgetrain.compress import apply
    from edgetrain.models import create

    net = create("vit_tiny", depth=2).eval()
    every = {"version": 1, "pruners": {"a": {"method": "l1_filter", "sparsity": 0.5}}}
    every["pruners"]["a"]["layers"] = ["*"]
    assert load_recipe(every).check(net)["a"] == [
        "patch_embed",
        "encoder.layers.0.linear1",
        "encoder.layers.0.linear2",
        "encoder.layers.1.linear1",
        "encoder.layers.1.linear2",
    ]
    x = torch.randn(2, 3, 32, 32)
    pruned, _ = apply(net, every)
    assert pruned.encoder.layers[0].linear1.out_features == 384
    attention = pruned.encoder.layers[0].self_attn
    assert (attention.embed_dim, attention.num_heads, attention.head_dim) == (128, 2, 64)
    assert pruned(x).shape == (2, 10)
    every["pruners"]["a"]["layers"] = ["patch_embed"]
    with pytest.raises(ConfigError, match="tied layers are pruned together: also list"):
        load_recipe(every).check(create("vit_tiny", depth=2))
