"""Every CTR ranker family, exported from synthetic data, serves Rank and Recommend with
the scores of its own forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recserve.engine.artifact import CROSSING_ROLES, RANKER_FAMILIES, load_artifact
from recserve.engine.dispatch import make_pipeline
from recserve.engine.pipeline import RankerPipeline
from recserve.training.data import InteractionData
from recserve.training.export import export_ranker
from recserve.training.ranker import train_ranker
from recserve.training.registry import MODELS
from recserve.training.trainer import RANKERS

CTR_MODELS = [name for name, entry in MODELS.items() if entry.task == "ctr"]
TINY = dict(epochs=1, embedding_dim=4, hidden=[8], num_threads=1)


def test_the_training_and_serving_declarations_name_the_same_rankers() -> None:
    """A new ranker is one model file, one RANKERS entry (training) and its name in the
    engine's RANKER_FAMILIES (serving, which may not import training): kept equal here."""
    assert set(CTR_MODELS) == set(RANKERS) == set(RANKER_FAMILIES)
    assert set(CROSSING_ROLES) < set(RANKER_FAMILIES)


@pytest.mark.parametrize("name", CTR_MODELS)
def test_round_trip_rank_and_recommend(
    name: str, synthetic_data: InteractionData, tmp_path: Path
) -> None:
    trained = train_ranker(
        name, synthetic_data, MODELS[name].config_type(**TINY), show_progress=False
    )
    artifact = load_artifact(trained.export(tmp_path, name, "synthetic"))
    assert artifact.family == name
    assert (artifact.crossing is not None) == (name != "mlp")  # fused path: all but MLP
    if artifact.crossing is not None:
        assert artifact.crossing.kind == name
    pipeline = make_pipeline(artifact)
    assert isinstance(pipeline, RankerPipeline)
    check_scores(trained, pipeline)
    # The same artifact through the whole program, and one exported without the block.
    check_scores(trained, RankerPipeline(artifact, use_crossing=False))
    plain = trained.model
    path = export_ranker(
        plain, trained.encoded, tmp_path, f"{name}-plain", family=name, metrics={}, config={},
        crossing=False,
    )  # fmt: skip
    without = load_artifact(path)
    assert without.crossing is None and "head" not in without.modules
    check_scores(trained, make_pipeline(without))


def check_scores(trained, pipeline: RankerPipeline) -> None:
    """Rank and Recommend scores equal the model's forward within 1e-5 relative."""
    t = trained.encoded.tables
    user = int(t["user_ids"][3])
    user_features = torch.from_numpy(t["user_features"][3]).unsqueeze(0)
    items = torch.from_numpy(t["item_features"])
    multi = torch.from_numpy(t["item_multi"])
    with torch.no_grad():
        logits = trained.model(user_features.expand(items.shape[0], -1), items, multi)
    expected = torch.sigmoid(logits).numpy()  # [I]: every item, in table row order

    candidates = t["item_ids"][[7, 2, 40, 11]]
    ranking = pipeline.rank(user, candidates.tolist())
    rows = np.searchsorted(t["item_ids"], [i.item_id for i in ranking.items])
    np.testing.assert_allclose([i.score for i in ranking.items], expected[rows], rtol=1e-5)
    assert sorted(rows.tolist()) == [2, 7, 11, 40]
    assert [i.score for i in ranking.items] == sorted(
        (i.score for i in ranking.items), reverse=True
    )

    answer = pipeline.recommend(user, k=5)
    seen = t["seen_items"][t["seen_indptr"][3] : t["seen_indptr"][4]]
    unseen = np.setdiff1d(np.arange(expected.size), seen)
    best = np.sort(expected[unseen])[::-1][:5]
    np.testing.assert_allclose([i.score for i in answer.items], best, rtol=1e-5)
