"""The DIN ranker of a retriever's candidates: the model, its training lists, its metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.sequences import SMALL_DIN, SMALL_SEQUENCE

from recserve.engine.artifact import load_artifact
from recserve.training import topn
from recserve.training.data import make_synthetic_movielens
from recserve.training.export import script_model
from recserve.training.models.din import DIN
from recserve.training.topn.din import (
    Retriever,
    list_metrics,
    load_retriever,
    retrieved_lists,
    right_aligned,
    signal_lists,
)


def din(num_users: int = 4, num_items: int = 9) -> DIN:
    torch.manual_seed(0)
    return DIN(num_users, num_items, torch.rand(num_items) / num_items, embedding_dim=8).eval()


def random_inputs(b: int, length: int, c: int, num_users: int = 4, num_items: int = 9):
    g = torch.Generator().manual_seed(b * 100 + length * 10 + c)
    users = torch.randint(0, num_users + 1, (b,), generator=g)
    history = torch.randint(1, num_items + 1, (b, length), generator=g)
    candidates = torch.randint(1, num_items + 1, (b, c), generator=g)
    return users, history, candidates, torch.randn(b, c, generator=g)


@pytest.mark.parametrize(("b", "length", "c"), [(1, 1, 1), (3, 7, 5), (2, 0, 4)])
def test_the_program_scores_every_candidate_and_matches_the_eager_model(b, length, c) -> None:
    model = din()
    inputs = random_inputs(b, length, c)
    scripted = script_model(model)
    eager, program = model(*inputs), scripted(*inputs)
    assert eager.shape == (b, c) and torch.isfinite(eager).all()
    torch.testing.assert_close(program, eager)


def test_left_padding_changes_nothing_and_no_history_means_no_interest() -> None:
    model = din()
    users, history, candidates, scores = random_inputs(2, 5, 4)
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.int64), history], dim=1)
    torch.testing.assert_close(
        model(users, padded, candidates, scores), model(users, history, candidates, scores)
    )
    _, interest = model.signals(users, torch.zeros(2, 4, dtype=torch.int64), candidates)
    assert torch.equal(interest, torch.zeros_like(interest))


def test_the_retriever_score_counts_only_within_the_request() -> None:
    """Standardised within the list: a retrained retriever with another scale of scores
    (or an offset) gives the same order and the same scores."""
    model = din()
    users, history, candidates, scores = random_inputs(3, 6, 5)
    torch.testing.assert_close(
        model(users, history, candidates, 3.0 * scores + 7.0),
        model(users, history, candidates, scores),
        rtol=1e-4,
        atol=1e-4,
    )


def test_list_metrics_match_a_float64_reference() -> None:
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.normal(size=(40, 15)).astype(np.float32))
    target = torch.from_numpy(rng.integers(-1, 15, 40))
    got = list_metrics(scores, target, k=5)
    hr = ndcg = mrr = 0.0
    for row, t in zip(scores.double().numpy(), target.numpy(), strict=True):
        if t < 0:
            continue
        rank = int((row > row[t]).sum())
        if rank < 5:
            hr, ndcg, mrr = hr + 1, ndcg + 1 / math.log2(rank + 2), mrr + 1 / (rank + 1)
    assert got == pytest.approx({"hr@5": hr / 40, "ndcg@5": ndcg / 40, "mrr@5": mrr / 40})


def test_right_aligned_keeps_the_newest_items() -> None:
    out = right_aligned([np.array([4, 5, 6]), np.array([], dtype=np.int64)], 2)
    assert out.tolist() == [[6, 7], [0, 0]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=40, n_items=30, n_interactions=600, seed=4)
    repo = tmp_path_factory.mktemp("din-repo")
    topn.train_sequence(data, topn.SASRecConfig(**SMALL_SEQUENCE)).export(repo, "sasrec", "syn")
    config = topn.DINConfig(**SMALL_DIN)
    trained = topn.train_din(data, config, lambda line: None, False, model_repo=repo)
    return repo, config, trained


def test_training_lists_hold_the_next_item_first_and_the_retrievers_best_others(
    trained,
) -> None:
    repo, config, result = trained
    prepared = result.prepared
    retriever = load_retriever(repo, "sasrec", prepared)
    lists = signal_lists(prepared.split, retriever, config, np.random.default_rng(0))
    split = prepared.split
    user = int(np.argmax(np.diff(split.train_indptr)))
    sequence = split.train_sequence(user)
    first = int(np.flatnonzero(lists.users.numpy() == user + 1)[0])
    for t in (1, sequence.size - 1):
        row = lists.candidates[first + t - 1].numpy() - 1
        assert row[0] == sequence[t]
        scores = retriever.scores([sequence[:t]])[0].double().numpy()
        scores[sequence[:t]] = -np.inf
        scores[sequence[t]] = -np.inf
        order = np.argsort(-scores, kind="stable")[: config.hard_negatives]
        best = set(order[np.isfinite(scores[order])].tolist())
        hard = set(row[1 : 1 + config.hard_negatives].tolist())
        # fewer unseen items than hard negatives (late in a sequence of a small catalog):
        # the rest are seen ones or the next item, which the loss masks
        assert best <= hard and (len(best) == config.hard_negatives or len(best) < len(hard))


def test_held_out_lists_are_the_retrievers_answers(trained) -> None:
    repo, config, result = trained
    split = result.prepared.split
    retriever = load_retriever(repo, "sasrec", result.prepared)
    lists = retrieved_lists(split, retriever, config, "test")
    user = int(lists.users[0]) - 1
    history = split.history(user, "test")
    scores = retriever.scores([history])[0]
    scores[torch.from_numpy(history)] = -torch.inf
    assert (lists.candidates[0] - 1).tolist() == torch.topk(
        scores, config.retrieve_n
    ).indices.tolist()
    target = int(lists.target[0])
    test_item = split.test_items[user]
    assert target == -1 or int(lists.candidates[0, target]) - 1 == test_item


def test_training_reports_itself_against_the_retriever_and_exports(trained, tmp_path: Path) -> None:
    result = trained[2]
    for key in ("test_hr@10", "test_ndcg@10", "test_retriever_hr@10", "val_mrr@10"):
        assert 0.0 <= result.metrics[key] <= 1.0
    artifact = load_artifact(result.export(tmp_path, "din", "syn"))
    assert artifact.family == "din"
    assert artifact.manifest["retriever"] == {"name": "sasrec", "version": 1}
    assert artifact.manifest["config"]["retriever"] == "sasrec"


def test_a_missing_or_foreign_retriever_is_refused(trained, tmp_path: Path) -> None:
    repo, config, result = trained
    with pytest.raises(ValueError, match="no model 'sasrec' in"):
        load_retriever(tmp_path, "sasrec", result.prepared)
    other = make_synthetic_movielens(n_users=40, n_items=30, n_interactions=600, seed=9)
    with pytest.raises(ValueError, match="was trained on other data"):
        topn.train_din(other, config, lambda line: None, False, model_repo=repo)
    result.export(tmp_path, "din", "syn")
    with pytest.raises(ValueError, match="sequence retriever"):
        Retriever(load_artifact(tmp_path / "din" / "1"))


def test_a_nan_score_is_a_miss_not_a_hit() -> None:
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [0.5, 0.1, 0.2]])
    assert list_metrics(scores, torch.tensor([0, 0]), k=1) == {
        "hr@1": 0.5,
        "ndcg@1": 0.5,
        "mrr@1": 0.5,
    }
