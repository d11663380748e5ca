"""bench/serving.py end to end, with tiny settings: both servers measured, same top-k ids."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONCURRENCIES = ("1", "2")


@pytest.mark.slow
def test_serving_bench_measures_both_servers(model_repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    done = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "serving.py"),
            "--model-repo", str(model_repo),
            "--concurrency", ",".join(CONCURRENCIES),
            "--duration", "1", "--warmup", "0.3",
            "--candidates", "50", "--samples", "3", "--processes", "1",
            "--json", str(out),
        ],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    summary = result["summary"]
    assert set(summary) == {"recserve fp32", "baseline"}
    for label, points in summary.items():
        assert set(points) == set(CONCURRENCIES), label
        for point in points.values():
            assert point["throughput_rps"] > 0 and point["p99_ms"] > 0, label
            assert point["errors"] == 0, label
    # The baseline's intra-op setting was measured both ways before choosing.
    assert set(result["baseline_calibration"]) == {"1", "default"}
    check = result["topk_check"]["fp32"]
    assert check["samples"] == 3 and check["passed"], check
    # recserve's stage metrics were scraped for every point.
    stages = [s for p in summary["recserve fp32"].values() for s in p["stages_ms"]]
    assert stages and all(s["head"] > 0 and s["mean_batch_size"] >= 1 for s in stages)
    for header in ("baseline ans/s", "thr x", "p99 x", "same top-10 ids"):
        assert header in done.stdout
