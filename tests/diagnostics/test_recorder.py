"""Activation-pattern counting: exact and hashed tables, occupancy, hooks, ranks."""

from __future__ import annotations

import copy
import multiprocessing as mp
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from edgetrain.diagnostics import (
    ActivationMarker,
    OccupancyWarning,
    PatternRecorder,
    capture_patterns,
)
from edgetrain.errors import ConfigError


def _marked() -> nn.Module:
    return nn.Sequential(ActivationMarker())


def test_exact_counts_of_hand_made_pre_activations() -> None:
    net = _marked()
    x = torch.tensor(
        [
            [1.0, -1.0, 2.0],  # 101 -> 5
            [3.0, -2.0, 0.5],  # 101 -> 5
            [-1.0, -1.0, -1.0],  # 000 -> 0
            [0.0, 1.0, 0.0],  # 010 -> 2 (0 is off: pre-activation > 0)
        ]
    )
    with PatternRecorder(net, mode="exact") as rec:
        net(x)
        net(x[:1])
    assert rec.keys()["0"].tolist() == [0, 2, 5]
    assert rec.counts()["0"].tolist() == [1, 1, 3]
    assert rec.occupancy() == {"0": None}


def test_exact_and_hashed_counts_agree_when_occupancy_is_low() -> None:
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Conv2d(2, 12, 3), nn.ReLU())
    x = torch.randn(8, 2, 10, 10, generator=g)
    with PatternRecorder(net, mode="exact") as exact, PatternRecorder(net, mode="hash") as hashed:
        net(x)
    c_exact, c_hash = exact.counts()["1"], hashed.counts()["1"]
    assert c_hash.numel() == 2**20
    assert hashed.occupancy()["1"] < 0.01
    assert int(c_exact.sum()) == int(c_hash.sum()) == 8 * 8 * 8
    assert sorted(c_exact.tolist()) == sorted(c_hash[c_hash > 0].tolist())


def test_exact_counts_of_wide_and_narrow_layers_agree_with_a_python_count() -> None:
    # 12 channels count in a table indexed by the pattern, 40 channels by sorting.
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 40), nn.ReLU())
    with PatternRecorder(net, mode="exact") as rec:
        for _ in range(3):
            net(torch.randn(50, 3, generator=g))
    for name in ("1", "3"):
        seen: dict[int, int] = {}
        g = torch.Generator().manual_seed(2)
        for _ in range(3):
            words = capture_patterns(net, torch.randn(50, 3, generator=g), [name])[name]
            for word in words[:, 0].tolist():
                seen[word] = seen.get(word, 0) + 1
        assert rec.keys()[name].tolist() == sorted(seen)
        assert rec.counts()[name].tolist() == [seen[k] for k in sorted(seen)]


def test_auto_mode_is_exact_up_to_64_channels_and_hashes_wider_layers() -> None:
    net = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 65), nn.ReLU())
    with PatternRecorder(net, buckets=1024) as rec:
        net(torch.randn(10, 4))
    assert rec.exact() == {"1": True, "3": False}
    assert rec.channels() == {"1": 64, "3": 65}
    assert rec.counts()["3"].numel() == 1024
    exact = PatternRecorder(net, mode="exact")
    with pytest.raises(ConfigError, match="at most 64 channels; '3' has 65"), exact:
        net(torch.randn(2, 4))


def test_occupancy_warns_above_ten_percent() -> None:
    net = nn.Sequential(nn.Linear(2, 16), nn.ReLU())
    with PatternRecorder(net, mode="hash", buckets=16) as rec:
        net(torch.randn(200, 2))
    with pytest.warns(OccupancyWarning, match="'1': .* of 16 buckets in use"):
        shares = rec.occupancy()
    assert shares["1"] > 0.1
    assert shares["1"] == (rec.counts()["1"] > 0).float().mean().item()


def test_prehook_sees_the_pre_activation_of_a_negative_slope_prelu() -> None:
    prelu = nn.PReLU(num_parameters=1, init=-1.0)  # output > 0 where the input is < 0
    net = nn.Sequential(prelu)
    with PatternRecorder(net, mode="exact") as rec:
        net(torch.tensor([[-1.0, 2.0]]))
    assert rec.keys()["0"].tolist() == [0b10]


def test_recorder_counts_only_inside_the_context_and_resets() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU6())
    rec = PatternRecorder(net)
    with rec:
        net(torch.randn(5, 2))
    net(torch.randn(9, 2))  # outside: not counted
    assert int(rec.counts()["1"].sum()) == 5 and not rec.active
    with rec:
        net(torch.randn(3, 2))
    assert int(rec.counts()["1"].sum()) == 8
    rec.reset()
    assert rec.counts() == {}


