"""The :class:`Trainer`: a plain supervised training loop with callback hooks.

The loop knows nothing of any technique: freezing schedules, pruning, regularisers and
LR controllers reach it only through :class:`~edgetrain.engine.callback.Callback` hooks.
It evaluates every epoch, writes the run directory through its default callbacks
(metrics, checkpoints, progress) and resumes an interrupted run exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim import lr_scheduler
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from edgetrain.engine.callback import Callback
from edgetrain.engine.callbacks import Checkpointer, MetricsLogger, ProgressBar
from edgetrain.engine.checkpoint import FORMAT, load_checkpoint, load_model_weights
from edgetrain.engine.distributed import DistInfo, all_reduce_sum, init_distributed
from edgetrain.engine.evaluate import evaluate
from edgetrain.engine.optim import rebind_parameters, scheduler_interval
from edgetrain.engine.precision import Precision
from edgetrain.engine.rundir import RunDirectory
from edgetrain.engine.seeding import epoch_seed, seed_everything, set_deterministic
from edgetrain.engine.state import TrainState
from edgetrain.errors import CheckpointError, ConfigError, one_line

__all__ = ["Trainer", "select_device"]

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class _RunningTotals:
    """Sum of loss x batch size and of correct predictions over an epoch, kept on the
    device and read once at its end.

    Steps are buffered (the detached loss, outputs and targets) and reduced in chunks of
    up to ``CHUNK_STEPS`` steps or ``CHUNK_ELEMENTS`` output elements: a batch-1 step then
    costs a few list appends instead of six tiny tensor ops (about 17 us, ~1 % of a
    batch-1 step of a small CNN on a CPU), and the buffer stays small at any batch size.
    """

    CHUNK_STEPS = 64
    CHUNK_ELEMENTS = 1 << 16

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.seen = 0
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._outputs: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._elements = 0

    def add(self, loss: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        self.seen += n
        self._losses.append(loss.detach())
        self._sizes.append(n)
        self._outputs.append(outputs.detach())
        self._targets.append(targets)
        self._elements += outputs.numel()
        if len(self._losses) >= self.CHUNK_STEPS or self._elements >= self.CHUNK_ELEMENTS:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self._losses:
            return
        losses = torch.stack(self._losses).to(torch.float64)
        sizes = torch.tensor(self._sizes, dtype=torch.float64, device=losses.device)
        self.loss += losses.dot(sizes)
        predicted = torch.cat(self._outputs).argmax(1)
        self.correct += predicted.eq(torch.cat(self._targets)).sum()
        self._losses, self._sizes, self._outputs, self._targets = [], [], [], []
        self._elements = 0

    def totals(self) -> torch.Tensor:
        """``[loss sum, correct, samples]`` as one float64 tensor (for one all-reduce)."""
        self.flush()
        seen = torch.tensor(float(self.seen), dtype=torch.float64, device=self.loss.device)
        return torch.stack([self.loss, self.correct.double(), seen])


def _plain(value: Any) -> bool:
    """Plain data only (what ``torch.load(weights_only=True)`` reads back)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


def _recorded(model: nn.Module, data: Any) -> dict[str, Any] | None:
    """The architecture a model built by ``edgetrain.models.create`` records, with the
    input shape of the data (its ``info``, or its first sample)."""
    record = getattr(model, "edgetrain_architecture", None)
    if not isinstance(record, dict) or not _plain(record):
        return None  # options that are objects cannot go into a weights-only checkpoint
    arch = dict(record)
    info = getattr(getattr(data, "dataset", data), "info", None)
    if info is not None:
        arch.update(data=info.name, input_shape=list(info.input_shape))
    else:
        source = data.dataset if isinstance(data, DataLoader) else data
        if not hasattr(source, "__getitem__"):
            return arch  # an iterable data set: no first sample to read without consuming it
        sample = source[0]
        if isinstance(sample, tuple | list) and isinstance(sample[0], torch.Tensor):
            arch["input_shape"] = list(sample[0].shape)
    return arch


def select_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; other values must name a device
    this machine has.

    Raises:
        ConfigError: an unknown device, or one this machine lacks (naming those it has).
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"device '{device}' is not a device name ({one_line(exc)}); use auto, cpu or cuda"
        ) from None
    here = _devices()
    if chosen.type == "cuda" and (
        not torch.cuda.is_available()
        or (chosen.index is not None and chosen.index >= torch.cuda.device_count())
    ):
        raise ConfigError(f"device '{device}' is not on this machine; devices here: {here}")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device '{device}' is not on this machine; devices here: {here}")
    return chosen


def _devices() -> str:
    found = ["cpu"]
    found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    return ", ".join(found)


