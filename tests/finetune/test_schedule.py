"""Schedule notation, explicit matrices and derived modes, as specs/layer-scheduling.md
defines them ("Schedule", "String notation", "Modes")."""

from __future__ import annotations

import re

import pytest

from edgetrain.finetune import MODES, Schedule, even_placement


# ------------------------------------------------------------------ string notation
@pytest.mark.parametrize(
    ("text", "bits", "mode", "mean_rates"),
    [
        ("4421", ["1111", "1111", "1010", "1000"], "bpls", (1.0, 1.0, 0.5, 0.25)),
        ("4440", ["1111", "1111", "1111", "0000"], "conventional", (1.0, 1.0, 1.0, 0.0)),
        ("444440", ["1111"] * 5 + ["0000"], "conventional", (1.0,) * 5 + (0.0,)),
        ("4422_m", ["1111", "1111", "1010", "0101"], "bpls", (1.0, 1.0, 0.5, 0.5)),
        ("4444_lr4421", ["1111"] * 4, "pllr", (1.0, 1.0, 0.5, 0.25)),
        ("4421_lr4444", ["1111", "1111", "1010", "1000"], "upscaled", (1.0, 1.0, 1.0, 1.0)),
        ("4421_rdo", ["1111"] * 4, "rdo", (1.0, 1.0, 0.5, 0.25)),
        ("4444", ["1111"] * 4, "conventional", (1.0,) * 4),
    ],
)
def test_notation_parses_to_the_spec_matrix(text, bits, mode, mean_rates):
    s = Schedule.parse(text)
    assert s.bits() == bits
    assert s.mode == mode
    assert s.cycle_length == 4
    assert s.rows == len(bits)
    assert s.mean_rates == pytest.approx(mean_rates)
    assert str(s) == text


def test_hex_like_digits_give_the_cycle_length():
    s = Schedule.parse("A98765")
    assert s.cycle_length == 10
    assert [sum(row) for row in s.pattern] == [10, 9, 8, 7, 6, 5]
    assert s.mean_rates == pytest.approx((1.0, 0.9, 0.8, 0.7, 0.6, 0.5))
    assert s.bits()[-1] == "1010101010"  # 5 of 10, evenly spaced from step 0
    assert Schedule.parse("a98765").bits() == s.bits()


@pytest.mark.parametrize(("count", "row"), [(4, "1111"), (3, "1110"), (2, "1010"), (1, "1000")])
def test_default_placement_is_evenly_spaced_from_step_0(count, row):
    assert "".join(map(str, even_placement(count, 4))) == row
    assert Schedule.parse(f"4{count}").bits()[1] == row


def test_trailing_zeros_are_frozen_rows():
    s = Schedule.parse("444440")
    assert s.rows == 6 and s.trained_rows == 5
    assert s.matrix[-1] == [0.0, 0.0, 0.0, 0.0]
    assert not any(s.active(t)[-1] for t in range(4))


