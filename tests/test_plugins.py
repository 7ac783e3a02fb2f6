"""Registries are complete in any process: the first lookup loads what
:mod:`edgetrain.plugins` lists, whichever modules were imported before."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys

import edgetrain
from edgetrain.plugins import PLUGINS
from edgetrain.registry import Registry


def _all_registries() -> dict[str, tuple[str, str, Registry]]:
    """kind -> (defining module, attribute, registry), after importing every module."""
    found: dict[str, tuple[str, str, Registry]] = {}
    for info in pkgutil.walk_packages(edgetrain.__path__, "edgetrain."):
        if ".cli" in info.name or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, Registry) and value.kind not in found:
                owner = next(
                    m.__name__
                    for m in (sys.modules.get(n) for n in sorted(sys.modules))
                    if m is not None
                    and m.__name__.startswith("edgetrain")
                    and attr in vars(m)
                    and vars(m)[attr] is value
                    and not m.__name__.split(".")[-1].startswith("__init__")
                )
                found[value.kind] = (owner, attr, value)
    return found


REGISTRIES = _all_registries()


def test_every_registry_has_its_plugin_modules_listed() -> None:
    assert set(REGISTRIES) == set(PLUGINS)


_FRESH = """
import importlib, json, os, sys
import torch, pydantic, numpy  # the heavy imports once; edgetrain in each child only
for module, attr in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        registry = getattr(importlib.import_module(module), attr)
        os.write(write, json.dumps(registry.names()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        print(f.read())
    os.waitpid(pid, 0)
"""


def test_a_fresh_process_sees_every_entry_of_every_registry() -> None:
    """Each registry is looked up in a process that imported nothing else of edgetrain."""
    kinds = sorted(REGISTRIES)
    where = [[REGISTRIES[k][0], REGISTRIES[k][1]] for k in kinds]
    out = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps(where)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    seen = dict(zip(kinds, map(json.loads, out.stdout.strip().splitlines()), strict=True))
    for kind in kinds:
        assert seen[kind] == REGISTRIES[kind][2].names(), kind
        assert seen[kind], f"the {kind} registry is empty"


def test_a_recipe_naming_plugins_of_every_technique_loads_in_a_fresh_process() -> None:
    """The case that once needed ``import edgetrain.prune`` first."""
    code = """
from edgetrain.runs import load_config
config = load_config({
    "name": "x", "epochs": 1,
    "data": {"name": "digits-32"},
    "model": {"name": "vgg_small", "grow": [{"op": "widen", "layer": "conv1", "width": 64}]},
    "optimizer": {"name": "lars", "lr": 0.1},
    "lr_control": "actcool",
    "callbacks": [{"name": "prunetrain"}, {"name": "layer-schedule", "schedule": "4421"}],
})
print(config.lr_control.name, [c.name for c in config.callbacks])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["actcool", "['prunetrain',", "'layer-schedule']"]
