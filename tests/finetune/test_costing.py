"""What a schedule costs on ``vgg_small`` under the cost model: per-step plans, relative
ops against conventional training, the ``_m`` placement and budget suggestions."""

from __future__ import annotations

import pytest
from torch import nn

from edgetrain.cost import DeviceProfile
from edgetrain.finetune import (
    Schedule,
    optimise_placement,
    schedule_cost,
    schedule_layers,
    step_plans,
    suggest_schedules,
)
from edgetrain.models import create

SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    return create("vgg_small")


def _cost(model: nn.Module, text: str):
    return schedule_cost(model, SHAPE, Schedule.parse(text))


# ------------------------------------------------------------------ plans
def test_rows_map_to_the_last_weight_layers_output_first(vgg):
    assert Schedule.parse("4421").plans(vgg) == [
        ["fc", "conv6", "conv5", "conv4"],
        ["fc", "conv6"],
        ["fc", "conv6", "conv5"],
        ["fc", "conv6"],
    ]
    assert schedule_layers(vgg, Schedule.parse("4440")) == ["fc", "conv6", "conv5", "conv4"]
    assert step_plans(vgg, Schedule.parse("4440")) == [["fc", "conv6", "conv5"]] * 4
    assert step_plans(vgg, Schedule.parse("A98765"))[9] == ["fc"]


def test_more_rows_than_layers_is_an_error_naming_the_layers(vgg):
    with pytest.raises(ValueError, match="8 rows but the model has only 7 weight layers"):
        Schedule.parse("44444444").plans(vgg)
    assert len(step_plans(vgg, Schedule.parse("4444444"))[0]) == 7


# ------------------------------------------------------------------ cost
@pytest.mark.parametrize("text", ["4421", "4422", "4422_m", "4211", "A98765", "4421_lr4444"])
def test_bpls_schedules_cost_less_than_conventional(vgg, text):
    cost = _cost(vgg, text)
    assert 0.0 < cost.relative_ops < 1.0
    assert cost.average_step_macs == pytest.approx(
        sum(s.step_macs for s in cost.steps) / len(cost.steps)
    )
    assert all(s.step_macs <= cost.conventional.step_macs for s in cost.steps)
    assert cost.peak_step_macs <= cost.conventional.step_macs


@pytest.mark.parametrize("text", ["4444", "4440", "44", "4444_lr4421", "4421_rdo"])
def test_schedules_training_every_row_every_step_cost_conventional(vgg, text):
    cost = _cost(vgg, text)
    assert cost.relative_ops == 1.0
    assert cost.relative_peak_memory == 1.0


def test_relative_estimated_ops_carries_a_profiles_fixed_costs(vgg):
    fixed = DeviceProfile(name="fixed", offset_per_step=1e7)
    raw = schedule_cost(vgg, (3, 32, 32), Schedule.parse("4421"))
    cost = schedule_cost(vgg, (3, 32, 32), Schedule.parse("4421"), profile=fixed)
    assert raw.relative_estimated_ops == pytest.approx(raw.relative_ops)  # reference: MACs
    mean = cost.average_step_macs + 1e7
    assert cost.relative_estimated_ops == pytest.approx(
        mean / (cost.conventional.step_macs + 1e7), rel=1e-9
    )
    assert raw.relative_ops < cost.relative_estimated_ops < 1.0


def test_conventional_step_covers_the_trained_rows_only(vgg):
    assert _cost(vgg, "4440").conventional.step_macs == _cost(vgg, "444").conventional.step_macs
    assert _cost(vgg, "4421").conventional.step_macs == _cost(vgg, "4444").steps[0].step_macs
    assert _cost(vgg, "444").conventional.step_macs < _cost(vgg, "4444").conventional.step_macs


def test_upscaled_costs_what_its_bpls_pattern_costs(vgg):
    bpls, upscaled = _cost(vgg, "4421"), _cost(vgg, "4421_lr4444")
    assert [s.step_macs for s in upscaled.steps] == [s.step_macs for s in bpls.steps]


