from __future__ import annotations

import doctest

import pytest
import torch

from recserve.training.export import script_model
from recserve.training.models import dcnv2
from recserve.training.models.dcnv2 import CrossNet, DCNv2

USER, ITEM, MULTI, WIDTHS = [6, 3], [9, 4], [7], [3]
GOLDEN = [0.469282, 0.508201, 0.490116]


def make_model(**kwargs) -> DCNv2:
    torch.manual_seed(0)
    return DCNv2(
        USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8, 4], cross_layers=3, **kwargs
    ).eval()


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
    """x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l, then the MLP, recomputed in float64."""
    model = make_model()
    torch.manual_seed(1)
    for bias in model.cross.bias:
        torch.nn.init.normal_(bias)
    user, item, multi = random_inputs(6)
    user[0, 1] = 0
    with torch.no_grad():
        x0 = model.embedding(torch.cat([user, item], 1), multi).double().flatten(1)
        x = x0
        for kernel, bias in zip(model.cross.kernels, model.cross.bias, strict=True):
            w, b = kernel.double(), bias.double()
            x = torch.stack([x0[r] * (w @ x[r] + b) + x[r] for r in range(x.shape[0])])
        linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(linears):
            x = x @ layer.weight.double().t() + layer.bias.double()
            if i < len(linears) - 1:
                x = x.clamp(min=0)
        out = model(user, item, multi).double()
    torch.testing.assert_close(out, x.squeeze(-1), rtol=1e-5, atol=1e-6)


def test_cross_layer_degree() -> None:
    """With W = 0 and b = 1 each layer adds x_0: x_l = (l + 1) x_0 after l layers."""
    cross = CrossNet(4, num_layers=3)
    with torch.no_grad():
        for kernel, bias in zip(cross.kernels, cross.bias, strict=True):
            kernel.zero_()
            bias.fill_(1.0)
    x0 = torch.randn(2, 4)
    torch.testing.assert_close(cross(x0), 4 * x0)


def test_without_cross_layers_is_an_mlp() -> None:
    torch.manual_seed(0)
    plain = DCNv2(USER, ITEM, MULTI, WIDTHS, embedding_dim=5, hidden=[8], cross_layers=0).eval()
    user, item, multi = random_inputs(5)
    with torch.no_grad():
        x = plain.embedding(torch.cat([user, item], 1), multi).flatten(1)
        torch.testing.assert_close(plain(user, item, multi), plain.mlp(x).squeeze(-1))


def test_correctness_golden_values() -> None:
    model = make_model()
    torch.manual_seed(3)
    torch.nn.init.normal_(model.embedding.table.weight)  # spread the outputs apart
    inputs = random_inputs(3)
    expected = torch.tensor(GOLDEN)
    torch.testing.assert_close(model(*inputs), expected, rtol=0, atol=1e-5)


def test_learns_beyond_popularity(learnability) -> None:
    model_auc, baseline_auc = learnability("dcnv2")
    assert model_auc > baseline_auc + 0.05


def test_docstring_examples() -> None:
    assert doctest.testmod(dcnv2).failed == 0
