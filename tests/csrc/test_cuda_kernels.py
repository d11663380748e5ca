"""The CUDA kernels against the CPU kernels and float64 references (cuda_checks.py).

Skipped, with the reason, where recserve was built without CUDA or no GPU is usable (CI);
tests/gpu/run.sh runs them on a GPU. Seeds as in test_topk.py (RECSERVE_TEST_SEED)."""

from __future__ import annotations

import os

import cuda_checks as checks
import numpy as np
import pytest

import recserve
import recserve.core.kernels

pytestmark = [
    pytest.mark.skipif(
        not recserve.HAS_CUDA,
        reason="recserve was built without CUDA (RECSERVE_WITH_CUDA=OFF): the CUDA kernels "
        "are checked by tests/gpu/run.sh on a GPU machine",
    ),
    pytest.mark.skipif(
        recserve.HAS_CUDA and "cuda" not in recserve.core.kernels.available_backends(),
        reason="recserve has CUDA kernels but no CUDA device (or CUDA PyTorch) is usable here",
    ),
]


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("RECSERVE_TEST_SEED", np.random.SeedSequence().entropy))
    print(f"random seed: RECSERVE_TEST_SEED={value}")
    return value


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("case", checks.INNER_PRODUCT_CASES)
def test_inner_product_matches_cpu_and_reference(case, rng, seed):
    checks.check_inner_product(case, rng, f"seed={seed}")


@pytest.mark.parametrize("case", checks.SCORES_CASES)
def test_scores_equal_cpu(case, rng, seed):
    checks.check_scores(case, rng, f"seed={seed}")


@pytest.mark.parametrize("case", checks.CROSSING_CASES)
def test_crossing_deepfm_matches_cpu(case, rng, seed):
    checks.check_crossing_deepfm(case, rng, f"seed={seed}")


@pytest.mark.parametrize("case", checks.DCN_CASES)
def test_crossing_dcn_first_matches_cpu(case, rng, seed):
    checks.check_crossing_dcn(case, rng, f"seed={seed}")


def test_crossing_rows_are_checked_on_the_host(rng):
    checks.check_crossing_rows_are_checked_on_the_host(rng)


def test_streams_and_dlpack(rng):
    checks.check_streams_and_dlpack(rng)


def test_k_above_the_limit_raises():
    checks.check_k_limit()
