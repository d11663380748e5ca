"""What every CTR ranker family must do, checked once per family: a finite float32 logit
per row for any batch size (0 and 1 included), the same answers once scripted for
serving, fixed golden values, learning beyond item popularity, and working docstring
examples. Each family's own arithmetic is checked against a reference in its file."""

from __future__ import annotations

import doctest
from types import ModuleType
from typing import Any

import pytest
import torch
from helpers.ctr import make_ctr_model, random_inputs

from recserve.training.export import script_model
from recserve.training.models import dcnv2, deepfm, mlp, wide_deep

# family -> (module, model class, extra constructor arguments)
FAMILIES: dict[str, tuple[ModuleType, type[torch.nn.Module], dict[str, Any]]] = {
    "deepfm": (deepfm, deepfm.DeepFM, {}),
    "wide_deep": (wide_deep, wide_deep.WideDeep, {}),
    "dcnv2": (dcnv2, dcnv2.DCNv2, {"cross_layers": 3}),
    "mlp": (mlp, mlp.MLP, {}),
}
# Outputs on 3 fixed rows with every embedding table re-drawn from N(0, 1), seed 3.
GOLDEN = {
    "wide_deep": [-2.599607, -1.791676, -3.402762],
    "dcnv2": [0.469282, 0.508201, 0.490116],
    "mlp": [0.498174, 0.47925, 0.543014],
}


def make(family: str) -> torch.nn.Module:
    _, model_type, extra = FAMILIES[family]
    return make_ctr_model(model_type, **extra)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_finite_float32_logit_per_row(family: str) -> None:
    out = make(family)(*random_inputs(4))
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("batch", [0, 1, 17])
@pytest.mark.parametrize("family", FAMILIES)
def test_shape(family: str, batch: int) -> None:
    assert make(family)(*random_inputs(batch)).shape == (batch,)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_scripted_model_answers_the_same(family: str) -> None:
    model = make(family)
    scripted = script_model(model)
    inputs = random_inputs(33)
    torch.testing.assert_close(scripted(*inputs), model(*inputs))


@pytest.mark.parametrize("family", GOLDEN)
def test_golden_values(family: str) -> None:
    model = make(family)
    torch.manual_seed(3)
    tables = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    for table in tables:  # spread the outputs apart
        torch.nn.init.normal_(table)
    expected = torch.tensor(GOLDEN[family])
    torch.testing.assert_close(model(*random_inputs(3)), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["wide_deep", "dcnv2", "mlp"])
def test_learns_beyond_popularity(learnability, family: str) -> None:
    model_auc, baseline_auc = learnability(family)
    assert model_auc > baseline_auc + 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_docstring_examples(family: str) -> None:
    assert doctest.testmod(FAMILIES[family][0]).failed == 0
