"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``,
``plots/`` and ``report.html``. Reports are regenerated from this folder alone.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import yaml

from edgetrain._atomic import atomic_writer, writable_folder
from edgetrain.engine.jsonl import JsonLines
from edgetrain.errors import EdgetrainError

__all__ = ["RunDirectory", "RunLock", "atomic_write_text"]


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_writer(path, "w") as f:
        f.write(text)


class RunLock:
    """Held while a process writes a run directory: ``.<run name>.lock`` beside the folder
    (so replacing the folder keeps it) holding the writer's PID and host.

    A second writer is refused in one line naming the holder; the lock of a process that
    died (same host, PID gone) is stale and taken over.
    """

    def __init__(self, run: Path) -> None:
        self.run = run
        self.path = run.parent / f".{run.name}.lock"

    def holder(self) -> dict[str, Any] | None:
        """``{"pid", "host"}`` of a live holder, or None (no lock, or a stale one)."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent, or a half-written lock of a writer killed at once
        if host != socket.gethostname():
            return {"pid": pid, "host": host}  # cannot tell from here: taken as alive
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, another user's
        return {"pid": pid, "host": host}

    def __enter__(self) -> RunLock:
        writable_folder(self.path.parent, "run directory")
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if holder is not None:
                    raise EdgetrainError(
                        f"run directory '{self.run}' is being written by process "
                        f"{holder['pid']} on {holder['host']}; wait for it to end, or pass "
                        f"another --name (a lock of a process that is gone: delete {self.path})"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its writer is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(mine)
            return self
        raise EdgetrainError(f"could not lock run directory '{self.run}'; try again")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


class RunDirectory:
    """Paths and readers/writers of one run's folder.

    Example:
        >>> run = RunDirectory("runs/demo")           # doctest: +SKIP
        >>> run.append_metrics({"epoch": 1, "val_top1": 91.2})  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory('{self.path}')"

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    summary_path = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    report_path = property(lambda self: self.path / "report.html")

    def create(self) -> RunDirectory:
        """Make the folder with its ``checkpoints/`` and ``plots/`` subfolders."""
        writable_folder(self.checkpoints, "run directory")
        writable_folder(self.plots, "run directory")
        return self

    def exists(self) -> bool:
        return self.config_path.is_file()

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise EdgetrainError(
                f"'{self.path}' is not a run directory (no config.yaml); "
                "pass a folder written by 'edgetrain train'"
            )
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    @property
    def metrics(self) -> JsonLines:
        """``metrics.jsonl``: one record per epoch, flushed as written."""
        return JsonLines(self.metrics_path)

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line and flush it to disk immediately."""
        self.metrics.append(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        """All complete metric lines (a torn last line from a crash is ignored)."""
        return self.metrics.read()

    def write_summary(self, summary: dict[str, Any]) -> None:
        atomic_write_text(self.summary_path, json.dumps(summary, indent=2, default=float) + "\n")

    def remove_temporary_files(self) -> list[Path]:
        """Delete the temporary files of writes a killed writer left unfinished (an atomic
        write's ``.<name>.<random>.tmp``); call it holding the lock. Returns them."""
        stale = [
            p
            for folder in (self.path, self.checkpoints, self.plots)
            if folder.is_dir()
            for p in folder.glob(".*.tmp")
        ]
        for path in stale:
            path.unlink(missing_ok=True)
        return stale

    def lock(self) -> RunLock:
        """The lock a writer holds (``with run_dir.lock(): ...``)."""
        return RunLock(self.path)

    def read_summary(self) -> dict[str, Any]:
        """The summary; a run still marked running whose writer is gone (killed without a
        word) is marked interrupted here, in the file too."""
        if not self.summary_path.is_file():
            return {}
        summary = json.loads(self.summary_path.read_text(encoding="utf-8"))
        if summary.get("status") == "running" and self.lock().holder() is None:
            summary["status"] = "interrupted"
            self.write_summary(summary)
        return summary
