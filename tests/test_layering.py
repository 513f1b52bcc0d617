"""The layering in DESIGN.md holds, checked by import-linter; and the check can actually fail."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("primer", "services", "model", "operators", "recipe")
CONTRACTS = (
    "The core library imports no component",
    "Nothing imports the recipe",
    "The core is layered",
    "Services never import each other",
    "Services, model and operators are independent components",
)


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH first, so grimp analyses the tree under `root`, not the editable install.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300, check=False)


def copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dst / pkg, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")


def test_all_contracts_kept():
    proc = lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CONTRACTS:
        assert f"{name} KEPT" in proc.stdout, proc.stdout
    assert "0 broken" in proc.stdout


@pytest.mark.slow
def test_core_importing_a_component_breaks_the_contract(tmp_path):
    copy_tree(tmp_path)
    (tmp_path / "primer" / "_layering_probe.py").write_text("import services.curation\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "The core library imports no component BROKEN" in proc.stdout
    assert "primer._layering_probe -> services.curation" in proc.stdout


@pytest.mark.slow
def test_a_service_importing_another_breaks_independence(tmp_path):
    copy_tree(tmp_path)
    probe = tmp_path / "services" / "generation" / "_layering_probe.py"
    probe.write_text("from services.curation import *  # noqa\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Services never import each other BROKEN" in proc.stdout


def test_storage_importing_datasets_breaks_the_core_layers(tmp_path):
    copy_tree(tmp_path)
    (tmp_path / "primer" / "storage" / "_layering_probe.py").write_text(
        "import primer.datasets\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "The core is layered BROKEN" in proc.stdout
    assert "primer.storage._layering_probe -> primer.datasets" in proc.stdout


def test_a_component_importing_the_recipe_breaks_the_contract(tmp_path):
    copy_tree(tmp_path)
    (tmp_path / "model" / "_layering_probe.py").write_text("import recipe.report\n")
    proc = lint_imports(tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Nothing imports the recipe BROKEN" in proc.stdout
