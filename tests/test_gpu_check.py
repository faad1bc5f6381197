"""benchmarks/gpu_check.sh --dry-run: every step of the GPU check, on the CPU at small sizes, so that the
script keeps working between the sessions that have a GPU (about 40 s on 2 cores)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    summary = tmp_path / "summary.md"
    env = os.environ | {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", str(summary)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    text = summary.read_text()
    assert result.returncode == 0, text
    assert "dry run on the CPU: no GPU figures" in text and "exit 1" not in text
    for heading in ("## 1. ", "## 2. ", "## 3. ", "## 4. ", "## 5. ", "## 6. "):
        assert heading in text
    assert "ours/diffusers time" in text and "Protection: " in text and "3 passed" in text
    for dit in text.split("## 5. ")[1].split("## 6. "):  # CogVideoX's iteration, then Wan's: both modes
        assert "| memory | " in dit and "| default | " in dit
