from __future__ import annotations

import itertools

import torch
from helpers.ctr import make_ctr_model, random_inputs

from recserve.training.models.deepfm import DeepFM
from recserve.training.models.layers import FieldEmbedding


def make_model(**kwargs) -> DeepFM:
    return make_ctr_model(DeepFM, **kwargs)  # type: ignore[return-value]


def test_correctness_against_pairwise_reference() -> None:
    """The FM term equals Σ_{i<j} <v_i, v_j> in float64; unknown fields contribute nothing."""
    model = make_model()
    user, item, multi = random_inputs(6)
    user[0, 1] = 0  # an unknown field
    multi[1] = 0  # no genres at all
    with torch.no_grad():
        v = model.embedding(torch.cat([user, item], 1), multi).double()
        first = model.first_order(torch.cat([user, item], 1), multi).double().sum(dim=(1, 2))
        deep = model.mlp(v.float().flatten(1)).double().squeeze(-1)
        out = model(user, item, multi).double()
    pairs = sum(
        (v[:, i] * v[:, j]).sum(-1) for i, j in itertools.combinations(range(v.shape[1]), 2)
    )
    torch.testing.assert_close(
        out, model.bias.double() + first + pairs + deep, rtol=1e-5, atol=1e-6
    )
    assert torch.all(v[0, 1] == 0)
    assert torch.all(v[1, -1] == 0)


def test_multi_valued_field_is_the_mean_of_its_values() -> None:
    torch.manual_seed(0)
    emb = FieldEmbedding([4], [6], [3], dim=2)
    out = emb(torch.tensor([[1]]), torch.tensor([[2, 5, 0]]))
    table = emb.table.weight
    expected = (table[4 + 2] + table[4 + 5]) / 2
    torch.testing.assert_close(out[0, 1], expected)
