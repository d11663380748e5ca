from __future__ import annotations

import doctest

import pytest
import torch

from recserve.training.export import script_model
from recserve.training.models import mlp
from recserve.training.models.mlp import MLP

USER, ITEM, MULTI, WIDTHS = [6, 3], [9, 4], [7], [3]
GOLDEN = [0.498174, 0.47925, 0.543014]


def make_model(**kwargs) -> MLP:
    torch.manual_seed(0)
    return MLP(USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8, 4], **kwargs).eval()


def random_inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    user = torch.stack([torch.randint(0, c, (batch,)) for c in USER], dim=1)
    item = torch.stack([torch.randint(0, c, (batch,)) for c in ITEM], dim=1)
    multi = torch.randint(0, MULTI[0], (batch, WIDTHS[0]))
    return user, item, multi


def test_basic() -> None:
    out = make_model()(*random_inputs(4))
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


def test_correctness_against_float64_reference() -> None:
    """logit = W3 relu(W2 relu(W1 [v_1..v_F] + b1) + b2) + b3, in float64."""
    model = make_model()
    torch.manual_seed(1)
    user, item, multi = random_inputs(6)
    user[0, 1] = 0  # an unknown field contributes a zero vector
    with torch.no_grad():
        x = model.embedding(torch.cat([user, item], 1), multi).double().flatten(1)
        linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(linears):
            x = x @ layer.weight.double().t() + layer.bias.double()
            if i < len(linears) - 1:
                x = x.clamp(min=0)
        out = model(user, item, multi).double()
    torch.testing.assert_close(out, x.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_correctness_golden_values() -> None:
    model = make_model()
    torch.manual_seed(3)
    torch.nn.init.normal_(model.embedding.table.weight)  # spread the outputs apart
    inputs = random_inputs(3)
    expected = torch.tensor(GOLDEN)
    torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=1e-5)


def test_dropout_is_active_in_training_only() -> None:
    model = make_model(dropout=0.5)
    inputs = random_inputs(64)
    torch.testing.assert_close(model(*inputs), model(*inputs))
    model.train()
    assert not torch.equal(model(*inputs), model(*inputs))


def test_learns_beyond_popularity(learnability) -> None:
    model_auc, baseline_auc = learnability("mlp")
    assert model_auc > baseline_auc + 0.05


def test_docstring_examples() -> None:
    assert doctest.testmod(mlp).failed == 0
