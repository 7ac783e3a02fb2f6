"""Device memory fit: SRAM and flash needs checked by hand on a tiny network."""

from __future__ import annotations

import pytest
from torch import nn

from edgetrain.cost import DeviceProfile, analyze, load_profile, memory_fit, step_fit
from edgetrain.errors import EdgetrainError
from edgetrain.models import create


def _mlp() -> nn.Module:
    # 8*4+4 + 4*2+2 = 46 parameters: 184 bytes in FP32
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


def test_inference_needs_weights_in_flash_and_activations_in_sram():
    device = DeviceProfile(name="tiny", sram_bytes=100, flash_bytes=200)
    inference = analyze(_mlp(), (8,), profile=device).inference
    fit = step_fit(inference, device)
    assert fit.flash_needed == 184  # every weight, in the program image
    # Activations at the peak (the first linear): its input (8) and output (4) floats.
    assert fit.sram_needed == (8 + 4) * 4 == 48
    assert fit.fits and fit.sram_margin == 52 and fit.flash_margin == 16
    assert "inference fits on tiny: SRAM 48 B of 100 B (52 B left)" in fit.summary()


def test_weights_copied_to_sram_and_reserved_memory_count():
    device = DeviceProfile(
        name="tiny",
        sram_bytes=200,
        flash_bytes=200,
        weights_in="sram",
        reserved_sram_bytes=10,
        reserved_flash_bytes=20,
    )
    fit = step_fit(analyze(_mlp(), (8,), profile=device).inference, device)
    assert fit.sram_needed == 184 + 48 + 10  # weights, activations, the firmware's share
    assert fit.flash_needed == 184 + 20
    assert not fit.fits and fit.sram_margin == -42 and fit.flash_margin == -4
    assert "does not fit" in fit.summary() and "42 B over" in fit.summary()


def test_a_training_step_keeps_only_its_frozen_weights_in_flash():
    device = DeviceProfile(name="tiny", sram_bytes=1000, flash_bytes=1000)
    report = analyze(_mlp(), (8,), plans=["last:1", "all"], profile=device, memory="tensors")
    inference, last, every = memory_fit(report)
    assert inference.what == "inference" and last.what == "last:1" and every.what == "all"
    last_step, all_step = report.steps()
    assert last_step.trained_weights_bytes == (4 * 2 + 2) * 4  # the last layer only
    assert all_step.trained_weights_bytes == 184
    # SRAM: the step's peak less the 144 bytes of frozen weights read from flash.
    assert last.sram_needed == last_step.memory_reuse_bytes - (184 - 40)
    assert every.sram_needed == all_step.memory_reuse_bytes  # every weight is trained
    assert inference.sram_needed < last.sram_needed < every.sram_needed
    assert {f.flash_needed for f in (inference, last, every)} == {184}


def test_shipped_microcontroller_profiles():
    small, large = load_profile("stm32f303k8"), load_profile("stm32f746")
    assert (small.sram_bytes, small.flash_bytes) == (16 * 1024, 64 * 1024)
    assert (large.sram_bytes, large.flash_bytes) == (320 * 1024, 1024 * 1024)
    net = create("ds_cnn")
    report = analyze(net, net.input_shape, plans=["last:1"], profile=small)
    assert [f.fits for f in memory_fit(report)] == [False, False]  # 91 KiB of weights
    report = analyze(net, net.input_shape, plans=["last:1"], profile=large)
    assert [f.fits for f in memory_fit(report)] == [True, True]


def test_a_profile_without_sizes_is_refused():
    report = analyze(_mlp(), (8,))
    with pytest.raises(EdgetrainError, match="gives no memory sizes"):
        memory_fit(report)