def test_matrix_holds_the_rate_of_each_step():
    assert Schedule.parse("4421").matrix == [
        [1.0, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
        [1.0, 0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0, 0.0],
    ]
    # pllr: every step at s/T; upscaled: the bpls steps at T/s
    assert Schedule.parse("4444_lr4421").matrix[2:] == [[0.5] * 4, [0.25] * 4]
    assert Schedule.parse("4421_lr4444").matrix[2:] == [[2.0, 0.0, 2.0, 0.0], [4.0, 0, 0, 0]]
    rdo = Schedule.parse("4421_rdo")
    assert rdo.matrix == [[1.0] * 4] * 4
    assert rdo.keep == (1.0, 1.0, 0.5, 0.25)


def test_step_t_uses_column_t_mod_T():
    s = Schedule.parse("4421")
    assert [s.active(t)[3] for t in range(9)] == [True, False, False, False] * 2 + [True]
    assert s.active(6) == [True, True, True, False]


@pytest.mark.parametrize("counts", ["4421", "4422", "8631", "A975"])
def test_pllr_bpls_and_rdo_of_the_same_counts_have_equal_mean_rates(counts):
    t = int(counts[0], 16)
    full = counts[0] * len(counts)
    bpls = Schedule.parse(counts)
    expected = tuple(int(c, 16) / t for c in counts)
    assert bpls.mean_rates == pytest.approx(expected)
    assert Schedule.parse(f"{full}_lr{counts}").mean_rates == pytest.approx(expected)
    assert Schedule.parse(f"{counts}_rdo").mean_rates == pytest.approx(expected)
    assert Schedule.parse(f"{counts}_lr{full}").mean_rates == pytest.approx((1.0,) * len(counts))


def test_m_staggers_lower_rows_that_bpls_places_together():
    plain, memory = Schedule.parse("4211"), Schedule.parse("4211_m")
    assert plain.bits() == ["1111", "1010", "1000", "1000"]
    assert [sum(r) for r in memory.pattern] == [4, 2, 1, 1]
    # the partial rows are never all active in one step
    for t in range(4):
        assert sum(memory.active(t)[1:]) <= 1
    assert memory.mean_rates == plain.mean_rates


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("44#1", "unknown character"),
        ("4421!", "unknown character"),
        ("4451", "updated 5 times in a cycle of T=4"),
        ("", "not valid notation"),
        ("   ", "not valid notation"),
        ("0", "cycle length"),
        ("000", "cycle length"),
        ("4401", "'0' (a frozen layer) may only appear at the end"),
        ("4421_m_rdo", "conflicting"),
        ("4421_rdo_lr4444", "conflicting"),
        ("4421_lr4444_lr4421", "conflicting"),
        ("4421_m_m", "conflicting"),
        ("4421_lr444", "_lr part needs 4 layers and T=4"),
        ("4421_lr44211", "_lr part needs 4 layers"),
        ("4421_lr3321", "T=4"),
        ("4420_lr4421", "layer 4 is frozen in one part"),
        ("4421_x", "not valid notation"),
    ],
)
def test_bad_notation_raises_one_line_naming_the_problem(text, needle):
    with pytest.raises(ValueError) as info:
        Schedule.parse(text)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_unknown_character_is_named():
    with pytest.raises(ValueError, match="unknown character '#'"):
        Schedule.parse("44#1")


# ------------------------------------------------------------------ explicit matrices
def test_from_matrix_with_bit_strings():
    s = Schedule.from_matrix(["1111", "1010", "0101"])
    assert s.bits() == ["1111", "1010", "0101"]
    assert s.mode == "bpls"
    assert s.mean_rates == (1.0, 0.5, 0.5)
    assert s.rates == (1.0, 1.0, 1.0)
    assert str(s) == "1111/1010/0101"
    assert Schedule.from_matrix(["11", "11", "00"]).mode == "conventional"


def test_from_matrix_with_rate_lists():
    s = Schedule.from_matrix([[1, 1, 1, 1], [2, 0, 2, 0], [0, 0, 0, 0.5]], name="mine")
    assert s.bits() == ["1111", "1010", "0001"]
    assert s.rates == (1.0, 2.0, 0.5)
    assert s.matrix == [[1.0] * 4, [2.0, 0.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.5]]
    assert s.mean_rates == pytest.approx((1.0, 1.0, 0.125))
    assert str(s) == "mine" and s.mode == "bpls"
    # a full row at a rate other than 1 is not conventional training
    assert Schedule.from_matrix([[0.5, 0.5]]).mode == "bpls"


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([], "at least one row"),
        (["1121"], "only 0 and 1"),
        (["1111", [1, -1, 1, 1]], "rates must be >= 0"),
        ([[1, 2, 1, 2]], "one rate per row"),
        (["1111", "10"], "same number of steps"),
        ([""], "at least one row and one step"),
    ],
)
def test_from_matrix_errors(rows, needle):
    with pytest.raises(ValueError, match=needle):
        Schedule.from_matrix(rows)


def test_with_pattern_must_keep_the_counts():
    s = Schedule.parse("4421")
    moved = s.with_pattern([[1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 0]])
    assert moved.bits()[2:] == ["0101", "0010"] and moved.mean_rates == s.mean_rates
    with pytest.raises(ValueError, match="number of updates"):
        s.with_pattern([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 1, 0]])


