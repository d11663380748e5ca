"""The opt-in bfloat16 head of the crossing path: scores near float32, the artifact
untouched, and the served AUC of a test split (training.ranker.served_auc)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recserve.artifact import load_artifact
from recserve.pipeline import RankerPipeline, make_pipeline
from recserve.training.features import random_split
from recserve.training.ranker import TrainedRanker, served_auc
from recserve.training.trainer import RankerInputs, evaluate


@pytest.fixture
def artifact(trained_ranker: TrainedRanker, tmp_path: Path):
    return load_artifact(trained_ranker.export(tmp_path, "deepfm", "synthetic"))


def test_bfloat16_head_scores_close_to_float32(artifact) -> None:
    f32 = RankerPipeline(artifact)
    bf16 = make_pipeline(artifact, head_dtype="bfloat16")
    assert isinstance(bf16, RankerPipeline) and bf16.head_dtype == "bfloat16"
    user = f32.user_features[3]
    expected = f32.score_rows(user, None)
    got = bf16.score_rows(user, None)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=2e-2)  # bfloat16: 8 significant bits
    assert not np.array_equal(got, expected)  # the head did run in bfloat16
    # The artifact's head (shared by other pipelines) stays float32.
    assert all(p.dtype == torch.float32 for p in artifact.crossing.head.parameters())
    np.testing.assert_array_equal(f32.score_rows(user, None), expected)


def test_bad_head_dtype_and_no_crossing(artifact) -> None:
    with pytest.raises(ValueError, match="head dtype 'float16' is not supported"):
        RankerPipeline(artifact, head_dtype="float16")
    plain = RankerPipeline(artifact, use_crossing=False, head_dtype="bfloat16")
    assert plain.crossing is None and plain.head_dtype == "float32"


def test_served_auc_equals_the_trainers_auc(artifact, trained_ranker: TrainedRanker) -> None:
    encoded = trained_ranker.encoded
    test_rows = random_split(encoded.labels.size, trained_ranker.config.seed)[2]
    expected = evaluate(trained_ranker.model, RankerInputs(encoded), test_rows)["auc"]
    assert served_auc(artifact, encoded, test_rows) == pytest.approx(expected, abs=1e-6)
    bf16 = served_auc(artifact, encoded, test_rows, "bfloat16")
    assert abs(bf16 - expected) < 0.01


def test_user_table_width_must_match_the_crossing_block(artifact) -> None:
    import dataclasses

    from recserve.crossing import crossing_from_artifact

    users = artifact.tables["user_features"]
    wider = np.zeros((users.shape[0], users.shape[1] + 1), dtype=np.int64)
    broken = dataclasses.replace(artifact, tables={**artifact.tables, "user_features": wider})
    with pytest.raises(ValueError, match="user_features has 5 columns, the crossing block 4"):
        crossing_from_artifact(broken)