@pytest.mark.parametrize(("plain", "memory"), [("4422", "4422_m"), ("4211", "4211_m")])
def test_m_schedules_lower_peak_memory_of_their_plain_twin(vgg, plain, memory):
    p, m = _cost(vgg, plain), _cost(vgg, memory)
    assert p.peak_memory_bytes == p.conventional.memory_bytes  # every row trained at step 0
    assert m.peak_memory_bytes < p.peak_memory_bytes
    assert m.relative_peak_memory < 1.0


# ------------------------------------------------------------------ placement
@pytest.mark.parametrize("text", ["4422_m", "4211_m", "42211_m"])
def test_optimise_placement_keeps_counts_and_never_raises_peak_memory(vgg, text):
    staggered = Schedule.parse(text)
    best = optimise_placement(staggered, vgg, SHAPE)
    assert [sum(r) for r in best.pattern] == [sum(r) for r in staggered.pattern]
    assert best.mean_rates == staggered.mean_rates
    assert best.mode == staggered.mode and str(best) == text
    # compared under the accounting the placement minimises (layerwise by default)
    before = schedule_cost(vgg, SHAPE, staggered, memory="layerwise")
    after = schedule_cost(vgg, SHAPE, best, memory="layerwise")
    assert after.peak_memory_bytes <= before.peak_memory_bytes
    # no rotation of a single row does better
    for i, row in enumerate(best.pattern):
        for shift in range(1, best.cycle_length):
            pattern = [list(r) for r in best.pattern]
            pattern[i] = list(row[shift:] + row[:shift])
            other = schedule_cost(vgg, SHAPE, best.with_pattern(pattern), memory="layerwise")
            assert other.peak_memory_bytes >= after.peak_memory_bytes


def test_optimise_placement_finds_a_lower_peak_than_staggering(vgg):
    staggered = Schedule.parse("42211_m")
    best = optimise_placement(staggered, vgg, SHAPE)
    assert (
        schedule_cost(vgg, SHAPE, best, memory="layerwise").peak_memory_bytes
        < schedule_cost(vgg, SHAPE, staggered, memory="layerwise").peak_memory_bytes
    )


def test_optimise_placement_leaves_full_rows_and_large_searches_alone(vgg):
    full = Schedule.parse("4440")
    assert optimise_placement(full, vgg, SHAPE) is full
    many = Schedule.parse("42211_m")
    assert optimise_placement(many, vgg, SHAPE, max_candidates=3) is many


def test_optimise_placement_keeps_the_spec_placement_on_a_tie(vgg):
    best = optimise_placement(Schedule.parse("4422_m"), vgg, SHAPE)
    assert best.bits() == ["1111", "1111", "1010", "0101"]


# ------------------------------------------------------------------ suggestions
def test_suggested_schedules_fit_the_budgets_ranked_by_mean_rate(vgg):
    ops, mem = 15e6, 1.26e6  # memory: the step's allocator peak
    found = suggest_schedules(vgg, SHAPE, max_ops_per_step=ops, max_peak_mem=mem)
    assert 0 < len(found) <= 10
    everything = _cost(vgg, "4444444")
    assert everything.peak_step_macs > ops and everything.peak_memory_reuse_bytes > mem
    for c in found:
        assert c.peak_step_macs <= ops
        assert c.peak_memory_reuse_bytes <= mem
        counts = [sum(r) for r in c.schedule.pattern]
        assert counts == sorted(counts, reverse=True)  # output layers at least as often
        assert c.relative_ops <= 1.0
    totals = [sum(c.schedule.mean_rates) for c in found]
    assert totals == sorted(totals, reverse=True)
    assert len({str(c.schedule) for c in found}) == len(found)


def test_no_budget_suggests_full_training_and_impossible_budget_nothing(vgg):
    (top,) = suggest_schedules(vgg, SHAPE, top=1, max_rows=3)
    assert top.schedule.bits() == ["1111"] * 3
    assert suggest_schedules(vgg, SHAPE, max_ops_per_step=10, max_rows=3) == []
