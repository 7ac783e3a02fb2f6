"""Scenario tables: the full layer-scheduling comparison of scenarios 1 and 2, with a verdict.

Scenario 1 (digits domain shift: vgg_small pretrained on digits-32, fine-tuned on the digits
rotated by 180 degrees and inverted) and scenario 2 (keyword transfer: kws_cnn pretrained
on keywords-en at 16 kHz, fine-tuned on keywords-de@8k), with their shipped recipes. Each
pretraining runs once at its recipe's epochs; then `edgetrain.finetune.compare_schedules`
(what `edgetrain finetune compare` runs) trains conventional fine-tuning of the schedules'
rows, the same with one more layer frozen, and every schedule in every mode (bpls, pllr,
upscaled, rdo), each case with its own learning-rate grid (`edgetrain.finetune.lr_grid`:
factor 1.4 from --lr-span (default 2) times the recipe's LR down to the recipe's LR, then
1.2 and 1.1 around the best; the grid goes up from the recipe's rate because short
fine-tuning and skipped updates tend to want higher rates, and the verdict warns when a
case's best LR sits on the grid's edge; --lr-span 1 runs one trial per case). Fine-tuning
is short (--epochs, default 4) so that both scenarios (48 cases, 5-7 trials each; a
4-epoch trial takes about 2.5 s on digits and 5 s on keywords) finish in about 20 minutes
on two otherwise idle CPU cores, several times longer on a loaded machine; the table, the
JSON and the verdict state the epochs.

The verdict is computed from the table: does any bpls schedule reach the conventional
run's best top-1 with fewer operations per step (and how many % fewer), and what peak
memory the `_m` schedules save at what accuracy loss, next to the published figures.
Finished trials are reused (runs under --out, one folder per epoch count and overrides).

With --protocol thesis the scenarios use the BPLS thesis' protocol (the ``*-thesis``
recipes: plain SGD, batch 1, the LR halved when the test loss stops improving, keyword
data at the thesis' sizes, the recipes' epochs); --seeds N runs every LR point N times
(mean ± sd, a paired t-test against conventional fine-tuning), and every row reports
whether, after how many epochs and with how many total training operations it reached
conventional fine-tuning's best top-1: the thesis' headline measure, which the verdict
uses. --adaptive ops=F / mem=F adds adaptive-schedule rows (``edgetrain.finetune.
AdaptiveSchedule``) to the same table.

Usage: python benchmarks/scenario_tables.py [--scenario 1|2|all] [--epochs 4]
       [--out runs/scenario-tables] [--schedules 4442,4432,4422,4422_m,4421,4211_m]
       [--protocol thesis] [--seeds 3] [--adaptive ops=0.7] [--lr-span 1]
Published: 51.34 % fewer operations to reach conventional training's best accuracy; up
to 49.6 % lower peak memory at a 1.9-point accuracy loss.
"""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import print_table, write_result
from rich.console import Console

from edgetrain import data as data_sets
from edgetrain.engine import RunDirectory
from edgetrain.finetune.adaptive import parse_adaptive
from edgetrain.recipes import RECIPES
from edgetrain.runs import RunConfig, compare_schedules, load_config, scenario_cases, start_run
from edgetrain.runs.compare import scenario_table, target_table

SCHEDULES = "4442,4432,4422,4422_m,4421,4211_m"
MODES = "bpls,pllr,upscaled,rdo"
PUBLISHED_OPS_SAVING = 51.34  # % fewer total operations to reach conventional's best
PUBLISHED_MEMORY_SAVING = 49.6  # % lower peak memory ...
PUBLISHED_MEMORY_LOSS = 1.9  # ... at this many accuracy points lost


@dataclass(frozen=True)
class Scenario:
    title: str
    pretrain: str
    finetune: str


