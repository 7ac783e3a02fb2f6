"""ActCoolLR vs step decay vs one-cycle on the pretraining of scenarios 1 and 2.

ActCooLR (activation pattern temperature for learning-rate control) sets every step's
rate so the share of activation patterns one step changes follows a cooling plan. The
published finding: it matches or beats tuned schedules, with a one-cycle-like LR curve
whose peak is much higher, and converges late (poor anytime accuracy).

Scenarios (the shipped recipes' data, model, batch size and optimizer):

1. ``digits``: ``vgg_small`` on ``digits-32`` (1 channel), batch 32, SGD momentum 0.9,
   weight decay 5e-4 (recipe ``digits-pretrain``).
2. ``keywords``: ``kws_cnn`` on ``keywords-en`` (16 kHz), batch 32, Adam (recipe
   ``keywords-pretrain``).

Schedules, equal epochs, every seed:

- ``step``: the recipe's optimizer, rate divided by 10 at 50 % and 75 % of the epochs;
- ``onecycle``: the recipe's optimizer, one-cycle to a peak rate (warm-up 30 %);
- ``actcool``: ActCoolLR with its defaults (T_start 3.17, gamma 4, power plan) driving
  plain SGD (momentum 0, the recipe's weight decay): with momentum the controller's
  hot start diverges on these nets (see BENCHMARKS.md).

The baselines' rates come from the recipes (digits: 0.02; keywords: Adam 1e-3); with
``--lr-grid 0.5,1,2`` every baseline first tries those multiples of its rate on the
first seed and keeps the best final accuracy (the tuning is then part of the result).

Reported per scenario and schedule: mean and spread (standard deviation) of the final
test top-1 over the seeds, the best epoch's top-1, the top-1 after a quarter and half of
the epochs (anytime accuracy), the peak rate and the wall time. Writes
``results/actcool.json`` and ``results/actcool_lr.png`` (LR curves of the first seed and
mean accuracy per epoch).

With ``--protocol thesis`` the setup follows the diagnostics thesis (its section 3.3.2
and appendix A.4): batch-norm networks (``resnet20``, 1 input channel, on the same
data), every schedule driving SGD with momentum 0.9 and no weight decay (the baselines
at rate 0.1, the usual ResNet rate), 15 epochs by default, and ActCoolLR's ``T_start``
lowered from 3.17 (3.17, 2.5, 2.0, 1.5, 1.0, 0.75, 0.5) until no seed's whole run
diverges (a value is dropped at its first diverging seed); that search is reported, and
the seeds' rows are the runs at the value found. ActCoolLR controls the mean
temperature over layers (its default). ``--max-rise X`` limits how far one measurement
may raise ActCoolLR's rate (result files then end in ``-riseX``).

Run: python benchmarks/actcool.py [--epochs-digits 10 --epochs-keywords 15 --seeds 0,1,2]
     python benchmarks/actcool.py --protocol thesis [--epochs-digits 15 --epochs-keywords 15]
         [--methods actcool --max-rise 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from _common import RESULTS, print_table, write_result  # noqa: E402

from edgetrain import data, models  # noqa: E402
from edgetrain.diagnostics import ActCoolLR, DivergenceError  # noqa: E402
from edgetrain.engine import Callback, Trainer, build_optimizer, build_scheduler  # noqa: E402


@dataclass
class Scenario:
    """Data, model and the recipe's optimizer of one pretraining scenario."""

    data: str
    model: str
    epochs: int
    optimizer: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 32


SCENARIOS = {
    "digits": Scenario(
        "digits-32",
        "vgg_small",
        10,
        {"name": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 5e-4},
        {"channels": 1},
    ),
    "keywords": Scenario("keywords-en", "kws_cnn", 15, {"name": "adam", "lr": 1e-3}),
}


