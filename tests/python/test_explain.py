"""Explanations (recserve.engine.explain): exact Shapley values over the input fields, checked
against float64 references written independently of the implementation."""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recserve.engine.artifact import load_artifact
from recserve.engine.dispatch import make_pipeline
from recserve.engine.errors import InvalidRequest
from recserve.engine.explain import explain_ranking, explain_rows, shapley_matrix
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.schema import FeatureSchema, FeatureSpec
from recserve.training import topn
from recserve.training.data import InteractionData, make_synthetic_movielens
from recserve.training.export import export_ranker
from recserve.training.features import EncodedData, encode_movielens
from recserve.training.models.deepfm import DeepFM
from recserve.training.registry import MODELS
from recserve.training.trainer import build_ranker

FAMILIES = ("mlp", "wide_deep", "deepfm", "dcnv2")
TINY = dict(embedding_dim=4, hidden=[8])
# Rows with an unknown item field (set below): release_year of row 6, all genres of row 5.
NO_GENRES, NO_YEAR = 5, 6
ITEM_ROWS = np.array([0, NO_GENRES, NO_YEAR, 17, 42])
# The program runs in float32 and the references in float64; each φ is a signed sum of
# logit differences whose weights add up to 2 in absolute value, so its error is at most
# twice the float32 error of a logit (|logit| <~ 10 here: about 1e-6).
ATOL = 2e-5


@pytest.fixture(scope="module")
def encoded(synthetic_data: InteractionData) -> EncodedData:
    e = encode_movielens(synthetic_data)
    tables = dict(e.tables)
    tables["item_multi"] = tables["item_multi"].copy()
    tables["item_multi"][NO_GENRES] = 0
    tables["item_features"] = tables["item_features"].copy()
    tables["item_features"][NO_YEAR, 1] = 0
    return replace(e, tables=tables)


