"""The package type-checks: `mypy -p sbattn` with pyproject.toml's settings, as a test of the suite, so that it
runs on one worker while the others test (a step of its own before pytest, it left one core idle). In a process of
its own: mypy's command ends without freeing its trees, which in this process would cost as long as the check."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_type_checks(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path), "-p", "sbattn"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("Success: no issues found in ")
