"""The layering contracts (import-linter, in pyproject.toml) hold, and they do catch violations."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
        "sys.exit(lint_imports_command())"]


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(LINT + ["--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold_on_the_package():
    res = _lint(ROOT, ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "4 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module, line, contract", [
    ("data/example.py", "import tunesmith.stages.run", "layers: the CLI over stages"),
    ("curate/text.py", "import tunesmith.cli", "layers: the CLI over stages"),
    ("curate/dedup.py", "import tunesmith.evaluate.harness", "data and curate never reach up"),
    ("data/chat.py", "import tunesmith.train.loop", "data and curate never reach up"),
    ("train/loop.py", "import tunesmith.testing.fault_pool", "the product never imports its test"),
    ("stages/data.py", "import tunesmith.stages.run", "stages: the chain on top"),
])
def test_contracts_fail_when_a_layer_points_up(tmp_path, module, line, contract):
    shutil.copytree(ROOT / "src" / "tunesmith", tmp_path / "tunesmith", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "tunesmith" / module
    target.write_text(target.read_text() + f"\n{line}  # injected by the test\n")
    res = _lint(tmp_path, tmp_path)
    assert res.returncode == 1, res.stdout[-3000:]
    broken = [ln for ln in res.stdout.splitlines() if ln.endswith("BROKEN")]
    assert any(ln.startswith(contract) for ln in broken), broken
