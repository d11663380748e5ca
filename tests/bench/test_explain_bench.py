"""bench/explain.py end to end with tiny settings: both timed, explanations add up."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_explain_bench_times_both_and_checks_the_sums(model_repo: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "explain.py"),
            "--model-repo", str(model_repo), "--candidates", "30", "-k", "5", "--repeats", "6",
        ],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ratio = re.search(r"explained / plain\s+([0-9.]+)x", done.stdout)
    worst = re.search(r"over the explained items: ([0-9.e+-]+)", done.stdout)
    assert ratio and worst, done.stdout
    assert float(ratio.group(1)) > 0  # printed (tests check no timing)
    assert float(worst.group(1)) < 1e-5


def test_explain_bench_says_what_to_do_without_a_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "explain.py"), "--model-repo", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "recserve train" in done.stderr
