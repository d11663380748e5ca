from __future__ import annotations

import doctest
import itertools

import pytest
import torch

from recserve.training.export import script_model
from recserve.training.models import deepfm
from recserve.training.models.deepfm import DeepFM, FieldEmbedding

USER, ITEM, MULTI, WIDTHS = [6, 3], [9, 4], [7], [3]


def make_model(**kwargs) -> DeepFM:
    torch.manual_seed(0)
    return DeepFM(USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8, 4], **kwargs).eval()


def random_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    user = torch.stack([torch.randint(0, c, (batch,)) for c in USER], dim=1)
    item = torch.stack([torch.randint(0, c, (batch,)) for c in ITEM], dim=1)
    multi = torch.randint(0, MULTI[0], (batch, WIDTHS[0]))
    return user, item, multi


def test_basic() -> None:
    model = make_model()
    out = model(*random_inputs(4))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("batch", [0, 1, 17])
def test_shape(batch: int) -> None:
    assert make_model()(*random_inputs(batch)).shape == (batch,)


def test_script() -> None:
    model = make_model()
    scripted = script_model(model)
    inputs = random_inputs(33)
    torch.testing.assert_close(scripted(*inputs), model(*inputs))


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


def test_docstring_examples() -> None:
    assert doctest.testmod(deepfm).failed == 0
