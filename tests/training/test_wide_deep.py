from __future__ import annotations

import torch
from helpers.ctr import make_ctr_model, random_inputs

from recserve.training.models.wide_deep import WideDeep


def make_model(**kwargs) -> WideDeep:
    return make_ctr_model(WideDeep, **kwargs)  # type: ignore[return-value]


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
