from __future__ import annotations

import torch
from helpers.ctr import ITEM, MULTI, USER, WIDTHS, make_ctr_model, random_inputs

from recserve.training.models.dcnv2 import CrossNet, DCNv2


def make_model(**kwargs) -> DCNv2:
    return make_ctr_model(DCNv2, cross_layers=3, **kwargs)  # type: ignore[return-value]


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