# ------------------------------------------------------------------ modes
@pytest.mark.parametrize(
    ("mode", "name", "bits", "rates", "keep"),
    [
        ("conventional", "4444", ["1111"] * 4, (1, 1, 1, 1), (1, 1, 1, 1)),
        ("bpls", "4421", ["1111", "1111", "1010", "1000"], (1, 1, 1, 1), (1, 1, 1, 1)),
        ("pllr", "4444_lr4421", ["1111"] * 4, (1, 1, 0.5, 0.25), (1, 1, 1, 1)),
        ("upscaled", "4421_lr4444", ["1111", "1111", "1010", "1000"], (1, 1, 2, 4), (1,) * 4),
        ("rdo", "4421_rdo", ["1111"] * 4, (1, 1, 1, 1), (1, 1, 0.5, 0.25)),
    ],
)
def test_in_mode_derives_each_mode_from_the_counts(mode, name, bits, rates, keep):
    for source in ("4421", "4421_rdo", "4421_lr4444"):
        s = Schedule.parse(source).in_mode(mode)
        assert str(s) == name
        assert s.mode == mode
        assert s.bits() == bits
        assert s.rates == pytest.approx(rates)
        assert s.keep == pytest.approx(keep)


def test_in_mode_keeps_m_placement_and_rejects_unknown_modes():
    assert Schedule.parse("4422_m").in_mode("bpls").bits() == ["1111", "1111", "1010", "0101"]
    assert Schedule.parse("4422_m").in_mode("upscaled").bits()[2:] == ["1010", "0101"]
    assert Schedule.parse("4440").in_mode("pllr").bits()[-1] == "0000"
    with pytest.raises(ValueError, match="unknown mode 'sgd'"):
        Schedule.parse("4421").in_mode("sgd")
    assert set(MODES) == {"conventional", "bpls", "pllr", "upscaled", "rdo"}


def test_in_mode_of_a_pllr_schedule_keeps_its_update_counts():
    pllr = Schedule.parse("4444_lr4421")
    assert str(pllr.in_mode("pllr")) == "4444_lr4421"
    assert str(pllr.in_mode("bpls")) == "4421"
    assert pllr.in_mode("rdo").mean_rates == pllr.mean_rates


def test_in_mode_round_trip_through_upscaled_keeps_m():
    memory = Schedule.parse("4422_m")
    assert str(memory.in_mode("upscaled").in_mode("bpls")) == "4422_m"


def test_explicit_matrices_are_written_row_by_row():
    s = Schedule.parse("1111/1010/0101")
    assert s.bits() == ["1111", "1010", "0101"] and s.mode == "bpls"
    assert str(s) == "1111/1010/0101" and s.slug == "1111-1010-0101"
    rates = Schedule.parse("1,1,1,1/0.5,0,0.5,0/0,0,0,0")
    assert rates.matrix == [[1.0] * 4, [0.5, 0.0, 0.5, 0.0], [0.0] * 4]
    assert Schedule.parse(str(rates)).matrix == rates.matrix  # the text reads back
    assert rates.slug == "1_1_1_1-0.5_0_0.5_0-0_0_0_0"
    # YAML gives lists; notation and Schedules pass through
    assert Schedule.coerce(["1111", "1010"]).bits() == ["1111", "1010"]
    assert Schedule.coerce([[1, 0], [0, 2]]).matrix == [[1.0, 0.0], [0.0, 2.0]]
    assert str(Schedule.coerce("4421")) == "4421"
    assert Schedule.coerce(s) is s


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("1111/10", "schedule '1111/10': every row of an explicit schedule needs the same"),
        ("11x1/1010", "row 1 '11x1': bit strings hold only 0 and 1"),
        ("1,a/1,1", "row 1 '1,a' must be numbers separated by commas"),
        ("1,2/1,1", "one rate per row"),
    ],
)
def test_bad_matrices_name_the_row(text, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        Schedule.parse(text)
