"""CFGAN: shapes, TorchScript, seeded golden values, the ZR/PM losses by hand, learnability."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from helpers.sequences import planted_sequences

from recserve.training import gan, topn
from recserve.training.export import script_model
from recserve.training.models import cfgan
from recserve.training.models.cfgan import (
    CFGAN,
    discriminator_loss,
    generator_loss,
    sample_negative_masks,
)
from recserve.training.registry import MODELS

PURCHASES = torch.tensor([[1.0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 1, 1]])


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model() -> CFGAN:
    torch.manual_seed(0)
    return CFGAN(6, generator_hidden=[5], discriminator_hidden=[4, 3]).eval()


def test_docstring_examples() -> None:
    assert doctest.testmod(cfgan).failed == 0


def test_basic() -> None:
    model = _model()
    scores = model(PURCHASES)
    assert torch.equal(scores, model.generator(PURCHASES))
    assert bool(((scores > 0) & (scores < 1)).all())
    probability = model.discriminator(scores, PURCHASES)
    assert torch.allclose(probability, torch.sigmoid(model.discriminator.logits(scores, PURCHASES)))
    assert MODELS["cfgan"].task == "topn" and MODELS["cfgan"].config_type is gan.CFGANConfig
    assert MODELS["cfgan"].headline == MODELS["bpr"].headline


def test_shape() -> None:
    model = _model()
    assert model(PURCHASES).shape == (2, 6)
    assert model.generator(PURCHASES[:1]).shape == (1, 6)
    assert model.discriminator(PURCHASES, PURCHASES).shape == (2,)
    zr, pm = sample_negative_masks(PURCHASES, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert zr.shape == pm.shape == (2, 6) and zr.dtype == torch.float32


def test_script() -> None:
    model = _model()
    scripted = script_model(model.generator)
    assert torch.allclose(scripted(PURCHASES), model(PURCHASES), atol=1e-7)


def test_correctness() -> None:
    golden = [
        [0.4668192, 0.4850897, 0.5474425, 0.6035179, 0.6108312, 0.4293288],
        [0.4538957, 0.4772551, 0.5582930, 0.6203663, 0.6143479, 0.4360642],
    ]
    got = _model()(PURCHASES)
    assert torch.allclose(got, torch.tensor(golden), atol=1e-6)


def test_negative_masks_avoid_purchases_and_follow_rates() -> None:
    purchases = torch.zeros(200, 50)
    purchases[:, :10] = 1.0
    zr, pm = sample_negative_masks(purchases, 0.3, 0.7, torch.Generator().manual_seed(1))
    assert not bool((zr * purchases).any()) and not bool((pm * purchases).any())
    assert zr[:, 10:].mean().item() == pytest.approx(0.3, abs=0.02)
    assert pm[:, 10:].mean().item() == pytest.approx(0.7, abs=0.02)
    none, full = sample_negative_masks(purchases, 0.0, 1.0, torch.Generator().manual_seed(1))
    assert not bool(none.any()) and torch.equal(full, 1.0 - purchases)


def _numpy_discriminator(model: CFGAN, vector: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """D's probability from its weights, in float64 numpy."""
    x = np.concatenate([vector, condition], axis=1).astype(np.float64)
    linears = [m for m in model.discriminator.mlp if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(linears):
        x = x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        if i < len(linears) - 1:
            x = np.maximum(x, 0.0)
    return 1.0 / (1.0 + np.exp(-x[:, 0]))


@pytest.mark.parametrize("non_saturating", [True, False])
def test_losses_match_a_hand_computation(non_saturating: bool) -> None:
    model = _model()
    pm = torch.tensor([[0.0, 1, 0, 0, 1, 0], [1, 0, 0, 0, 0, 0]])
    zr = torch.tensor([[0.0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0]])
    alpha = 0.25
    e = PURCHASES.numpy().astype(np.float64)
    r_hat = model(PURCHASES).detach().double().numpy()
    # partial masking: G's output kept on the purchased items and the PM sample only
    fake = r_hat * (e + pm.numpy())
    assert fake[0].tolist() == pytest.approx(
        [r_hat[0, 0], r_hat[0, 1], r_hat[0, 2], 0, r_hat[0, 4], 0]
    )
    d_fake = _numpy_discriminator(model, fake, e)
    d_real = _numpy_discriminator(model, e, e)
    zero_reconstruction = (r_hat**2 * zr.numpy()).sum(axis=1)
    assert zero_reconstruction[1] == pytest.approx(r_hat[1, 2] ** 2 + r_hat[1, 3] ** 2)
    adversarial = -np.log(d_fake) if non_saturating else np.log(1 - d_fake)
    want_g = np.mean(adversarial + alpha * zero_reconstruction)
    want_d = -np.mean(np.log(d_real) + np.log(1 - d_fake))
    got_g = generator_loss(model, PURCHASES, pm, zr, alpha, non_saturating)
    got_d = discriminator_loss(model, PURCHASES, pm)
    assert got_g.item() == pytest.approx(want_g, rel=1e-5)
    assert got_d.item() == pytest.approx(want_d, rel=1e-5)


def test_losses_train_only_their_own_network() -> None:
    model = _model().train()
    pm = torch.ones(2, 6) - PURCHASES
    discriminator_loss(model, PURCHASES, pm).backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


# -- learnability and the training loop -----------------------------------------------

LEARN = dict(
    epochs=60, patience=20, batch_size=16, generator_hidden=[32], discriminator_hidden=[16],
    generator_learning_rate=1e-2, discriminator_learning_rate=1e-3,
)  # fmt: skip


def test_cfgan_learns_planted_groups() -> None:
    planted = planted_sequences()
    popularity = topn.train_popularity(planted, topn.PopConfig()).metrics["test_ndcg@10"]
    trained = gan.train_cfgan(planted, gan.CFGANConfig(**LEARN))
    assert popularity < 0.15
    assert trained.metrics["test_ndcg@10"] > popularity + 0.3
    assert trained.metrics["test_hr@10"] > 0.8


def test_cfgan_progress_lines_and_determinism() -> None:
    planted = planted_sequences()
    config = gan.CFGANConfig(**{**LEARN, "epochs": 2, "patience": 5})
    lines: list[str] = []
    first = gan.train_cfgan(planted, config, lines.append)
    assert len(lines) == 2
    assert all(w in lines[0] for w in ("G loss", "D loss", "val NDCG@10", "val HR@10"))
    second = gan.train_cfgan(planted, config)
    for key in ("val_ndcg@10", "test_ndcg@10", "test_hr@10"):
        assert first.metrics[key] == second.metrics[key]
    assert first.metrics["epochs"] == 2
    with pytest.raises(ValueError, match="zr_rate"):
        gan.train_cfgan(planted, gan.CFGANConfig(zr_rate=1.5))


def test_evaluation_condition_is_the_stage_history() -> None:
    model = _model()
    score = gan.generator_scorer(model, 6)
    histories = [np.array([0, 2]), np.array([1, 4, 5])]
    got = score(np.array([0, 1]), histories)
    assert np.allclose(got, model(PURCHASES).detach().numpy())
