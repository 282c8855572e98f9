"""The public names a user or a file outside the library relies on: the `glp` face, the imports printed in exported
model cards, every `glp` subcommand, and every `python -m` entry point that dvc.yaml, the Makefile or the code
itself launches. A restructure may move code freely, but each of these must keep working as written."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_glp_face_names_the_prior_and_its_uses():
    import glp

    for name in ("load_prior", "Prior", "sample", "project_on_manifold", "sdedit", "diffusion_score"):
        assert callable(getattr(glp, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        glp.nope  # noqa: B018


def test_the_imports_a_model_card_prints_work():
    from glp.flow import project_on_manifold, sample
    from glp.prior import Prior, load_prior, save_prior

    assert all(callable(f) for f in (project_on_manifold, sample, load_prior, save_prior))
    assert isinstance(Prior, type)
    import glp

    assert glp.load_prior is load_prior and glp.Prior is Prior and glp.sample is sample


def _subcommands() -> list[str]:
    import argparse

    from glp.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


def test_every_glp_subcommand_is_still_there():
    assert set(_subcommands()) >= {"summary", "steer", "seeds", "export", "score"}


@pytest.mark.parametrize("name", _subcommands())
def test_every_glp_subcommand_answers_help(name):
    from glp.cli import main

    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0


def _entry_points() -> list[str]:
    """Every `python -m X` (and torchrun's `-m X`) named in dvc.yaml, the Makefile and the library's launchers."""
    found: set[str] = set()
    for path in [ROOT / "dvc.yaml", ROOT / "Makefile", *sorted((ROOT / "src").rglob("*.py")),
                 *sorted((ROOT / "glp_dagster").rglob("*.py"))]:
        found |= set(re.findall(r"-m\s+(glp(?:_dagster)?(?:\.\w+)*)\b", path.read_text()))
    found.discard("glp_dagster.definitions")  # a code location (dagster -m), tested by the definitions tests
    return sorted(found)


def test_the_entry_points_are_found():
    eps = _entry_points()
    assert {"glp.cli", "glp_dagster.pipes_train"} <= set(eps)
    assert any("corpus" in e for e in eps) and any("probe_tasks" in e for e in eps), eps


@pytest.mark.parametrize("module", _entry_points())
def test_every_python_m_entry_point_is_a_runnable_module(module):
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"python -m {module}: no such module"
    src = Path(spec.origin).read_text()
    assert '__name__ == "__main__"' in src or spec.origin.endswith("__main__.py"), f"{module} has no __main__ block"


@pytest.mark.parametrize("module", [m for m in ("glp.cli",)])
def test_python_m_glp_cli_runs(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