# The thesis' protocol: batch-norm networks, SGD momentum 0.9 without weight decay.
THESIS_OPTIMIZER = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0}
THESIS_SCENARIOS = {
    "digits": Scenario("digits-32", "resnet20", 15, dict(THESIS_OPTIMIZER), {"channels": 1}),
    "keywords": Scenario("keywords-en", "resnet20", 15, dict(THESIS_OPTIMIZER)),
}
T_START_SEARCH = (3.17, 2.5, 2.0, 1.5, 1.0, 0.75, 0.5)


class LRTrace(Callback):
    """The rate each optimizer step used."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_batch_end(self, trainer, model, outputs, loss) -> None:  # noqa: ANN001
        self.lrs.append(float(trainer.optimizer.param_groups[0]["lr"]))


def _schedule(method: str, scenario: Scenario, lr: float) -> tuple[dict[str, Any], Any]:
    """Optimizer options and scheduler factory of one schedule."""
    if method == "actcool":
        wd = scenario.optimizer.get("weight_decay", 0.0)
        momentum = scenario.optimizer.get("momentum", 0.0) if THESIS else 0.0
        return {"name": "sgd", "lr": lr, "momentum": momentum, "weight_decay": wd}, None
    epochs = scenario.epochs
    opt = {**scenario.optimizer, "lr": lr}
    if method == "step":
        milestones = (epochs // 2, (3 * epochs) // 4)

        def step(o: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
            return build_scheduler(
                o, "multistep", epochs, steps_per_epoch, milestones=milestones, gamma=0.1
            )

        return opt, step

    def onecycle(o: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
        return build_scheduler(o, "onecycle", epochs, steps_per_epoch)

    return opt, onecycle


THESIS = False  # set by --protocol thesis
MAX_RISE: float | None = None  # set by --max-rise


def run(name: str, method: str, seed: int, lr: float, t_start: float = 3.17) -> dict[str, Any]:
    scenario = SCENARIOS[name]
    train = data.create(scenario.data, "train", **scenario.options)
    test = data.create(scenario.data, "test", **scenario.options)
    info = train.info
    torch.manual_seed(seed)
    net = models.create(
        scenario.model, in_channels=info.input_shape[0], num_classes=info.num_classes
    )
    opt_cfg, scheduler = _schedule(method, scenario, lr)
    trace = LRTrace()
    callbacks: list[Callback] = [trace]
    controller = None
    if method == "actcool":
        controller = ActCoolLR(t_start=t_start, max_rise=MAX_RISE)
        callbacks.insert(0, controller)
    opt_name = opt_cfg.pop("name")
    trainer = Trainer(
        net,
        train,
        val_data=test,
        batch_size=scenario.batch_size,
        optimizer=lambda p: build_optimizer(p, opt_name, **opt_cfg),
        scheduler=scheduler,
        callbacks=callbacks,
        progress=False,
        seed=seed,
    )
    started = time.perf_counter()
    error = None
    try:
        trainer.fit(scenario.epochs)
    except DivergenceError as exc:
        error = str(exc)
    hist = trainer.state.history
    tops = [r["val_top1"] for r in hist]
    row: dict[str, Any] = {
        "scenario": name,
        "method": method,
        "seed": seed,
        "lr": lr,
        "diverged": error,
        "epochs_done": len(hist),
        "val_top1": tops,
        "final_top1": tops[-1] if tops and error is None else None,
        "best_top1": max(tops) if tops else None,
        "peak_lr": max(trace.lrs) if trace.lrs else None,
        "lrs": trace.lrs,
        "wall_s": time.perf_counter() - started,
    }
    if controller is not None:
        row["refits"] = controller.refits
        row["t_start"] = t_start
    label = "diverged" if error else f"top-1 {row['final_top1']:.2f}"
    what = f"t_start {t_start:g}" if controller is not None else f"lr {lr:g}"
    print(f"{name} {method} seed {seed} {what}: {label}, {row['wall_s']:.0f} s", flush=True)
    return row


def _t_start_search(name: str, seeds: list[int], rows: list[dict[str, Any]]) -> tuple[float, list]:
    """Lower T_start until no seed's whole run diverges. A T_start is dropped at its first
    diverging seed; the runs of dropped values are kept as tuning rows, and the runs at
    the chosen value are the seeds' rows."""
    tried = []
    for t in T_START_SEARCH:
        runs = []
        for seed in seeds:
            row = run(name, "actcool", seed, SCENARIOS[name].optimizer["lr"], t_start=t)
            runs.append(row)
            tried.append(
                {
                    "t_start": t,
                    "seed": seed,
                    "diverged": row["diverged"],
                    "final_top1": row["final_top1"],
                }
            )
            if row["diverged"] is not None:
                break
        if all(r["diverged"] is None for r in runs) or t == T_START_SEARCH[-1]:
            rows.extend(runs)
            return t, tried
        for row in runs:
            row["tuning"] = True
        rows.extend(runs)
    raise AssertionError("unreachable: the search returns at its last value")


