"""bench/grpc_ceiling.py and bench/head_batching.py end to end with tiny settings: every
row measured and printed (tests check no timing)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_bench(name: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / name), *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_grpc_ceiling_measures_both_servers(tmp_path: Path) -> None:
    out = run_bench(
        "grpc_ceiling.py", "--duration", "0.5", "--rounds", "1", "--candidates", "20",
        "--concurrency", "4", "--processes", "1", "--json", str(tmp_path / "ceiling.json"),
    )  # fmt: skip
    rows = re.findall(r"^\| (sync|aio) \| 1 \| (\d+) \|.*\| (\d+) \|", out, re.MULTILINE)
    assert [server for server, _, _ in rows] == ["sync", "aio"], out
    assert all(int(answers) > 0 and errors == "0" for _, answers, errors in rows), out
    assert re.search(r"aio / sync throughput: [0-9.]+x", out), out
    assert (tmp_path / "ceiling.json").is_file()


@pytest.mark.slow
def test_head_batching_measures_every_cap(model_repo: Path) -> None:
    out = run_bench(
        "head_batching.py", "--model-repo", str(model_repo), "--candidates", "30",
        "--batch-sizes", "1,3", "--max-rows", "16,64", "--rounds", "1", "--calls", "1",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if re.match(r"^\| 30 \| [13] \|", line)]
    assert len(rows) == 2, out
    assert all(len(re.findall(r"[0-9.]+x", row)) == 2 for row in rows), out


def test_head_batching_says_what_to_do_without_a_model(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "head_batching.py"), "--model-repo", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "scripts/start.sh" in done.stderr


@pytest.mark.slow
def test_sequence_models_measures_both_models(tmp_path: Path) -> None:
    import torch

    from recserve.training import topn
    from recserve.training.data import make_synthetic_movielens

    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=30, n_items=25, n_interactions=400, seed=3)
    small = dict(epochs=1, embedding_dim=8, hidden_size=8, max_length=10, num_threads=1)
    topn.train_sequence(data, topn.SequenceConfig(**small)).export(tmp_path, "gru4rec", "s")
    topn.train_sequence(data, topn.SASRecConfig(**small)).export(tmp_path, "sasrec", "s")
    out = run_bench(
        "sequence_models.py", "--model-repo", str(tmp_path), "--concurrency", "1,2",
        "--duration", "0.5", "--rounds", "1",
    )  # fmt: skip
    rows = re.findall(
        r"^\| (gru4rec|sasrec) \| ([12]) \| 1 \| (\d+) \|.*\| (\d+) \|$", out, re.MULTILINE
    )
    assert sorted((m, c) for m, c, _, _ in rows) == [
        ("gru4rec", "1"), ("gru4rec", "2"), ("sasrec", "1"), ("sasrec", "2")
    ], out  # fmt: skip
    assert all(int(answers) > 0 and errors == "0" for _, _, answers, errors in rows), out
    assert len(re.findall(r"sasrec / gru4rec: p50 [0-9.]+x", out)) == 2, out


def test_sequence_models_says_what_to_train(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sequence_models.py"), "--model-repo", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 2 and "recserve train --model" in done.stderr


@pytest.mark.slow
def test_packaged_ranker_bench_checks_identity_then_measures_both(model_repo: Path) -> None:
    """The bench packages the trained ranker from its own artifact: the tables and the
    answers must come out identical before anything is timed."""
    out = run_bench(
        "packaged_ranker.py", "--model-repo", str(model_repo), "--candidates", "40",
        "--concurrency", "2", "--duration", "0.5", "--rounds", "1",
    )  # fmt: skip
    assert "tables and answers of the two are identical" in out, out
    rows = re.findall(
        r"^\| (trained|packaged) \| 2 \| 1 \| (\d+) \|.*\| (\d+) \|$", out, re.MULTILINE
    )
    assert [model for model, _, _ in rows] == ["trained", "packaged"], out
    assert all(int(answers) > 0 and errors == "0" for _, answers, errors in rows), out
    assert re.search(r"packaged / trained: p50 [0-9.]+x", out), out


@pytest.mark.slow
def test_program_formats_bench_times_each_format_exactly(model_repo: Path) -> None:
    out = run_bench(
        "program_formats.py", "--model-repo", str(model_repo), "--candidates", "1,37",
        "--repeats", "2", "--rounds", "1", "--no-aoti",
    )  # fmt: skip
    rows = re.findall(r"^\| (head|whole ranking|model program) \| (\w+) \| [0-9.]+ \| "
                      r"[0-9.]+x \| ([0-9.e+-]+) \| ([0-9.e+-]+) \|$", out, re.MULTILINE)  # fmt: skip
    assert len(rows) == 2 * 3 * 2, out  # 2 sizes x 3 parts x 2 formats
    assert all(float(logit) < 1e-5 and float(score) < 1e-5 for *_, logit, score in rows), out
    assert (
        len(re.findall(r"^eager float32 against the same model in float64", out, re.MULTILINE)) == 2
    )
