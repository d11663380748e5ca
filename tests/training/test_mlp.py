from __future__ import annotations

import torch
from helpers.ctr import make_ctr_model, random_inputs

from recserve.training.models.mlp import MLP


def make_model(**kwargs) -> MLP:
    return make_ctr_model(MLP, **kwargs)  # type: ignore[return-value]


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


def test_dropout_is_active_in_training_only() -> None:
    model = make_model(dropout=0.5)
    inputs = random_inputs(64)
    torch.testing.assert_close(model(*inputs), model(*inputs))
    model.train()
    assert not torch.equal(model(*inputs), model(*inputs))