def test_a_deep_copy_of_a_hooked_model_does_not_feed_the_recorder() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU())
    with PatternRecorder(net) as rec:
        copy.deepcopy(net)(torch.randn(6, 2))
        net(torch.randn(2, 2))
    assert int(rec.counts()["1"].sum()) == 2


def test_bad_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown pattern mode 'fast'"):
        PatternRecorder(nn.Sequential(nn.ReLU()), mode="fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no activation layers"):
        PatternRecorder(nn.Linear(2, 2), input_shape=(2,))
    # without an input shape, functional activations are looked for at the first forward
    net = nn.Linear(2, 2)
    with pytest.raises(ConfigError, match="has no activation layers"), PatternRecorder(net):
        net(torch.randn(3, 2))
    assert not net._forward_pre_hooks and not net._forward_hooks


def _rank_net() -> nn.Module:
    """6 channels: exact, indexed by pattern; 30: exact, sorted; 80: hashed."""
    return nn.Sequential(
        nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 30), nn.ReLU(), nn.Linear(30, 80), nn.ReLU()
    )


def _count_on_rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)  # the parent's OpenMP pool does not survive the fork
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        net = _rank_net()
        x = torch.randn(40, 3)[rank::2]  # each rank sees its half
        with PatternRecorder(net, buckets=4096) as rec:
            net(x)
        rec.all_reduce()
        torch.save({"keys": rec.keys(), "counts": rec.counts()}, f"{out}-{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="no gloo backend"
)
def test_all_reduce_over_two_gloo_ranks_equals_one_process(tmp_path: Path) -> None:
    ctx = mp.get_context("fork")  # the children inherit the imports: no start-up cost
    store, out = str(tmp_path / "store"), str(tmp_path / "counts")
    procs = [ctx.Process(target=_count_on_rank, args=(r, store, out)) for r in range(2)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(timeout=60)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    assert [p.exitcode for p in procs] == [0, 0]

    torch.manual_seed(0)
    net = _rank_net()
    with PatternRecorder(net, buckets=4096) as rec:
        net(torch.randn(40, 3))
    for rank in range(2):
        got = torch.load(f"{out}-{rank}.pt", weights_only=True)
        assert got["keys"]["5"] is None  # hashed: tables summed
        assert torch.equal(got["counts"]["5"], rec.counts()["5"])
        for name in ("1", "3"):  # exact: tables summed, or keys gathered and merged
            assert torch.equal(got["keys"][name], rec.keys()[name])
            assert torch.equal(got["counts"][name], rec.counts()[name])


class _Tokens(nn.Module):
    """Linear features of (N, L, C) tokens, and a conv over (N, C, L) sequences."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 6)
        self.relu_tokens = nn.ReLU()
        self.conv = nn.Conv1d(6, 5, 3, padding=1)
        self.relu_conv = nn.ReLU()
        self.rnn = nn.GRU(5, 7, batch_first=True)
        self.relu_rnn = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, L, 4)
        h = self.relu_tokens(self.embed(x))  # (N, L, 6): channels last
        h = self.relu_conv(self.conv(h.transpose(1, 2)))  # (N, 5, L): channels first
        out, _ = self.rnn(h.transpose(1, 2))  # (N, L, 7)
        return self.relu_rnn(out)


@pytest.mark.parametrize("shape_known", [True, False])
def test_token_activations_are_recorded_per_token(shape_known: bool) -> None:
    torch.manual_seed(0)
    net = _Tokens()
    x = torch.randn(3, 9, 4)
    shape = (9, 4) if shape_known else None
    with PatternRecorder(net, mode="exact", input_shape=shape) as rec:
        net(x)
    assert rec.layouts == {"relu_tokens": -1, "relu_conv": 1, "relu_rnn": -1}
    counts = rec.counts()
    # one pattern per token (3 x 9) over the layer's channels
    assert {n: int(c.sum()) for n, c in counts.items()} == {
        "relu_tokens": 27,
        "relu_conv": 27,
        "relu_rnn": 27,
    }
    h = net.embed(x).detach() > 0
    words = (h.long() * (2 ** torch.arange(6))).sum(-1).flatten()
    expected = torch.bincount(words, minlength=2**6)
    got = counts["relu_tokens"]
    assert sorted(got[got > 0].tolist()) == sorted(expected[expected > 0].tolist())