def _tuned_lr(name: str, method: str, seed: int, grid: list[float], rows: list[dict]) -> float:
    """The recipe's rate times the grid multiple with the best final top-1 on ``seed``."""
    base = SCENARIOS[name].optimizer["lr"]
    if method == "actcool":
        return base  # a starting value only: the controller sets every step's rate
    if len(grid) == 1:
        return base * grid[0]
    trials = [run(name, method, seed, base * m) for m in grid]
    for t in trials:
        t["tuning"] = True
    rows.extend(trials)
    best = max(trials, key=lambda r: -1.0 if r["final_top1"] is None else r["final_top1"])
    return float(best["lr"])


def _anytime(tops: list[float], share: float) -> float:
    return tops[max(0, round(share * len(tops)) - 1)]


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r["scenario"], r["method"]) for r in rows if not r.get("tuning")})
    for scenario, method in keys:
        runs = [
            r
            for r in rows
            if r["scenario"] == scenario and r["method"] == method and not r.get("tuning")
        ]
        finals = [r["final_top1"] for r in runs if r["final_top1"] is not None]
        done = [r for r in runs if r["final_top1"] is not None]
        out.append(
            {
                "scenario": scenario,
                "method": method,
                "lr": runs[0]["lr"],
                "t_start": runs[0].get("t_start"),
                "seeds": len(runs),
                "diverged": len(runs) - len(done),
                "final_mean": statistics.mean(finals) if finals else None,
                "final_std": statistics.stdev(finals) if len(finals) > 1 else 0.0,
                "best_mean": statistics.mean(r["best_top1"] for r in done) if done else None,
                "quarter_mean": statistics.mean(_anytime(r["val_top1"], 0.25) for r in done)
                if done
                else None,
                "half_mean": statistics.mean(_anytime(r["val_top1"], 0.5) for r in done)
                if done
                else None,
                "peak_lr": max(r["peak_lr"] for r in runs if r["peak_lr"] is not None),
                "wall_s": statistics.mean(r["wall_s"] for r in runs),
            }
        )
    return out


