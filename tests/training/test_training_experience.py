"""Checkpoints, resume, determinism, training curves and `recserve export` from a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recserve.cli import main
from recserve.engine.artifact import load_artifact
from recserve.training import checkpoint as checkpoint_module
from recserve.training.checkpoint import CHECKPOINT, CURVES, load_checkpoint, save_checkpoint
from recserve.training.data import InteractionData
from recserve.training.ranker import train_ranker
from recserve.training.trainer import DCNv2Config, EpochLog, MLPConfig, WideDeepConfig, format_epoch

QUIET = dict(show_progress=False)
SMALL = dict(embedding_dim=4, hidden=[8], num_threads=1, patience=10, dropout=0.3)


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_gives_the_weights_of_an_uninterrupted_run(
    synthetic_data: InteractionData, tmp_path: Path
) -> None:
    whole = train_ranker(
        "dcnv2", synthetic_data, DCNv2Config(epochs=4, **SMALL), **QUIET, run_dir=tmp_path / "whole"
    )
    split = tmp_path / "split"
    first = train_ranker(
        "dcnv2", synthetic_data, DCNv2Config(epochs=2, **SMALL), **QUIET, run_dir=split
    )
    assert len(first.history) == 2
    resumed = train_ranker(
        "dcnv2", synthetic_data, DCNv2Config(epochs=4, **SMALL), **QUIET, run_dir=split, resume=True
    )
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    assert state_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.metrics["test_auc"] == whole.metrics["test_auc"]
    a, b = load_checkpoint(split / CHECKPOINT), load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    assert state_equal(a["model_state"], b["model_state"])  # the last epoch's, not the best
    assert [h["val_auc"] for h in a["history"]] == [h["val_auc"] for h in b["history"]]


def test_two_runs_with_one_seed_give_the_same_metrics(synthetic_data: InteractionData) -> None:
    runs = [
        train_ranker("mlp", synthetic_data, MLPConfig(epochs=2, **SMALL), **QUIET) for _ in range(2)
    ]
    assert round(runs[0].metrics["test_auc"], 3) == round(runs[1].metrics["test_auc"], 3)
    assert runs[0].metrics["test_logloss"] == runs[1].metrics["test_logloss"]
    other = train_ranker("mlp", synthetic_data, MLPConfig(epochs=2, seed=7, **SMALL), **QUIET)
    assert other.metrics["test_logloss"] != runs[0].metrics["test_logloss"]


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / CHECKPOINT
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj: object, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary left
    state = load_checkpoint(path)
    assert state["epoch"] == 1 and torch.equal(state["w"], torch.ones(3))


def test_missing_checkpoint_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--run-dir"):
        load_checkpoint(tmp_path / CHECKPOINT)


def test_run_dir_gets_checkpoint_and_curves(
    synthetic_data: InteractionData, tmp_path: Path
) -> None:
    lines: list[str] = []
    train_ranker(
        "wide_deep",
        synthetic_data,
        WideDeepConfig(epochs=2, **SMALL),
        lambda log: lines.append(format_epoch(log)),
        show_progress=False,
        run_dir=tmp_path,
    )
    assert (tmp_path / CURVES).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["model_name"] == "wide_deep" and state["epoch"] == 2
    assert len(lines) == 2 and "elapsed" in lines[0] and "left" in lines[0]


def test_epoch_line_shows_elapsed_and_remaining_time() -> None:
    line = format_epoch(EpochLog(3, 0.5, 0.75, 0.55, 10.0, elapsed=75.0, remaining=130.0))
    assert "elapsed 1:15" in line and "at most 2:10 left" in line


def test_train_resume_and_export_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**SMALL, "epochs": 2}))
    run, repo = tmp_path / "run", tmp_path / "repo"
    common = ["--model", "mlp", "--data", "synthetic", "--model-repo", str(repo)]
    common += ["--run-dir", str(run)]
    assert main(["train", *common, "--config", str(config)]) == 0
    assert main(["train", *common, "--resume", "--epochs", "3"]) == 0
    trained = load_artifact(repo / "mlp" / "2")
    assert trained.manifest["metrics"]["epochs"] == 3
    assert trained.manifest["config"]["embedding_dim"] == 4  # the run's settings, kept
    capsys.readouterr()
    assert main(["export", "--run-dir", str(run), "--model-repo", str(repo), "--name", "x"]) == 0
    assert "test AUC" in capsys.readouterr().out
    exported = load_artifact(repo / "x" / "1")
    assert exported.family == "mlp"
    assert exported.manifest["metrics"]["test_auc"] == pytest.approx(
        trained.manifest["metrics"]["test_auc"]
    )


def test_restored_optimizer_keeps_its_new_learning_rate() -> None:
    from recserve.training.checkpoint import restore_optimizer

    weights = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.Adam([weights], lr=1e-3)
    weights.sum().backward()
    old.step()
    new = torch.optim.Adam([weights], lr=5e-4)
    restore_optimizer(new, old.state_dict())
    assert new.param_groups[0]["lr"] == 5e-4
    assert int(new.state[weights]["step"]) == 1  # the running state came back
