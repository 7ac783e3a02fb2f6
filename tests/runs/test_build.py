"""Building what a run trains from its config alone."""

from __future__ import annotations

from edgetrain.cost import analyze
from edgetrain.runs import build_run_model, load_config


def test_the_cost_model_sees_the_model_the_run_trains() -> None:
    """Options the recipe leaves out (channels, classes) come from the data, as in
    training: a 1-channel 8x8 digits run is counted at 1x8x8, not at the zoo default."""
    config = load_config(
        {
            "name": "tiny",
            "epochs": 1,
            "data": {"name": "digits", "options": {"test_fraction": 0.5}},
            "model": {"name": "vgg_small", "options": {"input_size": 8}, "freeze": ["conv1"]},
        }
    )
    model, shape = build_run_model(config)
    assert shape == (1, 8, 8)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert all(p.requires_grad for p in model.parameters())  # counted as schedules say
    conv1 = next(r for r in analyze(model, shape).by_layer() if r.name == "conv1")
    # one input channel: 16 filters x 22^2 in-bounds taps of a padded 3x3 on 8x8, + bias
    assert conv1.in_shape == (1, 1, 8, 8) and conv1.forward == 16 * 22 * 22 + 16 * 8 * 8


def test_a_named_output_layer_reaches_the_model_and_an_unknown_one_is_refused() -> None:
    import pytest

    from edgetrain.errors import ConfigError
    from edgetrain.models import output_layers
    from edgetrain.runs import build_trainer

    tree = {
        "name": "tiny",
        "epochs": 1,
        "data": {"name": "digits", "options": {"test_fraction": 0.5}},
        "model": {"name": "vgg_small", "options": {"input_size": 8}, "output_layer": "fc"},
    }
    trainer = build_trainer(load_config(tree), None, progress=False)
    assert output_layers(trainer.model) == ["fc"]
    assert trainer.architecture["output_layer"] == "fc"
    tree["model"]["output_layer"] = ["fc", "classifier"]
    with pytest.raises(
        ConfigError, match="model.output_layer: the model has no layer 'classifier'"
    ):
        build_trainer(load_config(tree), None, progress=False)