def _plot(rows: list[dict[str, Any]], names: list[str], extra: str = "") -> None:
    fig, axes = plt.subplots(2, len(names), figsize=(6.0 * len(names), 7.0), dpi=110)
    axes = axes.reshape(2, len(names))
    for col, name in enumerate(names):
        ax_lr, ax_acc = axes[0, col], axes[1, col]
        for method in ("step", "onecycle", "actcool"):
            runs = [
                r
                for r in rows
                if r["scenario"] == name and r["method"] == method and not r.get("tuning")
            ]
            if not runs:
                continue
            first = runs[0]
            steps = len(first["lrs"])
            xs = [i / max(steps, 1) * first["epochs_done"] for i in range(steps)]
            ax_lr.plot(xs, first["lrs"], label=method, lw=1.0)
            done = [r for r in runs if r["final_top1"] is not None]
            if done:
                epochs = len(done[0]["val_top1"])
                mean = [statistics.mean(r["val_top1"][e] for r in done) for e in range(epochs)]
                ax_acc.plot(range(1, epochs + 1), mean, marker=".", label=method)
        ax_lr.set_yscale("log")
        ax_lr.set_title(f"{name}: learning rate (seed {runs[0]['seed']})")
        ax_lr.set_xlabel("epoch")
        ax_acc.set_title(f"{name}: test top-1 (mean over seeds)")
        ax_acc.set_xlabel("epoch")
        for ax in (ax_lr, ax_acc):
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = ("-thesis" if THESIS else "") + ("" if len(names) == 2 else f"-{'-'.join(names)}")
    tag += extra
    fig.savefig(RESULTS / f"actcool_lr{tag}.png")
    plt.close(fig)


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="digits,keywords")
    parser.add_argument("--epochs-digits", type=int, default=None, help="default: 10 (15)")
    parser.add_argument("--epochs-keywords", type=int, default=None, help="default: 15 (15)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default="step,onecycle,actcool")
    parser.add_argument("--lr-grid", default="1", help="multiples of the recipe's rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--protocol", choices=["default", "thesis"], default="default")
    parser.add_argument("--t-start", type=float, default=None, help="skip the T_start search")
    parser.add_argument(
        "--max-rise", type=float, default=None, help="ActCoolLR: rate rise per measurement"
    )
    args = parser.parse_args()
    global THESIS, MAX_RISE
    MAX_RISE = args.max_rise
    if args.protocol == "thesis":
        THESIS = True
        SCENARIOS.update(THESIS_SCENARIOS)
    torch.set_num_threads(args.threads)
    SCENARIOS["digits"].epochs = args.epochs_digits or SCENARIOS["digits"].epochs
    SCENARIOS["keywords"].epochs = args.epochs_keywords or SCENARIOS["keywords"].epochs
    names = args.scenarios.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [float(m) for m in args.lr_grid.split(",")]
    methods = args.methods.split(",")
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    searches: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        for method in methods:
            if method == "actcool" and THESIS and args.t_start is None:
                t_start, searches[name] = _t_start_search(name, seeds, rows)
                print(f"{name}: T_start {t_start:g} after {searches[name]}", flush=True)
                continue
            lr = _tuned_lr(name, method, seeds[0], grid, rows)
            t_start = args.t_start or 3.17
            for seed in seeds:
                rows.append(run(name, method, seed, lr, t_start))
    summary = _summary(rows)
    for name in names:
        print_table(
            f"{name}: {SCENARIOS[name].epochs} epochs, {len(seeds)} seeds (top-1 %)",
            [
                "schedule",
                "LR",
                "final top-1",
                "± std",
                "best epoch",
                "at 1/4",
                "at 1/2",
                "diverged",
                "peak LR",
                "wall s",
            ],
            [
                [
                    s["method"],
                    f"T_start {s['t_start']:g}" if s["method"] == "actcool" else f"{s['lr']:g}",
                    _fmt(s["final_mean"]),
                    _fmt(s["final_std"]),
                    _fmt(s["best_mean"]),
                    _fmt(s["quarter_mean"]),
                    _fmt(s["half_mean"]),
                    f"{s['diverged']}/{s['seeds']}",
                    f"{s['peak_lr']:.3g}",
                    f"{s['wall_s']:.0f}",
                ]
                for s in summary
                if s["scenario"] == name
            ],
            width=140,
        )
    # runs with other epochs than the defaults keep their own files
    extra = "".join(f"-e{n}" for n in (args.epochs_digits, args.epochs_keywords) if n)
    extra += f"-rise{args.max_rise:g}" if args.max_rise else ""
    _plot(rows, names, extra)
    suffix = "" if args.scenarios == "digits,keywords" else "-" + args.scenarios.replace(",", "-")
    suffix += extra
    path = write_result(
        "actcool" + ("-thesis" if THESIS else "") + suffix,
        {
            "args": vars(args),
            "t_start_search": searches,
            "summary": summary,
            "runs": rows,
            "seconds": time.perf_counter() - started,
        },
    )
    print(f"results: {path}  plot in {RESULTS}")


if __name__ == "__main__":
    main()
