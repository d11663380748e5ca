"""Float64 references, the tie-tolerant top-k check and random inputs, shared by the
kernel tests (test_topk.py, test_cuda_kernels.py) and the plain GPU runner
(tests/gpu/run_checks.py): numpy only, no pytest, so it imports on a bare GPU machine."""

from __future__ import annotations

import numpy as np

F32_EPS = 2.0**-24  # unit roundoff of float32


# --- float64 references -------------------------------------------------------------


def reference_topk_scores(
    scores: np.ndarray, k: int, exclude: list | None
) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 [B, k], indices int64 [B, k]) by the result contract."""
    scores = np.asarray(scores, dtype=np.float64)
    B = scores.shape[0]
    values = np.full((B, k), -np.inf)
    indices = np.full((B, k), -1, dtype=np.int64)
    for b in range(B):
        selectable = ~np.isnan(scores[b])
        if exclude is not None:
            selectable[np.asarray(exclude[b], dtype=np.int64)] = False
        ids = np.flatnonzero(selectable)
        best = ids[np.lexsort((ids, -scores[b, ids]))][:k]  # score desc, then index asc
        values[b, : len(best)] = scores[b, best]
        indices[b, : len(best)] = best
    return values, indices


def reference_scores_inner_product(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.asarray(queries, np.float64) @ np.asarray(items, np.float64).T


def reference_topk_inner_product(
    queries: np.ndarray, items: np.ndarray, k: int, exclude: list | None
) -> tuple[np.ndarray, np.ndarray]:
    return reference_topk_scores(reference_scores_inner_product(queries, items), k, exclude)


def inner_product_tolerance(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Per query row, a bound on |float32 dot - exact dot|: (D + 2) u max_j |q|.|x_j|."""
    D = queries.shape[1]
    if items.shape[0] == 0:
        return np.zeros(queries.shape[0])
    magnitude = np.abs(queries.astype(np.float64)) @ np.abs(items.astype(np.float64)).T
    return (D + 2) * F32_EPS * magnitude.max(axis=1)


# --- the tie-tolerant check ------------------------------------------------------------


def assert_topk(
    values: np.ndarray,
    indices: np.ndarray,
    scores: np.ndarray,
    k: int,
    exclude: list | None,
    tol: np.ndarray | float,
    context: str,
    *,
    exact: bool = False,
) -> None:
    """Check (values, indices) against the float64 reference on `scores` [B, N].

    Values equal the reference's within tol; ids are in range, unique and not excluded;
    padding is exactly (-inf, -1); any id differing from the reference has an equal
    score. With exact=True (float32 scores given directly) ids must equal the
    reference's, which checks the tie rule.
    """
    scores = np.asarray(scores, dtype=np.float64)
    B, N = scores.shape
    tol = np.broadcast_to(np.asarray(tol, dtype=np.float64), (B,))
    ref_values, ref_indices = reference_topk_scores(scores, k, exclude)
    assert values.dtype == np.float32, context
    assert indices.dtype == np.int64, context
    assert values.shape == (B, k), context
    assert indices.shape == (B, k), context
    for b in range(B):
        where = f"{context}, row {b}"
        n = int((ref_indices[b] >= 0).sum())
        ids = indices[b, :n]
        assert (indices[b, n:] == -1).all(), f"padding ids must be -1 ({where})"
        assert np.isneginf(values[b, n:]).all(), f"padding values must be -inf ({where})"
        assert ((ids >= 0) & (ids < N)).all(), f"id out of range ({where}): {ids}"
        assert len(np.unique(ids)) == n, f"duplicate ids ({where}): {ids}"
        if exclude is not None:
            banned = np.asarray(exclude[b], dtype=np.int64)
            assert not np.isin(ids, banned).any(), f"excluded id returned ({where})"
        assert not np.isnan(scores[b, ids]).any(), f"NaN score selected ({where})"
        assert (values[b, :-1] >= values[b, 1:]).all(), f"not descending ({where})"
        np.testing.assert_allclose(
            values[b, :n], ref_values[b, :n], rtol=0, atol=tol[b], err_msg=where
        )
        np.testing.assert_allclose(
            values[b, :n], scores[b, ids], rtol=0, atol=tol[b],
            err_msg=f"a value is not its id's score ({where})",
        )  # fmt: skip
        differ = ids != ref_indices[b, :n]
        np.testing.assert_allclose(
            scores[b, ids[differ]], ref_values[b, :n][differ], rtol=0, atol=2 * tol[b],
            err_msg=f"an id differing from the reference has a different score ({where})",
        )  # fmt: skip
        if exact:
            np.testing.assert_array_equal(ids, ref_indices[b, :n], err_msg=where)


# --- inputs ----------------------------------------------------------------------------


def make_exclude(kind: str, B: int, N: int, rng: np.random.Generator) -> list | None:
    """None, or per row a list/array of item ids (random with duplicates, or all of them)."""
    if kind == "none":
        return None
    rows: list = []
    for b in range(B):
        if N == 0:
            ids = np.empty(0, dtype=np.int64)
        elif kind == "all":
            ids = np.concatenate([rng.permutation(N), rng.integers(0, N, size=2)])
        else:
            ids = rng.integers(0, N, size=int(rng.integers(0, N // 2 + 3)))
            if ids.size:
                ids = np.append(ids, ids[0])  # at least one duplicate
        rows.append(ids.tolist() if b % 2 else ids)  # lists and arrays both accepted
    return rows


def make_scores(kind: str, B: int, N: int, rng: np.random.Generator) -> np.ndarray:
    """float32 scores, with many ties for kind="ties", and some NaN and +-inf."""
    if kind == "ties":
        scores = rng.integers(-3, 4, size=(B, N)).astype(np.float32)
    else:
        scores = rng.standard_normal((B, N)).astype(np.float32)
    special = rng.random((B, N))
    scores[special < 0.05] = np.nan
    scores[(special >= 0.05) & (special < 0.07)] = -np.inf
    scores[(special >= 0.07) & (special < 0.08)] = np.inf
    return scores
