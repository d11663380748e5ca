"""Top-N models: shapes, TorchScript, seeded golden values, learnability, determinism."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.sequences import planted_sequences

from recserve.training import topn
from recserve.training.data import (
    InteractionData,
    fetch_movielens_100k,
    load_movielens_100k,
)
from recserve.training.export import script_model
from recserve.training.models import bpr, gru4rec, popularity, sasrec
from recserve.training.models.bpr import BPRMF, bpr_loss
from recserve.training.models.gru4rec import GRU4Rec
from recserve.training.models.popularity import Popularity
from recserve.training.models.sasrec import SASRec

SEQUENCE = torch.tensor([[0, 2, 5, 1]])


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.mark.parametrize("module", [popularity, bpr, gru4rec, sasrec])
def test_docstring_examples(module) -> None:
    assert doctest.testmod(module).failed == 0


# -- popularity ----------------------------------------------------------------------


def test_popularity_basic_shape_script_and_values() -> None:
    model = Popularity(4)
    model.fit(torch.tensor([2, 2, 0, 2]))
    users = torch.tensor([0, 1, 2])
    scores = model(users)
    assert scores.shape == (3, 4)
    assert scores[0].tolist() == [0.25, 0.0, 0.75, 0.0]
    assert torch.equal(script_model(model)(users), scores)


# -- BPR-MF --------------------------------------------------------------------------


def _bpr() -> BPRMF:
    torch.manual_seed(0)
    model = BPRMF(num_users=4, num_items=5, embedding_dim=3)
    model.item_bias.weight.data.normal_()
    return model


def test_bpr_basic_and_shape() -> None:
    model = _bpr()
    users, items = torch.tensor([1, 3]), torch.tensor([0, 4])
    assert model(users).shape == (2, 5)
    pairs = model.score_pairs(users, items)
    assert pairs.shape == (2,)
    assert torch.allclose(pairs, model(users)[torch.arange(2), items])
    user_vectors, item_vectors = model.vectors()
    assert user_vectors.shape == (4, 4) and item_vectors.shape == (5, 4)
    assert torch.allclose(user_vectors[users] @ item_vectors.T, model(users), atol=1e-6)
    loss = bpr_loss(pairs, pairs - 1.0)
    assert loss.item() == pytest.approx(-np.log(1 / (1 + np.exp(-1.0))), rel=1e-6)


def test_bpr_script() -> None:
    model = _bpr()
    users = torch.tensor([0, 2])
    assert torch.equal(script_model(model)(users), model(users))


def test_bpr_correctness() -> None:
    golden = [
        [0.0360916, -0.3064862, -0.1308932, 1.9029093, 3.1073253],
        [0.0322657, -0.2853715, -0.1432559, 1.9093580, 3.0946558],
    ]
    got = _bpr()(torch.tensor([1, 3]))
    assert torch.allclose(got, torch.tensor(golden), atol=1e-5)


# -- GRU4Rec / LSTM ------------------------------------------------------------------


def _sequence_model(cell: str) -> GRU4Rec | SASRec:
    torch.manual_seed(0)
    if cell == "sasrec":
        return SASRec(6, max_length=4, embedding_dim=4, num_heads=2, hidden_size=5).eval()
    return GRU4Rec(6, embedding_dim=4, hidden_size=5, cell=cell).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm", "sasrec"])
def test_sequence_basic_and_shape(cell: str) -> None:
    model = _sequence_model(cell)
    batch = torch.tensor([[0, 0, 3, 1], [2, 5, 6, 4]])
    state = model(batch)
    assert state.shape == (2, 4)
    assert model.scores(state).shape == (2, 6)
    assert model.sequence_logits(torch.tensor([[3, 1, 0]])).shape == (1, 3, 6)
    # padding does not change the state: [0, 0, 3, 1] == [3, 1]
    assert torch.allclose(model(torch.tensor([[3, 1]])), state[:1], atol=1e-6)
    # the state after a prefix equals the training-time state at that position
    states = model.sequence_states(torch.tensor([[2, 5, 6, 4]]))
    assert torch.allclose(states[0, -1], state[1], atol=1e-6)
    with pytest.raises(ValueError, match="cell"):
        GRU4Rec(6, cell="rnn")


def test_sasrec_attends_only_to_earlier_items() -> None:
    """Causal: the state after a prefix does not change with what follows it."""
    model = _sequence_model("sasrec")
    states = model.sequence_states(torch.tensor([[2, 5, 6, 4], [2, 5, 1, 3]]))
    assert torch.allclose(states[0, :2], states[1, :2], atol=1e-6)
    assert not torch.allclose(states[0, 2], states[1, 2], atol=1e-4)
    with pytest.raises(ValueError, match="num_heads"):
        SASRec(6, max_length=4, embedding_dim=5, num_heads=2)


@pytest.mark.parametrize("cell", ["gru", "lstm", "sasrec"])
def test_sequence_script(cell: str) -> None:
    model = _sequence_model(cell)
    scripted = script_model(model)
    for batch in (SEQUENCE, torch.tensor([[0, 0, 0, 3], [1, 2, 3, 4]])):
        assert torch.allclose(scripted(batch), model(batch), atol=1e-6)


@pytest.mark.parametrize(
    ("cell", "golden"),
    [
        ("gru", [0.0935397, -0.4773183, 0.0325186, -0.3515224]),
        ("lstm", [0.3673206, 0.4290548, 0.1546795, 0.1108598]),
    ],
)
def test_sequence_correctness(cell: str, golden: list[float]) -> None:
    got = _sequence_model(cell)(SEQUENCE)
    assert torch.allclose(got, torch.tensor([golden]), atol=1e-5)


# -- learnability on planted structure ------------------------------------------------


@pytest.fixture(scope="module")
def planted() -> InteractionData:
    return planted_sequences()


@pytest.fixture(scope="module")
def popularity_ndcg(planted: InteractionData) -> float:
    return topn.train_popularity(planted, topn.PopConfig()).metrics["test_ndcg@10"]


def test_bpr_learns_planted_groups(planted: InteractionData, popularity_ndcg: float) -> None:
    config = topn.BPRConfig(epochs=20, patience=3, batch_size=128, learning_rate=0.05, l2=0.0)
    trained = topn.train_bpr(planted, config)
    assert popularity_ndcg < 0.15
    assert trained.metrics["test_ndcg@10"] > popularity_ndcg + 0.2


@pytest.mark.parametrize("cell", ["gru", "lstm", "sasrec"])
def test_sequence_model_learns_planted_order(
    planted: InteractionData, popularity_ndcg: float, cell: str
) -> None:
    settings = topn.SASRecConfig if cell == "sasrec" else topn.SequenceConfig
    config = settings(
        cell=cell, epochs=15, patience=3, embedding_dim=16, hidden_size=32, max_length=10,
        batch_size=32, learning_rate=1e-2, dropout=0.0,
    )  # fmt: skip
    trained = topn.train_sequence(planted, config)
    assert trained.metrics["test_ndcg@10"] > popularity_ndcg + 0.4
    assert trained.metrics["test_hr@10"] > 0.8


def test_training_is_deterministic(planted: InteractionData) -> None:
    config = topn.SequenceConfig(epochs=2, embedding_dim=8, hidden_size=8, max_length=10)
    first = topn.train_sequence(planted, config).metrics
    second = topn.train_sequence(planted, config).metrics
    for key in ("val_ndcg@10", "test_ndcg@10", "test_hr@10"):
        assert first[key] == second[key]


def test_progress_lines_per_epoch(planted: InteractionData) -> None:
    lines: list[str] = []
    config = topn.BPRConfig(epochs=2, patience=5, embedding_dim=4)
    trained = topn.train_bpr(planted, config, lines.append)
    assert len(lines) == 2 and "val NDCG@10" in lines[0] and "val HR@10" in lines[0]
    assert trained.metrics["epochs"] == 2
    assert {"test_hr@10", "test_ndcg@10", "test_mrr@10", "val_hr@10", "train_seconds"} <= set(
        trained.metrics
    )


DATA_DIR = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.slow
def test_gru4rec_reaches_target_on_movielens_100k() -> None:
    data = load_movielens_100k(fetch_movielens_100k(DATA_DIR, progress=None))
    trained = topn.train_sequence(data, topn.SequenceConfig())
    assert trained.metrics["test_ndcg@10"] >= 0.080
    assert trained.metrics["test_hr@10"] >= 0.14