SCENARIOS = {
    "1": Scenario("digits domain shift (vgg_small)", "digits-pretrain", "digits-finetune"),
    "2": Scenario("keywords en -> de@8k (kws_cnn)", "keywords-pretrain", "keywords-finetune"),
}
# The BPLS thesis' protocol: plain SGD, batch 1, LR halved on a plateau, its data sizes.
THESIS_SCENARIOS = {
    "1": Scenario(
        "digits domain shift (vgg_small), thesis protocol",
        "digits-pretrain",
        "digits-finetune-thesis",
    ),
    "2": Scenario(
        "keywords en -> de@8k (kws_cnn), thesis protocol",
        "keywords-pretrain-thesis",
        "keywords-finetune-thesis",
    ),
}


def pretrain(recipe: str, root: Path, epochs: int | None, progress: bool) -> Path:
    """The pretrained run of ``recipe`` under ``root`` (trained unless already complete)."""
    config = load_config(RECIPES.path(recipe), epochs=epochs)
    folder = RunDirectory(root / config.name)
    summary = folder.read_summary()
    if summary.get("status") != "completed" or summary.get("epochs_finished") != config.epochs:
        start_run(config, root, overwrite=True, progress=progress)
    return folder.path


def runs_folder(out: Path, epochs: int, overrides: list[str]) -> Path:
    """One folder per setting, so trials of another epoch count are never reused."""
    if not overrides:
        return out / f"finetune-e{epochs}"
    digest = hashlib.sha1("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    return out / f"finetune-e{epochs}-{digest}"


def grid_rates(runs: Path, name: str, schedule: str) -> list[float]:
    """The learning rates the grid tried for one case (from its trial folders,
    ``<name>-<schedule>-lr<rate>``)."""
    prefix = f"{name}-{schedule}-lr"
    rates = {  # seed runs end in -s<k>
        float(p.name[len(prefix) :].split("-s")[0]) for p in runs.glob(f"{prefix}*") if p.is_dir()
    }
    return sorted(rates)


def on_edge(best: float, tried: list[float]) -> bool:
    """Whether the best rate is the highest or lowest of several tried."""
    return len(tried) > 1 and best in (min(tried), max(tried))


class Heartbeat:
    """Print how many grid trials of a scenario (``<name>-*`` in ``folder``, reused ones
    included) have finished, once a minute, while it runs."""

    def __init__(self, folder: Path, name: str, label: str, every: float = 60.0) -> None:
        self.folder, self.name, self.label, self.every = folder, name, label, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._started = time.perf_counter()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            done = sum(
                1
                for p in self.folder.glob(f"{self.name}-*/summary.json")
                if RunDirectory(p.parent).read_summary().get("status") in ("completed", "stopped")
            )
            minutes = (time.perf_counter() - self._started) / 60
            print(f"  ... {self.label}: {done} trial runs finished, {minutes:.1f} min", flush=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def verdict(rows: list[dict[str, Any]], point: float) -> dict[str, Any]:
    """What the table says about the published claims (rows as ``ScenarioRow.to_dict``;
    the first is conventional fine-tuning). ``point``: accuracy points of one test sample."""
    conv = rows[0]
    target = conv["best_accuracy"]
    bpls = [r for r in rows if r["mode"] == "bpls"]
    reached = [r for r in bpls if r["best_accuracy"] >= target and r["relative_ops"] < 1.0]
    best = max(reached, key=lambda r: (1 - r["relative_ops"], r["best_accuracy"]), default=None)
    closest = max(bpls, key=lambda r: (r["best_accuracy"], -r["relative_ops"]), default=None)

    def brief(r: dict[str, Any] | None) -> dict[str, Any] | None:
        if r is None:
            return None
        return {
            "schedule": r["schedule"],
            "best_accuracy": r["best_accuracy"],
            "accuracy_change": r["best_accuracy"] - target,
            "ops_saving_percent": 100 * (1 - r["relative_ops"]),
        }

    memory = [
        {
            "schedule": r["schedule"],
            "peak_memory_saving_percent": 100 * (1 - r["relative_peak_memory"]),
            "peak_memory_reuse_saving_percent": 100
            * (1 - r["peak_memory_reuse_bytes"] / conv["peak_memory_reuse_bytes"]),
            "accuracy_loss": target - r["best_accuracy"],
            "ops_saving_percent": 100 * (1 - r["relative_ops"]),
        }
        for r in bpls
        if r["schedule"].endswith("_m")
    ]
    frozen = next((r for r in rows[1:] if r["mode"] == "conventional"), None)
    to_target = [
        {
            "schedule": r["schedule"],
            "mode": r["mode"],
            "reached": r["reached"],
            "seeds": r["seeds"],
            "epochs_to_target": r["epochs_to_target"],
            "ops_to_target_saving_percent": None
            if r["relative_ops_to_target"] is None
            else 100 * (1 - r["relative_ops_to_target"]),
            "ops_per_step_saving_percent": 100 * (1 - r["relative_ops"]),
            "best_accuracy": r["best_accuracy"],
            "accuracy_std": r["accuracy_std"],
            "p_value": r["p_value"],
        }
        for r in rows[1:]
    ]
    every_seed = [  # schedules that reach it in every seed, with fewer total operations
        t
        for t in to_target
        if t["mode"] != "conventional"
        and t["reached"] == t["seeds"]
        and t["ops_to_target_saving_percent"] is not None
        and t["ops_to_target_saving_percent"] > 0
    ]
    return {
        "conventional": conv["schedule"],
        "conventional_accuracy": target,
        "one_more_frozen": brief(frozen),
        "one_test_sample_points": point,
        "bpls_reaches_conventional": bool(reached),
        "best_saving_at_conventional_accuracy": brief(best),
        "closest_bpls": brief(closest),
        "memory_optimised": memory,
        "ops_to_target": to_target,
        "best_ops_to_target": max(
            every_seed, key=lambda t: t["ops_to_target_saving_percent"], default=None
        ),
    }


def verdict_lines(v: dict[str, Any]) -> list[str]:
    """The verdict in words, next to the published figures."""
    target = v["conventional_accuracy"]
    lines = [
        f"  conventional ({v['conventional']}, every row every step): best top-1 {target:.2f} % "
        f"(one test sample = {v['one_test_sample_points']:.2f} points)"
    ]
    frozen = v["one_more_frozen"]
    if frozen is not None:
        lines.append(
            f"  one more layer frozen ({frozen['schedule']}): {frozen['best_accuracy']:.2f} % "
            f"({frozen['accuracy_change']:+.2f} points) at {frozen['ops_saving_percent']:.1f} % "
            "fewer ops/step"
        )
    best_target = v.get("best_ops_to_target")
    if best_target is not None:
        lines.append(
            f"  operations to reach it (as the thesis states its saving): YES - "
            f"{best_target['schedule']} ({best_target['mode']}) reaches it in every seed with "
            f"{best_target['ops_to_target_saving_percent']:.1f} % fewer total training "
            f"operations (published: {PUBLISHED_OPS_SAVING:g} % fewer)"
        )
    elif v.get("ops_to_target"):
        lines.append(
            "  operations to reach it (as the thesis states its saving): NO - no schedule "
            "reaches it in every seed with fewer total training operations (published: "
            f"{PUBLISHED_OPS_SAVING:g} % fewer)"
        )
    for t in v.get("ops_to_target", []):
        saving = t["ops_to_target_saving_percent"]
        p = "" if t["p_value"] is None else f", paired p = {t['p_value']:.3f}"
        lines.append(
            f"    {t['schedule']} ({t['mode']}): reached in {t['reached']}/{t['seeds']} seeds"
            + (
                ""
                if saving is None
                else f", {abs(saving):.1f} % {'fewer' if saving >= 0 else 'more'} ops to it"
            )
            + f"; {t['ops_per_step_saving_percent']:.1f} % fewer ops/step; top-1 "
            f"{t['best_accuracy']:.2f} ± {t['accuracy_std']:.2f} %{p}"
        )
    best, closest = v["best_saving_at_conventional_accuracy"], v["closest_bpls"]
    if best is not None:
        lines.append(
            f"  operations per step: YES - bpls {best['schedule']} reaches it "
            f"({best['best_accuracy']:.2f} %, {best['accuracy_change']:+.2f} points) with "
            f"{best['ops_saving_percent']:.1f} % fewer ops/step"
        )
    elif closest is not None:
        lines.append(
            f"  operations per step: NO - no bpls schedule reaches {target:.2f} %; the closest, "
            f"{closest['schedule']}, has {closest['best_accuracy']:.2f} % "
            f"({closest['accuracy_change']:+.2f} points) at {closest['ops_saving_percent']:.1f} "
            "% fewer ops/step"
        )
    else:
        lines.append("  operations: no bpls schedule in this comparison")
    for m in v["memory_optimised"]:
        lines.append(
            f"  memory: {m['schedule']} peak memory {m['peak_memory_saving_percent']:.1f} % lower "
            f"(with buffer reuse {m['peak_memory_reuse_saving_percent']:.1f} %), accuracy "
            f"{-m['accuracy_loss']:+.2f} points vs conventional, "
            f"{m['ops_saving_percent']:.1f} % fewer ops/step"
        )
    if v["memory_optimised"]:
        top = max(v["memory_optimised"], key=lambda m: m["peak_memory_saving_percent"])
        lines.append(
            f"  memory: largest saving here {top['peak_memory_saving_percent']:.1f} % at "
            f"{-top['accuracy_loss']:+.2f} points vs conventional (published: up to "
            f"{PUBLISHED_MEMORY_SAVING:g} % at {-PUBLISHED_MEMORY_LOSS:+g} points)"
        )
    else:
        lines.append("  memory: no _m bpls schedule in this comparison")
    return lines


def epochs_text(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def run_scenario(key: str, args: argparse.Namespace) -> dict[str, Any]:
    scenario = (THESIS_SCENARIOS if args.protocol == "thesis" else SCENARIOS)[key]
    started = time.perf_counter()
    pre = pretrain(scenario.pretrain, args.out / "pretrain", args.pretrain_epochs, args.progress)
    config: RunConfig = load_config(
        RECIPES.path(scenario.finetune),
        list(args.set),
        epochs=args.epochs,
        **{"model.init_from": str(pre)},
    )
    epochs = config.epochs  # --epochs, or the recipe's
    lower = float(config.to_dict()["optimizer"]["lr"])
    upper = lower * args.lr_span
    schedules = [s for s in args.schedules.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    cases = scenario_cases(schedules, modes)
    runs = runs_folder(args.out, epochs, list(args.set))
    print(
        f"scenario {key}: {scenario.title}: {len(cases)} cases x LR grid "
        f"{upper:.4g}..{lower:.4g}, {epochs_text(epochs)} per trial, runs in {runs}",
        flush=True,
    )
    with Heartbeat(runs, config.name, f"scenario {key}"):
        rows = compare_schedules(
            config,
            schedules,
            upper,
            lower,
            modes=modes,
            tolerance=args.tolerance,
            runs_root=runs,
            progress=args.progress,
            seeds=args.seeds,
            adaptive=[parse_adaptive(a) for a in args.adaptive],
        )
    records = [r.to_dict() for r in rows]
    info = data_sets.describe(config.data.name, **config.data.options)
    point = 100.0 / info.split_sizes["test"]
    seconds = time.perf_counter() - started
    header, cells = scenario_table(rows, targets=False)
    print_table(
        f"scenario {key}: {scenario.title}, fine-tuning {epochs_text(epochs)} per trial, "
        f"LR grid per case, {args.seeds} seed(s) per LR ({seconds / 60:.1f} min)",
        header,
        cells,
        width=max(Console().width, 150),  # all columns readable when piped to a file
    )
    header, cells = target_table(rows)
    print_table(f"scenario {key}: reaching conventional fine-tuning's best top-1", header, cells)
    result = verdict(records, point)
    result["best_lr_on_grid_edge"] = [
        r["schedule"]
        for r in records
        if on_edge(r["best_lr"], grid_rates(runs, config.name, r["schedule"]))
    ]
    print(f"verdict, scenario {key} ({epochs_text(epochs)} of fine-tuning per trial):")
    print("\n".join(verdict_lines(result)), flush=True)
    if result["best_lr_on_grid_edge"]:
        print(
            f"  caution: the best LR is on the grid's edge for "
            f"{len(result['best_lr_on_grid_edge'])} of {len(records)} cases "
            f"({', '.join(result['best_lr_on_grid_edge'])}); a wider --lr-span may change them"
        )
    return {
        "title": scenario.title,
        "protocol": args.protocol,
        "seeds": args.seeds,
        "pretrain_recipe": scenario.pretrain,
        "finetune_recipe": scenario.finetune,
        "overrides": list(args.set),
        "epochs": epochs,
        "lr_upper": upper,
        "lr_lower": lower,
        "tolerance": args.tolerance,
        "classes": info.num_classes,
        "test_samples": info.split_sizes["test"],
        "seconds": seconds,
        "rows": records,
        "verdict": result,
    }


def print_verdicts(path: Path) -> None:
    """The verdict lines of a results file, recomputed (``--verdict-of FILE``)."""
    import json

    for key, scenario in json.loads(path.read_text())["scenarios"].items():
        print(f"verdict, scenario {key} ({epochs_text(scenario['epochs'])} per trial):")
        print("\n".join(verdict_lines(verdict(scenario["rows"], 100 / scenario["test_samples"]))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", choices=["1", "2", "all"], default="all")
    parser.add_argument(
        "--protocol",
        choices=["default", "thesis"],
        default="default",
        help="thesis: the *-thesis recipes (plain SGD, batch 1, plateau x0.5, thesis data sizes)",
    )
    parser.add_argument("--seeds", type=int, default=1, help="runs per LR point (seeds)")
    parser.add_argument(
        "--adaptive",
        action="append",
        default=[],
        help="an adaptive schedule row: ops=F and/or mem=F (repeatable)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="fine-tuning epochs per trial (default 4; the recipe's with --protocol thesis)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/scenario-tables"))
    parser.add_argument("--schedules", default=SCHEDULES, help="comma-separated, same rows")
    parser.add_argument("--modes", default=MODES, help="modes derived per schedule")
    parser.add_argument(
        "--lr-span", type=float, default=2.0, help="LR grid: from span x the recipe LR down to it"
    )
    parser.add_argument("--tolerance", type=float, default=1.0, help="LR range tolerance")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument(
        "--set", action="append", default=[], help="fine-tune recipe override key=value"
    )
    parser.add_argument("--progress", action="store_true", help="show each run's progress bars")
    parser.add_argument(
        "--verdict-of", type=Path, default=None, help="print the verdict of a results file"
    )
    args = parser.parse_args()
    if args.verdict_of is not None:
        print_verdicts(args.verdict_of)
        return
    if args.epochs is None and args.protocol == "default":
        args.epochs = 4
    if (args.epochs is not None and args.epochs < 1) or args.lr_span < 1 or args.seeds < 1:
        parser.error("--epochs, --seeds and --lr-span must be >= 1")
    keys = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    started = time.perf_counter()
    results = {key: run_scenario(key, args) for key in keys}
    total = time.perf_counter() - started
    name = "scenario_tables" + ("-thesis" if args.protocol == "thesis" else "")
    path = write_result(
        name if args.scenario == "all" else f"{name}-{args.scenario}",
        {
            "protocol": args.protocol,
            "seeds": args.seeds,
            "adaptive": args.adaptive,
            "schedules": args.schedules.split(","),
            "modes": args.modes.split(","),
            "lr_span": args.lr_span,
            "seconds": total,
            "published": {
                "ops_saving_percent": PUBLISHED_OPS_SAVING,
                "peak_memory_saving_percent": PUBLISHED_MEMORY_SAVING,
                "accuracy_loss_at_memory_saving": PUBLISHED_MEMORY_LOSS,
            },
            "scenarios": results,
        },
    )
    print(f"total {total / 60:.1f} min; wrote {path}")


if __name__ == "__main__":
    main()