def randomized(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with every parameter drawn at scale 0.5 (an untrained model's embeddings,
    std 0.01, would make every contribution tiny)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def rankers(
    encoded: EncodedData, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[nn.Module, RankerPipeline]]:
    torch.manual_seed(0)
    repo = tmp_path_factory.mktemp("explain-repo")
    out = {}
    for seed, name in enumerate(FAMILIES):
        model = randomized(build_ranker(name, encoded, MODELS[name].config_type(**TINY)), seed)
        path = export_ranker(model, encoded, repo, name, family=name, metrics={}, config={})
        pipeline = make_pipeline(load_artifact(path))
        assert isinstance(pipeline, RankerPipeline)
        out[name] = (model, pipeline)
    return out


# -- an independent float64 reference -------------------------------------------------


def field_inputs(schema: FeatureSchema) -> list[tuple[int, list[int]]]:
    """Per field in schema order: (which input, 0 user / 1 item / 2 item_multi; its columns)."""
    counters, out = [0, 0, 0], []
    for spec in schema.features:
        which = 0 if spec.side == "user" else 2 if spec.multi_valued else 1
        out.append((which, list(range(counters[which], counters[which] + spec.max_values))))
        counters[which] += spec.max_values
    return out


def coalition_logits(
    model: nn.Module, schema: FeatureSchema, inputs: tuple[np.ndarray, ...]
) -> dict[frozenset[int], float]:
    """v(S) for every subset S of the fields: float64 logits of the eager model with the
    fields outside S set to 0."""
    fields = field_inputs(schema)
    subsets = [
        frozenset(s)
        for r in range(len(fields) + 1)
        for s in itertools.combinations(range(len(fields)), r)
    ]
    batch = [np.repeat(x[None], len(subsets), axis=0) for x in inputs]
    for row, subset in enumerate(subsets):
        for f, (which, columns) in enumerate(fields):
            if f not in subset:
                batch[which][row, columns] = 0
    double = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = double(*(torch.from_numpy(b) for b in batch)).numpy()
    return dict(zip(subsets, logits.tolist(), strict=True))


def permutation_shapley(v: dict[frozenset[int], float], n: int) -> np.ndarray:
    """Shapley values as the mean marginal contribution over all n! orders of the fields."""
    phi = np.zeros(n)
    for order in itertools.permutations(range(n)):
        before: frozenset[int] = frozenset()
        for f in order:
            phi[f] += v[before | {f}] - v[before]
            before = before | {f}
    return phi / math.factorial(n)


def model_inputs(pipeline: RankerPipeline, user: np.ndarray, row: int) -> tuple[np.ndarray, ...]:
    t = pipeline.artifact.tables
    return user.copy(), t["item_features"][row].copy(), t["item_multi"][row].copy()


def contributions(explanation) -> np.ndarray:
    return np.array([f.contribution for f in explanation.fields])


# -- tests -----------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shapley_matrix_is_the_permutation_average(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.normal(size=2**n)  # v(S) indexed by bitmask, v(∅) = values[0]
    v = {
        frozenset(i for i in range(n) if mask >> i & 1): float(values[mask]) for mask in range(2**n)
    }
    np.testing.assert_allclose(values @ shapley_matrix(n), permutation_shapley(v, n), atol=1e-12)


@pytest.mark.parametrize("name", FAMILIES)
def test_matches_permutation_reference(name: str, rankers) -> None:
    model, pipeline = rankers[name]
    user = pipeline.user_features[3]
    explanations = explain_rows(pipeline, user, ITEM_ROWS)
    assert len(explanations) == ITEM_ROWS.size
    names = [f.name for f in pipeline.schema.features]
    for row, explanation in zip(ITEM_ROWS.tolist(), explanations, strict=True):
        assert [f.feature for f in explanation.fields] == names
        v = coalition_logits(model, pipeline.schema, model_inputs(pipeline, user, row))
        reference = permutation_shapley(v, len(names))
        np.testing.assert_allclose(contributions(explanation), reference, rtol=0, atol=ATOL)
        assert explanation.baseline == pytest.approx(v[frozenset()], abs=1e-5)
        assert abs(reference).max() > 0.05  # the comparison is not between near-zeros


@pytest.mark.parametrize("name", FAMILIES)
def test_efficiency_and_served_scores(name: str, rankers) -> None:
    """baseline + Σ = the model's logit (float64 eager forward), and the served score is
    sigmoid(baseline + Σ) within float32 rounding."""
    model, pipeline = rankers[name]
    t = pipeline.artifact.tables
    user_id = int(pipeline.user_ids[3])
    candidates = t["item_ids"][np.arange(0, 150, 7)].tolist()
    ranking = explain_ranking(pipeline, user_id, {}, pipeline.rank(user_id, candidates, k=10))
    rows = np.searchsorted(t["item_ids"], [i.item_id for i in ranking.items])
    n = rows.size
    double = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        logits = double(
            torch.from_numpy(np.repeat(pipeline.user_features[3][None], n, axis=0)),
            torch.from_numpy(t["item_features"][rows]),
            torch.from_numpy(t["item_multi"][rows]),
        ).numpy()
    explained = np.array([i.explanation.logit for i in ranking.items])
    np.testing.assert_allclose(explained, logits, rtol=0, atol=1e-5)
    scores = np.array([i.score for i in ranking.items])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-explained)), rtol=0, atol=1e-5)
    assert len(ranking.items) == 10 and scores.std() > 0.01  # distinct, informative scores