class Trainer:
    """Train a model on a data set with per-epoch evaluation.

    Args:
        model: the network.
        data: training data: a ``Dataset`` of ``(input, target)`` or a ready ``DataLoader``
            (a ``DataLoader`` is used as given: under torchrun, shard it yourself).
        val_data: evaluation data (``Dataset`` or ``DataLoader``), evaluated every epoch.
        optimizer: an optimizer over ``model``'s parameters, or a factory taking the
            parameters; default SGD with lr 0.01 and momentum 0.9.
        scheduler: an LR scheduler, or a factory taking the optimizer (and, if it has that
            parameter, ``steps_per_epoch``). One-cycle steps every batch, plateau on the
            validation loss, others every epoch.
        loss_fn: defaults to cross-entropy.
        batch_size: training batch size (1 is fine); ``eval_batch_size`` for evaluation.
        callbacks: technique callbacks, called in order before the default ones.
        run_dir: folder to write (metrics, checkpoints, summary); ``None`` writes nothing.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        seed: run seed; epoch ``e`` reseeds every generator from ``(seed, e)``.
        deterministic: ask torch for deterministic kernels.
        progress: show a rich progress bar.
        checkpoint_every: epochs between ``last.pt`` checkpoints.
        monitor: metric deciding the best epoch (``val_top1``, mode max).
        architecture: a plain-data description of the model stored in checkpoints
            (e.g. ``{"name": "vgg_small", "options": {...}}``) so runs reload alone;
            default: the model's ``edgetrain_architecture`` (models built by
            ``edgetrain.models.create`` carry it), with the data's input shape.

    Example:
        >>> from edgetrain import data, models
        >>> from edgetrain.engine import Trainer
        >>> net = models.create("vgg_small", in_channels=1)
        >>> trainer = Trainer(net, data.create("digits-32", "train"),
        ...                   val_data=data.create("digits-32", "test"), progress=False)
        >>> trainer.fit(1).epoch  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        model: nn.Module,
        data: Dataset | DataLoader,
        *,
        val_data: Dataset | DataLoader | None = None,
        optimizer: OptimizerLike | None = None,
        scheduler: Any = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        callbacks: Sequence[Callback] = (),
        run_dir: str | Path | RunDirectory | None = None,
        device: str | torch.device = "auto",
        seed: int = 0,
        deterministic: bool = False,
        progress: bool = True,
        checkpoint_every: int = 1,
        monitor: str = "val_top1",
        architecture: dict[str, Any] | None = None,
        precision: str = "32",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = select_device(device)
        self.dist: DistInfo = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.seed, self.deterministic = seed, deterministic
        if deterministic:
            set_deterministic(True)
        seed_everything(seed)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.architecture = architecture if architecture is not None else _recorded(model, data)
        self.precision = Precision(precision, self.device)
        self.state = TrainState()
        self._loader_generator = torch.Generator()
        self.train_loader = self._make_train_loader(data)
        self.val_loader = self._make_val_loader(val_data) if val_data is not None else None
        self.callbacks: list[Callback] = list(callbacks)
        for cb in self.callbacks:
            cb.configure_model(self, self.model)
        self.model.to(self.device)  # a callback may have added parameters
        self.optimizer = self._make_optimizer(optimizer)
        self.scheduler = self._make_scheduler(scheduler)
        self._forward_model = self._wrap(self.model)
        self.checkpoint_every, self.monitor = checkpoint_every, monitor
        if progress and self.is_main:
            self.callbacks.append(ProgressBar())
        self.run_dir: RunDirectory | None = None
        if run_dir is not None:
            self.attach_run_dir(run_dir)
        self._record: dict[str, Any] = {}

    # ----------------------------------------------------------------- set-up helpers
    @property
    def is_main(self) -> bool:
        """True on the process that writes files (rank 0, or the only process)."""
        return self.dist.is_main

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def _make_train_loader(self, data: Dataset | DataLoader) -> DataLoader:
        if isinstance(data, DataLoader):
            return data
        sampler: DistributedSampler | None = None
        if self.dist.enabled:
            sampler = DistributedSampler(
                data,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=self.seed,
            )
        return DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            generator=self._loader_generator if sampler is None else None,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
        )

    def _make_val_loader(self, data: Dataset | DataLoader) -> DataLoader:
        if isinstance(data, DataLoader):
            return data
        if self.dist.enabled:  # exact sharding without padding; counts are summed
            size = len(data)  # type: ignore[arg-type]  # map-style data sets are sized
            data = Subset(data, range(self.dist.rank, size, self.dist.world_size))
        return DataLoader(
            data, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.num_workers
        )

    def _make_optimizer(self, optimizer: OptimizerLike | None) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        groups = next(
            (g for g in (cb.param_groups(self, self.model) for cb in self.callbacks) if g),
            None,
        )
        params: Any = groups if groups is not None else self.model.parameters()
        if optimizer is None:
            return torch.optim.SGD(params, lr=0.01, momentum=0.9)
        return optimizer(params)

    def _make_scheduler(self, scheduler: Any) -> Any:
        """An LR scheduler, or the result of a factory ``f(optimizer)`` or
        ``f(optimizer, steps_per_epoch=...)`` (given this process's shard of the data)."""
        if scheduler is None or hasattr(scheduler, "step"):
            return scheduler
        if "steps_per_epoch" in inspect.signature(scheduler).parameters:
            return scheduler(self.optimizer, steps_per_epoch=self.steps_per_epoch)
        return scheduler(self.optimizer)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def attach_run_dir(self, run_dir: str | Path | RunDirectory) -> RunDirectory:
        """Write metrics, summary and checkpoints to ``run_dir`` (on rank 0 only)."""
        self.run_dir = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        if self.is_main:
            self.run_dir.create()
            # The checkpoint is written before the metrics line, so a logged epoch is
            # always one a resume can start after.
            writers: list[Callback] = [
                Checkpointer(self.run_dir, every=self.checkpoint_every, monitor=self.monitor),
                MetricsLogger(self.run_dir, monitor=self.monitor),
            ]
            # Writers run after the technique callbacks and before the progress bar.
            bars = [cb for cb in self.callbacks if isinstance(cb, ProgressBar)]
            others = [cb for cb in self.callbacks if not isinstance(cb, ProgressBar)]
            self.callbacks = [*others, *writers, *bars]
        return self.run_dir

    def replace_model(self, model: nn.Module) -> None:
        """Swap in a rebuilt model (pruned or grown), re-wrapping it for DDP if needed."""
        self.model = model.to(self.device)
        self._forward_model = self._wrap(self.model)

    def set_batch_size(self, batch_size: int) -> None:
        """Train with a new batch size from the next epoch on (adaptive batch size)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if batch_size == self.batch_size:
            return
        dataset = getattr(self.train_loader, "dataset", None)
        if dataset is None or self.train_loader.batch_size != self.batch_size:
            raise ConfigError(
                "the batch size of a DataLoader given to the Trainer cannot change; "
                "pass the Dataset instead"
            )
        self.batch_size = batch_size
        self.train_loader = self._make_train_loader(dataset)

    def log(self, **values: float) -> None:
        """Add values to the current epoch's metrics record (callbacks use this)."""
        self._record.update(values)

    # ------------------------------------------------------------------------ loop
    def fit(self, epochs: int) -> TrainState:
        """Train until ``epochs`` epochs have finished in total (counting resumed ones).

        Returns:
            The :class:`TrainState` with one metrics record per epoch.
        """
        self.state.max_epochs = epochs
        self.state.stop_requested = False
        run_dir = self.run_dir if self.is_main else None
        with run_dir.lock() if run_dir is not None else contextlib.nullcontext():
            if run_dir is not None:
                run_dir.remove_temporary_files()  # a killed writer's unfinished ones
                if not run_dir.exists():
                    run_dir.write_config(self.describe(epochs))
            self._call("on_fit_start")
            try:
                while self.state.epoch < epochs and not self.state.stop_requested:
                    self._run_epoch()
            except BaseException as error:
                for cb in self.callbacks:
                    cb.on_exception(self, self.model, error)
                raise
            self._call("on_fit_end")
        if self.dist.enabled:  # every rank returns after rank 0 wrote the summary
            torch.distributed.barrier()
        return self.state

    def _overriding(self, hook: str) -> list[Callback]:
        """The callbacks whose class overrides ``hook`` (the base hooks do nothing)."""
        base = getattr(Callback, hook)
        return [cb for cb in self.callbacks if getattr(type(cb), hook) is not base]

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self, self.model, *args)

    def _run_epoch(self) -> None:
        epoch = self.state.epoch
        seed = epoch_seed(self.seed, epoch)
        seed_everything(seed)
        self._loader_generator.manual_seed(seed)
        sampler = getattr(self.train_loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        self._record = {}
        self.model.train()
        self._call("on_epoch_start")
        started = time.perf_counter()
        step_scheduler = self.scheduler is not None and scheduler_interval(self.scheduler) == "step"
        # Only callbacks that override a hook are called for it: at batch 1 every
        # microsecond of the per-step path shows in the benchmark.
        batch_start, fwd, on_loss, after_bwd, before_step, batch_end = (
            self._overriding(h)
            for h in (
                "on_batch_start",
                "before_forward",
                "on_loss",
                "after_backward",
                "before_optimizer_step",
                "on_batch_end",
            )
        )
        model, fmodel = self.model, self._forward_model
        amp = self.precision if self.precision.enabled else None
        optimizer, device = self.optimizer, self.device
        running = _RunningTotals(device)
        lr_start = optimizer.param_groups[0]["lr"]
        for index, batch in enumerate(self.train_loader):
            for cb in batch_start:
                cb.on_batch_start(self, model, batch, index)
            inputs, targets = batch
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            for cb in fwd:
                cb.before_forward(self, model, inputs)
            if amp is None:
                outputs = fmodel(inputs)
                loss = self.loss_fn(outputs, targets)
            else:
                with amp.autocast():
                    outputs = fmodel(inputs)
                    loss = self.loss_fn(outputs, targets)
            for cb in on_loss:
                new_loss = cb.on_loss(self, model, loss)
                if new_loss is not None:
                    loss = new_loss
            optimizer.zero_grad(set_to_none=True)
            if amp is None:
                loss.backward()
            else:
                amp.backward(loss, optimizer)
            for cb in after_bwd:
                cb.after_backward(self, model)
            for cb in before_step:
                cb.before_optimizer_step(self, model, optimizer)
            if amp is None:
                optimizer.step()
            else:
                amp.step(optimizer)
            if step_scheduler:
                self.scheduler.step()
            self.state.global_step += 1
            running.add(loss, outputs, targets)
            for cb in batch_end:
                cb.on_batch_end(self, model, outputs, loss)
        totals = running.totals()
        all_reduce_sum(totals)
        loss_sum, correct, n = totals.tolist()
        train_seconds = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": self.state.global_step,
            "train_loss": loss_sum / max(n, 1.0),
            "train_top1": 100.0 * correct / max(n, 1.0),
            "lr": lr_start,
            "batch_size": self.batch_size,
            "epoch_time": train_seconds,
        }
        if self.val_loader is not None:
            metrics = evaluate(
                self.model,
                self.val_loader,
                self.loss_fn,
                device,
                reduce=all_reduce_sum if self.dist.enabled else None,
            )
            record.update({f"val_{k}": v for k, v in metrics.items()})
            self._call("on_validation_end", {f"val_{k}": v for k, v in metrics.items()})
        if self.scheduler is not None and not step_scheduler:
            if isinstance(self.scheduler, lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(record.get("val_loss", record["train_loss"]))
            else:
                self.scheduler.step()
        record.update(self._record)
        record["eval_time"] = time.perf_counter() - started - train_seconds
        self.state.epoch += 1
        self.state.history.append(record)
        self._record = record  # values logged at epoch end land in this epoch's record
        self._call("on_epoch_end")

    def describe(self, epochs: int) -> dict[str, Any]:
        """Plain-data description of this Trainer, the ``config.yaml`` of runs started from
        Python (runs started from a recipe write the recipe instead)."""
        opt = self.optimizer
        hyper = {k: v for k, v in opt.defaults.items() if isinstance(v, int | float | str | bool)}
        return {
            "written_by": "Trainer",  # not a recipe: reopening it needs its data named
            "name": self.run_dir.path.name if self.run_dir is not None else "run",
            "epochs": epochs,
            "seed": self.seed,
            "deterministic": self.deterministic,
            "device": str(self.device),
            "batch_size": self.batch_size,
            "precision": self.precision.precision,
            "model": self.architecture or {"class": type(self.model).__name__},
            "optimizer": {"class": type(opt).__name__, **hyper},
            "scheduler": None if self.scheduler is None else type(self.scheduler).__name__,
            "callbacks": [type(cb).__name__ for cb in self.callbacks],
        }

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything needed to resume: model, optimizer, scheduler, callbacks, progress."""
        return {
            "format": FORMAT,
            "architecture": self.architecture,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "callbacks": {cb.state_key: cb.state_dict() for cb in self.callbacks},
            "trainer": {**self.state.state_dict(), "seed": self.seed},
            "precision": self.precision.state_dict(),
        }

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a checkpoint written by this Trainer so that ``fit`` continues the run."""
        ckpt = load_checkpoint(path, map_location=self.device)
        old_names = {id(p): n for n, p in self.model.named_parameters()}
        self._call("on_load_checkpoint", ckpt)
        if {id(p) for p in self.model.parameters()} != set(old_names):
            # A technique reshaped the model to the checkpoint's (pruned since it started).
            self.architecture = {**(self.architecture or {}), **(ckpt.get("architecture") or {})}
            self.replace_model(self.model)
            rebind_parameters(self.optimizer, old_names, self.model)
        load_model_weights(self.model, ckpt["model"], str(path))
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler") is not None:
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(
                f"checkpoint '{path}' holds optimizer/scheduler state of another "
                f"configuration ({exc}); resume with the run's own config.yaml"
            ) from exc
        states = ckpt.get("callbacks", {})
        for cb in self.callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
        self.state.load_state_dict(ckpt["trainer"])
        self.precision.load_state_dict(ckpt.get("precision") or {})
