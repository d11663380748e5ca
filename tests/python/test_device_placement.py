"""Pipelines placed on a device: the same answers on "cuda" as on "cpu" (run where a GPU
is present), and clear errors where it is not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recserve.core import kernels
from recserve.engine.artifact import load_artifact
from recserve.engine.dispatch import make_pipeline
from recserve.training import topn
from recserve.training.data import make_synthetic_movielens

CUDA_USABLE = "cuda" in kernels.available_backends()
needs_cuda = pytest.mark.skipif(
    not CUDA_USABLE,
    reason="needs a CUDA build of recserve (RECSERVE_WITH_CUDA=ON) and a GPU"
    if not kernels.HAS_CUDA
    else "recserve was built with CUDA but no device is usable here",
)


def test_cpu_placement_changes_nothing(artifact) -> None:
    plain = make_pipeline(artifact)
    placed = make_pipeline(artifact, device="cpu")
    assert placed.device == "cpu"
    items = plain.item_ids[:30].tolist()
    assert plain.rank(1, items, k=5) == placed.rank(1, items, k=5)


def test_an_unknown_device_is_refused(artifact) -> None:
    with pytest.raises(ValueError, match="device must be one of cpu, cuda; got 'tpu'"):
        make_pipeline(artifact, device="tpu")


@pytest.mark.skipif(CUDA_USABLE, reason="checks the error where CUDA is absent")
def test_cuda_where_it_is_absent_is_a_clear_error(artifact) -> None:
    with pytest.raises(RuntimeError, match="CUDA"):
        make_pipeline(artifact, device="cuda")


@needs_cuda
def test_a_ranker_answers_the_same_on_the_gpu(artifact) -> None:
    cpu = make_pipeline(artifact)
    gpu = make_pipeline(artifact, device="cuda")
    rng = np.random.default_rng(0)
    for user in (1, 2, 10**9):
        items = rng.choice(cpu.item_ids, size=40, replace=False).tolist()
        a, b = cpu.rank(user, items, k=10), gpu.rank(user, items, k=10)
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
        np.testing.assert_allclose(
            [i.score for i in a.items], [i.score for i in b.items], rtol=1e-5, atol=1e-6
        )
        a, b = cpu.recommend(user, k=10), gpu.recommend(user, k=10)
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]


@needs_cuda
def test_a_retrieval_model_scans_its_catalog_on_the_gpu(tmp_path) -> None:
    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=50, n_items=40, n_interactions=700, seed=2)
    trained = topn.train_bpr(data, topn.BPRConfig(epochs=2, embedding_dim=8))
    artifact = load_artifact(trained.export(tmp_path, "bpr", "synthetic"))
    cpu, gpu = make_pipeline(artifact), make_pipeline(artifact, device="cuda")
    assert gpu.device_items is not None
    for user in (1, 2, 3):
        a, b = cpu.recommend(user, k=10), gpu.recommend(user, k=10)
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