def test_deepfm_without_deep_part_is_first_order_plus_half_fm(encoded, tmp_path: Path) -> None:
    """With the MLP's output layer zeroed, φ_f = w_f + ½ Σ_{g≠f} <v_f, v_g> and the
    baseline is the bias, computed analytically in float64 from the model's tables."""
    config = MODELS["deepfm"].config_type(**TINY)
    model = randomized(build_ranker("deepfm", encoded, config), seed=7)
    assert isinstance(model, DeepFM)
    with torch.no_grad():
        model.mlp[-1].weight.zero_()
        model.mlp[-1].bias.zero_()
    path = export_ranker(model, encoded, tmp_path, "fm", family="deepfm", metrics={}, config={})
    pipeline = make_pipeline(load_artifact(path))
    assert isinstance(pipeline, RankerPipeline)

    emb = model.embedding.table.weight.detach().double().numpy()  # [R, d]
    first = model.first_order.table.weight.detach().double().numpy()[:, 0]  # [R]
    sizes = [f.cardinality for f in pipeline.schema.features]  # the table's field blocks
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    user = pipeline.user_features[11]
    explanations = explain_rows(pipeline, user, ITEM_ROWS)
    for row, explanation in zip(ITEM_ROWS.tolist(), explanations, strict=True):
        inputs = model_inputs(pipeline, user, row)
        vectors, weights = [], []
        for f, (which, columns) in enumerate(field_inputs(pipeline.schema)):
            ids = inputs[which][columns]
            ids = ids[ids > 0]  # a multi-valued field is the mean of its known values
            table_rows = offsets[f] + ids
            vectors.append(emb[table_rows].mean(axis=0) if ids.size else np.zeros(emb.shape[1]))
            weights.append(first[table_rows].mean() if ids.size else 0.0)
        v = np.stack(vectors)  # [F, d]
        gram = v @ v.T
        expected = np.array(weights) + 0.5 * (gram.sum(axis=1) - np.diag(gram))
        np.testing.assert_allclose(contributions(explanation), expected, rtol=0, atol=ATOL)
        assert explanation.baseline == pytest.approx(float(model.bias.detach()), abs=1e-6)
    assert abs(contributions(explanations[0])).max() > 0.05


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_fields_contribute_exactly_zero(name: str, rankers) -> None:
    """A cold-start user with only gender known: user_id, age and occupation are null
    players, as are the genres of NO_GENRES and the release year of NO_YEAR."""
    model, pipeline = rankers[name]
    user, row = pipeline.encode_user(10**9, {"gender": "F"})
    assert row == -1 and user.tolist() == [0, 0, user[2], 0] and user[2] > 0
    names = [f.name for f in pipeline.schema.features]
    explanations = explain_rows(pipeline, user, np.array([NO_GENRES, NO_YEAR, 17]))
    cold = {"user_id", "age", "occupation"}
    unknown = [cold | {"genres"}, cold | {"release_year"}, cold]
    for row, explanation, null in zip([NO_GENRES, NO_YEAR, 17], explanations, unknown, strict=True):
        got = dict(zip(names, contributions(explanation).tolist(), strict=True))
        assert all(got[n] == 0.0 for n in null)
        assert all(got[n] != 0.0 for n in set(names) - null)
        v = coalition_logits(model, pipeline.schema, model_inputs(pipeline, user, row))
        np.testing.assert_allclose(
            contributions(explanation), permutation_shapley(v, len(names)), rtol=0, atol=ATOL
        )


def test_refuses_a_retrieval_model(tmp_path: Path) -> None:
    data = make_synthetic_movielens(n_users=30, n_items=20, n_interactions=300, seed=2)
    path = topn.train_popularity(data, topn.PopConfig()).export(tmp_path, "pop", "synthetic")
    pipeline = make_pipeline(load_artifact(path))
    family = pipeline.artifact.family
    message = re.escape(
        f"family {family!r} cannot explain its scores; explain needs a ranker "
        "(mlp, wide_deep, deepfm, dcnv2, packaged_ranker)"
    )
    with pytest.raises(InvalidRequest, match=message):
        explain_rows(pipeline, np.zeros(0, dtype=np.int64), np.array([0]))


def widened(encoded: EncodedData, n_extra: int) -> EncodedData:
    """``encoded`` with ``n_extra`` more user fields (bucket features, all values known)."""
    extra = tuple(FeatureSpec.bucket(f"extra_{i}", "user", (1.0, 2.0)) for i in range(n_extra))
    schema = FeatureSchema((*encoded.schema.side("user"), *extra, *encoded.schema.side("item")))
    t = dict(encoded.tables)
    rng = np.random.default_rng(n_extra)
    values = rng.integers(1, 4, size=(t["user_features"].shape[0], n_extra))
    t["user_features"] = np.concatenate([t["user_features"], values], axis=1)
    return replace(encoded, schema=schema, tables=t)


@pytest.mark.parametrize("n_fields", [12, 13])
def test_at_most_twelve_fields(n_fields: int, encoded: EncodedData, tmp_path: Path) -> None:
    wide = widened(encoded, n_fields - len(encoded.schema.features))
    s = wide.schema
    model = DeepFM(
        [f.cardinality for f in s.single_valued("user")],
        [f.cardinality for f in s.single_valued("item")],
        [f.cardinality for f in s.multi_valued("item")],
        [f.max_values for f in s.multi_valued("item")],
        embedding_dim=4,
        hidden=[8],
    )
    model = randomized(model, seed=n_fields)
    path = export_ranker(model, wide, tmp_path, "wide", family="deepfm", metrics={}, config={})
    pipeline = make_pipeline(load_artifact(path))
    assert len(pipeline.schema.features) == n_fields
    user, rows = pipeline.user_features[0], np.array([1, 2])
    if n_fields > 12:
        with pytest.raises(InvalidRequest, match=r"has 13 input fields.*at most 12 fields"):
            explain_rows(pipeline, user, rows)
        return
    explanations = explain_rows(pipeline, user, rows)
    scores = pipeline.score_rows(user, rows)
    logits = np.array([e.logit for e in explanations])
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-logits)), rtol=0, atol=1e-5)
    assert [f.feature for f in explanations[0].fields] == [f.name for f in s.features]
