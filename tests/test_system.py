"""What sbattn asks of the machine: freed memory kept for the next training step (system.keep_freed_memory)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Page faults of a second 200 MB block, written through, after a first was freed: with glibc's defaults each large
# block is mapped afresh (about 51,000 faults of 4 KB pages); kept, the second reuses the first's pages.
FAULTS = """
import resource, sys
sys.path.insert(0, sys.argv[2])
import importlib.util
spec = importlib.util.spec_from_file_location("system", sys.argv[2] + "/sbattn/system.py")
system = importlib.util.module_from_spec(spec); spec.loader.exec_module(system)
if sys.argv[1] == "keep":
    assert system.keep_freed_memory()
block = b"\\x01" * (200 * 2**20); del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = b"\\x01" * (200 * 2**20); del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def second_block_faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode, str(ROOT)], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_training_process_reuses_the_memory_a_step_freed():
    assert second_block_faults("default") > 20_000  # the measurement can tell: glibc maps the block afresh
    assert second_block_faults("keep") < 2_000
