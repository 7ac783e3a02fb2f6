"""Model specs: zoo names, ``file.py:callable`` and ``module:callable``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from torch import nn

from edgetrain.errors import ConfigError, EdgetrainError
from edgetrain.models import create, resolve_model

NETS = """
from torch import nn

def mlp(in_features=4, num_classes=3, hidden=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))

def not_a_model():
    return 42

def broken():
    raise RuntimeError("out of coffee")

WIDTH = 3
"""


@pytest.fixture
def nets(tmp_path: Path) -> Path:
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def test_a_zoo_name_is_a_spec_of_its_own() -> None:
    spec = resolve_model("vgg_small")
    assert (spec.kind, spec.text, spec.path, spec.sha256) == ("zoo", "vgg_small", None, None)
    assert isinstance(create("vgg_small", device="meta"), nn.Module)


def test_a_file_spec_resolves_to_its_absolute_path_and_hash(
    nets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(nets.parent)
    spec = resolve_model("./nets.py:mlp")
    assert spec.kind == "file" and spec.text == f"{nets}:mlp" and spec.path == nets
    assert spec.sha256 is not None and len(spec.sha256) == 64
    model = create("./nets.py:mlp", hidden=5, device="meta")
    assert model[1].out_features == 5 and model[1].weight.is_meta


def test_a_module_spec_is_imported_from_the_current_folder(
    nets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(nets.parent)
    monkeypatch.delitem(sys.modules, "nets", raising=False)
    spec = resolve_model("nets:mlp")
    assert spec.kind == "module" and spec.text == "nets:mlp"
    assert str(nets.parent) not in sys.path  # the folder is not left on the path
    assert isinstance(spec.build(num_classes=2), nn.Sequential)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("nope", "unknown model 'nope'; choose one of:"),
        ("missing.py:mlp", "file '"),
        ("{nets}:mpl", "has no 'mpl'; callables there: broken, mlp, not_a_model"),
        ("{nets}:WIDTH", "'WIDTH' in '"),
        ("{nets}:1x", "must look like path/to/file.py:callable"),
        ("no_such_module_xyz:fn", "module 'no_such_module_xyz' not found"),
    ],
)
def test_bad_specs_are_one_line(nets: Path, spec: str, needle: str) -> None:
    with pytest.raises(EdgetrainError) as info:
        resolve_model(spec.format(nets=nets))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("fn", "options", "needle"),
    [
        ("mlp", {"depth": 2}, "has no option 'depth'; valid options: in_features, num_classes"),
        ("not_a_model", {}, "returned a int, not a torch.nn.Module"),
        ("broken", {}, "failed to build: RuntimeError: out of coffee"),
    ],
)
def test_building_checks_options_and_the_result(
    nets: Path, fn: str, options: dict, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        create(f"{nets}:{fn}", **options)


def test_a_file_that_fails_to_import_says_why(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import no_such_package_xyz\n")
    with pytest.raises(ConfigError, match="importing '.*bad.py' failed: .*no_such_package_xyz"):
        resolve_model(f"{bad}:fn")


def test_a_changed_file_is_reloaded_and_warned_about(nets: Path) -> None:
    first = resolve_model(f"{nets}:mlp")
    nets.write_text(NETS.replace("hidden=8", "hidden=6"))
    second = resolve_model(f"{nets}:mlp")
    assert second.sha256 != first.sha256
    assert second.build()[1].out_features == 6  # the file as it is now
    with pytest.warns(UserWarning, match=r"model file '.*nets.py' changed since the run was made"):
        second.warn_if_changed(first.sha256)
