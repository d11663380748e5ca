"""Backend selection and the errors when CUDA is asked for but absent: these run on every
machine (the CUDA-less paths are simulated where this build has CUDA)."""

from __future__ import annotations

import numpy as np
import pytest

import recserve
from recserve.core import kernels
from recserve.engine.crossing import DeviceItemTables, ItemTables
from recserve.server.app import build_server
from recserve.server.options import ServeOptions, options_from

CPU_ONLY = "cuda" not in kernels.available_backends()


@pytest.fixture
def without_cuda_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "HAS_CUDA", False)


@pytest.fixture
def without_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build on a machine with no usable device."""
    monkeypatch.setattr(kernels, "HAS_CUDA", True)
    monkeypatch.setattr(kernels, "_available_backends", lambda: ("cpu",))


def test_resolve_backend_names():
    assert kernels.resolve_backend("cpu") == "cpu"
    assert kernels.resolve_backend("auto") == ("cpu" if CPU_ONLY else "cuda")
    with pytest.raises(ValueError, match="backend must be 'auto', 'cpu' or 'cuda'"):
        kernels.resolve_backend("gpu")


@pytest.mark.usefixtures("without_cuda_build")
def test_cuda_without_a_cuda_build_says_so():
    with pytest.raises(RuntimeError, match=r"recserve was built without CUDA.*RECSERVE_WITH_CUDA"):
        kernels.resolve_backend("cuda")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        kernels.topk_inner_product(np.zeros((1, 3)), np.zeros((4, 3)), 1, backend="cuda")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        kernels.DeviceItemMatrix(np.zeros((4, 3)))
    empty = ItemTables(*(np.zeros((2, 1), np.float32) for _ in range(4)))
    with pytest.raises(RuntimeError, match="built without CUDA"):
        DeviceItemTables.upload(empty)


@pytest.mark.usefixtures("without_device")
def test_cuda_without_a_device_says_so():
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kernels.resolve_backend("cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        kernels.topk_scores(np.zeros((1, 3)), 1, backend="cuda")
    assert kernels.resolve_backend("auto") == "cpu"


@pytest.mark.usefixtures("without_device")
def test_auto_falls_back_to_the_cpu():
    values, indices = kernels.topk_scores(np.array([[0.5, 2.0, 1.0]]), 2, backend="auto")
    np.testing.assert_array_equal(indices, [[1, 2]])
    np.testing.assert_array_equal(values, [[2.0, 1.0]])


def test_numpy_in_numpy_out_on_the_cpu():
    rng = np.random.default_rng(0)
    values, indices = kernels.topk_inner_product(
        rng.standard_normal((3, 8)), rng.standard_normal((50, 8)), 4, backend="cpu"
    )
    assert isinstance(values, np.ndarray) and isinstance(indices, np.ndarray)
    assert values.shape == indices.shape == (3, 4)


def test_host_tensors_are_host_data():
    torch = pytest.importorskip("torch")
    scores = torch.tensor([[0.5, 2.0, 1.0]])
    values, indices = kernels.topk_scores(scores, 1, backend="cpu")
    assert isinstance(values, np.ndarray) and isinstance(indices, np.ndarray)
    np.testing.assert_array_equal(indices, [[1]])


def test_has_cuda_is_exported():
    assert recserve.HAS_CUDA == kernels.HAS_CUDA
    assert (1024 if kernels.HAS_CUDA else 0) == kernels.CUDA_MAX_K


def test_device_option_is_validated():
    assert options_from(environ={}).device == "auto"
    assert options_from(environ={"RECSERVE_DEVICE": "cpu"}).device == "cpu"
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda"):
        options_from(environ={"RECSERVE_DEVICE": "gpu"})


@pytest.mark.usefixtures("without_cuda_build")
def test_serve_with_device_cuda_fails_the_start_without_cuda(tmp_path):
    options = ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1, device="cuda")
    with pytest.raises(RuntimeError, match="built without CUDA"):
        build_server(options)  # raises before anything binds


@pytest.mark.usefixtures("without_device")
def test_serve_with_device_cuda_fails_the_start_without_a_device(tmp_path):
    options = ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1, device="cuda")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        build_server(options)
