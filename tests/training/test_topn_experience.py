"""Top-N training experience: per-epoch checkpoints, resume, curves, `recserve train --resume`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.sequences import planted_sequences

from recserve.cli import main
from recserve.engine.artifact import load_artifact
from recserve.training import gan, topn
from recserve.training.checkpoint import CHECKPOINT, CURVES, load_checkpoint
from recserve.training.data import InteractionData

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted() -> InteractionData:
    return planted_sequences()


def state_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


CONFIGS = {
    "bpr": (
        topn.train_bpr,
        lambda epochs: topn.BPRConfig(epochs=epochs, patience=10, embedding_dim=8),
    ),
    "gru4rec": (
        topn.train_sequence,
        lambda epochs: topn.SequenceConfig(
            epochs=epochs, patience=10, embedding_dim=8, hidden_size=8, max_length=10, dropout=0.3
        ),
    ),
    "cfgan": (
        gan.train_cfgan,
        lambda epochs: gan.CFGANConfig(
            epochs=epochs, patience=10, generator_hidden=[16], discriminator_hidden=[8]
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_gives_the_weights_of_an_uninterrupted_run(
    planted: InteractionData, tmp_path: Path, name: str
) -> None:
    train, config = CONFIGS[name]
    whole = train(planted, config(4), run_dir=tmp_path / "whole")
    split = tmp_path / "split"
    first = train(planted, config(2), run_dir=split)
    assert [h.epoch for h in first.history] == [1, 2]
    assert load_checkpoint(split / CHECKPOINT)["epoch"] == 2
    resumed = train(planted, config(4), run_dir=split, resume=True)
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4]
    assert state_equal(resumed.model.state_dict(), whole.model.state_dict())
    assert resumed.metrics["test_ndcg@10"] == whole.metrics["test_ndcg@10"]
    a, b = load_checkpoint(split / CHECKPOINT), load_checkpoint(tmp_path / "whole" / CHECKPOINT)
    assert state_equal(a["model_state"], b["model_state"])  # the last epoch's, not the best
    assert a["optimizers"].keys() == b["optimizers"].keys()
    assert [h["val_ndcg"] for h in a["history"]] == [h["val_ndcg"] for h in b["history"]]
    assert a["model_name"] == name


def test_run_dir_gets_checkpoint_and_curves(planted: InteractionData, tmp_path: Path) -> None:
    train, config = CONFIGS["cfgan"]
    trained = train(planted, config(2), run_dir=tmp_path)
    assert (tmp_path / CURVES).read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT, CURVES]  # no temporary
    state = load_checkpoint(tmp_path / CHECKPOINT)
    assert state["epoch"] == 2 and state["config"]["generator_hidden"] == [16]
    assert set(state["optimizers"]) == {"generator", "discriminator"}
    assert set(trained.history[0].losses) == {"G loss", "D loss"}


def test_resume_without_a_run_dir_is_an_error(planted: InteractionData) -> None:
    train, config = CONFIGS["bpr"]
    with pytest.raises(ValueError, match="run directory"):
        train(planted, config(2), resume=True)


def test_train_and_resume_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.json").write_text(json.dumps({"embedding_dim": 8, "patience": 10}))
    common = ["--model", "bpr", "--data", "synthetic", "--run-dir", "run"]
    assert main(["train", *common, "--config", "config.json", "--epochs", "2"]) == 0
    assert (tmp_path / "run" / CURVES).read_bytes()[:8] == PNG
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["epoch"] == 2
    assert main(["train", *common, "--resume", "--epochs", "3"]) == 0
    state = load_checkpoint(tmp_path / "run" / CHECKPOINT)
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    trained = load_artifact(tmp_path / "model-repo" / "bpr" / "2")
    assert trained.manifest["metrics"]["epochs"] == 3
    assert trained.manifest["config"]["embedding_dim"] == 8  # the run's settings, kept
    with pytest.raises(SystemExit, match="is for rankers"):
        main(["export", "--run-dir", "run", "--name", "x"])


def test_pop_has_no_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="does not write checkpoints"):
        main(["train", "--model", "pop", "--data", "synthetic", "--resume"])
