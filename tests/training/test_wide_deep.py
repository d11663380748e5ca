from __future__ import annotations

import doctest

import pytest
import torch

from recserve.training.export import script_model
from recserve.training.models import wide_deep
from recserve.training.models.wide_deep import WideDeep

USER, ITEM, MULTI, WIDTHS = [6, 3], [9, 4], [7], [3]
GOLDEN = [-2.599607, -1.791676, -3.402762]


def make_model(**kwargs) -> WideDeep:
    torch.manual_seed(0)
    return WideDeep(USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8, 4], **kwargs).eval()


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
    """logit = b + Σ_f w_f + MLP([v_1..v_F]), the MLP recomputed in float64."""
    model = make_model()
    torch.manual_seed(1)
    torch.nn.init.normal_(model.wide.table.weight)
    user, item, multi = random_inputs(6)
    user[0, 1] = 0  # an unknown field: no weight, zero vector
    multi[1] = 0  # no genres at all
    single = torch.cat([user, item], 1)
    with torch.no_grad():
        x = model.embedding(single, multi).double().flatten(1)
        linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(linears):
            x = x @ layer.weight.double().t() + layer.bias.double()
            if i < len(linears) - 1:
                x = x.clamp(min=0)
        w = model.wide.table.weight.double()[:, 0]
        wide = torch.zeros(6, dtype=torch.float64)
        offsets = model.wide.single_offsets
        for b in range(6):
            wide[b] = sum(w[single[b, f] + offsets[f]] for f in range(4) if single[b, f] > 0)
            genres = [g for g in multi[b].tolist() if g > 0]
            if genres:
                wide[b] += sum(w[g + model.wide.multi_offsets[0]] for g in genres) / len(genres)
        out = model(user, item, multi).double()
    expected = model.bias.double() + wide + x.squeeze(-1)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_correctness_golden_values() -> None:
    model = make_model()
    torch.manual_seed(3)
    torch.nn.init.normal_(model.embedding.table.weight)
    torch.nn.init.normal_(model.wide.table.weight)  # spread the outputs apart
    inputs = random_inputs(3)
    expected = torch.tensor(GOLDEN)
    torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=1e-5)


def test_learns_beyond_popularity(learnability) -> None:
    model_auc, baseline_auc = learnability("wide_deep")
    assert model_auc > baseline_auc + 0.05


def test_docstring_examples() -> None:
    assert doctest.testmod(wide_deep).failed == 0
