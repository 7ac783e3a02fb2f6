"""The layerwise memory accounting (the spec's formula: naive and with buffer reuse),
optimizer state, the forward-only peak and the cycle of a schedule, hand-computed on
tiny networks.

The chain used throughout is ``Linear(4, 3) -> ReLU -> Linear(3, 2)`` on one 4-vector:
weights 4*3 + 3 = 15 and 3*2 + 2 = 8 (23 elements); activations 4 (input), 3, 3, 2.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgetrain.cost import ALL, DeviceProfile, analyze
from edgetrain.models import create

WEIGHTS = 23


def _chain() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def test_conventional_step_naive_and_reuse_by_hand() -> None:
    report = analyze(_chain(), (4,), plans=[ALL], memory="layerwise")
    step = report.steps()[0]
    rows = report.by_layer()
    # stored inputs: 4 (fc0, for its weight grad), 3 (relu), 3 (fc2)
    assert [r.stored_activations for r in rows] == [4, 3, 3]
    # input-grad buffers above the lowest trained layer (relu 3, fc2 3) + weight grads
    assert [r.gradient_buffers for r in rows] == [0 + 15, 3, 3 + 8]
    # naive: weights 23 + stored 10 + input grads 6 + weight grads 23 = 62 elements
    assert step.memory_bytes == 4 * 62
    # reuse, walking down from the output (weights always live):
    #   fc2:  23 + stored 10 + its input grad 3 + its weight grad 8        = 44
    #   relu: 23 + stored 7 + incoming 3 + its input grad 3                = 36
    #   fc0:  23 + stored 4 + incoming 3 + weight grad 15                  = 45
    assert step.memory_reuse_bytes == 4 * 45
    assert step.weights_bytes == 4 * WEIGHTS and step.optimizer_state_bytes == 0


@pytest.mark.parametrize(("optimizer", "copies"), [("sgd", 0), ("momentum", 1), ("adam", 2)])
def test_optimizer_state_is_a_copy_per_updated_parameter(optimizer: str, copies: int) -> None:
    report = analyze(_chain(), (4,), plans=[ALL, ["2"]], optimizer=optimizer, memory="layerwise")
    everything, last = report.steps()
    assert everything.optimizer_state_bytes == 4 * copies * 23
    assert everything.memory_bytes == 4 * (62 + copies * 23)
    assert everything.memory_reuse_bytes == 4 * (45 + copies * 23)
    # training only the last linear: 8 parameters carry state
    assert last.optimizer_state_bytes == 4 * copies * 8


def test_training_one_layer_by_hand() -> None:
    report = analyze(_chain(), (4,), plans=[["2"], ["0"]], memory="layerwise")
    last, first = report.steps()
    # only fc2: weights 23 + its stored input 3 + no input grad + weight grad 8 = 34
    assert last.memory_bytes == last.memory_reuse_bytes == 4 * 34
    # only fc0 (fc2 frozen still passes the gradient): naive 23 + 10 + 6 + 15 = 54;
    # reuse: fc2 23 + 10 + 3 = 36, relu 23 + 7 + 3 + 3 = 36, fc0 23 + 4 + 3 + 15 = 45
    assert first.memory_bytes == 4 * 54
    assert first.memory_reuse_bytes == 4 * 45


def test_batch_scales_activations_but_not_weights() -> None:
    step = analyze(_chain(), (4,), plans=[ALL], batch_size=4, memory="layerwise").steps()[0]
    # stored 4 * 10, input grads 4 * 6, weights and weight grads unchanged
    assert step.memory_bytes == 4 * (23 + 40 + 24 + 23)
    # fc0: 23 + 16 + 12 + 15 = 66; fc2: 23 + 40 + 12 + 8 = 83; relu: 23 + 28 + 12 + 12 = 75
    assert step.memory_reuse_bytes == 4 * 83


def test_bytes_per_element_comes_from_the_profile() -> None:
    half = DeviceProfile(name="fp16", bytes_per_element=2)
    step = analyze(_chain(), (4,), plans=[ALL], profile=half, memory="layerwise").steps()[0]
    assert (step.memory_bytes, step.memory_reuse_bytes) == (2 * 62, 2 * 45)


def test_vgg_small_conv6_and_fc_by_hand() -> None:
    report = analyze(create("vgg_small"), (3, 32, 32), plans=[["conv6", "fc"]], memory="layerwise")
    step = report.steps()[0]
    # stored inputs: conv6, relu6, pool3 4096 each, fc 1024 = 13,312
    # input-grad buffers: relu6 4096, pool3 4096, fc 1024 = 9216
    # weight grads: 36,928 + 10,250 = 47,178
    assert step.memory_bytes == 4 * (82_330 + 13_312 + 9216 + 47_178)
    # reuse: fc 82,330 + 13,312 + 1024 + 10,250 = 106,916; pool3 82,330 + 12,288 + 1024
    # + 4096 = 99,738; relu6 82,330 + 8192 + 4096 + 4096 = 98,714; conv6 82,330 + 4096
    # + 4096 + 36,928 = 127,450
    assert step.memory_reuse_bytes == 4 * 127_450


def test_reuse_never_exceeds_naive() -> None:
    models = [
        (create("vgg_small"), ["last:1", "last:4", ALL]),
        (create("resnet_cifar", stages=2, blocks=[1, 1], widths=[8, 16]), [ALL, "last:2"]),
    ]
    for model, plans in models:
        for optimizer in ("sgd", "adam"):
            report = analyze(
                model, (3, 32, 32), plans=plans, optimizer=optimizer, memory="layerwise"
            )
            for step in [report.total(), *report.steps()]:
                assert 0 < step.memory_reuse_bytes <= step.memory_bytes, step.plan
                assert step.memory_reuse_bytes >= step.weights_bytes + step.optimizer_state_bytes


def test_forward_only_peak_of_the_chain() -> None:
    inference = analyze(_chain(), (4,)).total()
    # naive: weights + every activation 4 + 3 + 3 + 2
    assert inference.memory_bytes == 4 * (23 + 12)
    # peak: weights + the largest (input, output) pair: fc0's 4 + 3
    assert inference.memory_reuse_bytes == 4 * (23 + 7)


def test_forward_only_peak_is_the_largest_input_output_pair() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),  # 64 -> 256
        nn.Conv2d(4, 8, 3, stride=2, padding=1),  # 256 -> 128
        nn.Conv2d(8, 2, 1),  # 128 -> 32
    )
    weights = (9 + 1) * 4 + (36 + 1) * 8 + (8 + 1) * 2
    assert weights == sum(p.numel() for p in net.parameters()) == 354
    inference = analyze(net, (1, 8, 8)).total()
    assert inference.memory_reuse_bytes == 4 * (weights + 256 + 128)
    assert inference.memory_bytes == 4 * (weights + 64 + 256 + 128 + 32)


def test_forward_only_peak_of_vgg_small() -> None:
    # ReLUs are in place: the largest pair is conv2's 16x32x32 input and output
    inference = analyze(create("vgg_small"), (3, 32, 32)).total()
    assert inference.memory_reuse_bytes == 4 * (82_330 + 2 * 16_384)


def test_forward_peak_keeps_a_skip_connection_alive() -> None:
    class Skip(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x)) + x

    inference = analyze(Skip(), (4,)).total()
    # while b runs: x (kept for the add) 4 + a's output 16 + b's output 4
    assert inference.memory_reuse_bytes == 4 * (80 + 68 + 24)


# ----------------------------------------------------------------------------- cycle
def test_cycle_average_and_peak_relative_to_conventional() -> None:
    report = analyze(_chain(), (4,), plans=[["2"], ["0"], ALL], memory="layerwise")
    # step MACs: forward 26 each;
    #   ["2"]: fc2 weight grad 6 + update 8                              -> 40
    #   ["0"]: fc0 weight grad 12 + update 15, relu 0, fc2 input grad 6  -> 59
    #   all:   input grads 6, weight grads 18, updates 23                -> 73
    assert [s.step_macs for s in report.steps()] == [40, 59, 73]
    cycle = report.cycle()
    assert cycle.steps == 3
    assert cycle.average_step_macs == pytest.approx((40 + 59 + 73) / 3)
    assert cycle.peak_step_macs == 73 == cycle.conventional_step_macs
    assert cycle.relative_average_macs == pytest.approx(172 / 3 / 73)
    assert cycle.relative_peak_macs == 1.0
    assert cycle.peak_memory_bytes == 4 * 62 and cycle.peak_memory_reuse_bytes == 4 * 45


def test_cycle_without_the_conventional_step() -> None:
    cycle = analyze(_chain(), (4,), plans=[["2"], ["0"]], memory="layerwise").cycle()
    assert cycle.average_step_macs == pytest.approx(49.5)
    assert cycle.peak_step_macs == 59
    assert cycle.relative_peak_macs == pytest.approx(59 / 73)
    assert cycle.relative_average_macs == pytest.approx(49.5 / 73)
    # memory peaks over the two steps: naive 54 (["0"]) vs 62 conventional; reuse 45 both
    assert cycle.peak_memory_bytes == 4 * 54
    assert cycle.relative_peak_memory == pytest.approx(54 / 62)
    assert cycle.relative_peak_memory_reuse == pytest.approx(1.0)
    # average energy: (40 + 59) / 2 MACs at 3.2 pJ
    assert cycle.energy_nj == pytest.approx(49.5 * 3.2 / 1000)


def test_without_plans_the_cycle_is_the_conventional_step() -> None:
    report = analyze(_chain(), (4,))
    assert report.steps() == [report.conventional]
    assert report.cycle().relative_average_macs == 1.0
