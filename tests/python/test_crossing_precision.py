"""The opt-in bfloat16 and int8 heads of the crossing path: scores near float32, the
artifact untouched, the served AUC of a test split (training.ranker.served_auc) and, for
int8, a row's logit independent of the other rows of the call."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from recserve.engine.artifact import load_artifact
from recserve.engine.batch_plan import HeadRows, run_head_rows
from recserve.engine.dispatch import make_pipeline
from recserve.engine.int8_head import check_int8_support, eager_head, quantize_head
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.programs import torchscript_deprecation_silenced
from recserve.training.data.movielens import load_movielens_100k
from recserve.training.features import encode_movielens, random_split
from recserve.training.models.dcnv2 import CrossHead
from recserve.training.ranker import TrainedRanker, served_auc
from recserve.training.trainer import RankerInputs, evaluate

ROOT = Path(__file__).parents[2]
# int8 logits against float32: |diff| <= INT8_ATOL + INT8_RTOL |float32|. Measured at most
# 0.019 (1 + |float32|) on these heads' random rows; on the ML-100k DeepFM's 10,000 test rows
# |diff| <= 0.021 (probabilities 0.004).
INT8_ATOL = INT8_RTOL = 0.05
INT8_SCORE_ATOL = 0.02  # probabilities (served scores)
ROW_COUNTS = [0, 1, 47, 1000]


@pytest.fixture
def artifact(trained_ranker: TrainedRanker, tmp_path: Path):
    return load_artifact(trained_ranker.export(tmp_path, "deepfm", "synthetic"))


def test_bfloat16_head_scores_close_to_float32(artifact) -> None:
    f32 = RankerPipeline(artifact)
    bf16 = make_pipeline(artifact, head_dtype="bfloat16")
    assert isinstance(bf16, RankerPipeline) and bf16.head_dtype == "bfloat16"
    user = f32.user_features[3]
    expected = f32.score_rows(user, None)
    got = bf16.score_rows(user, None)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=2e-2)  # bfloat16: 8 significant bits
    assert not np.array_equal(got, expected)  # the head did run in bfloat16
    # The artifact's head (shared by other pipelines) stays float32.
    assert all(p.dtype == torch.float32 for p in artifact.crossing.head.parameters())
    np.testing.assert_array_equal(f32.score_rows(user, None), expected)


def test_bad_head_dtype_and_no_crossing(artifact) -> None:
    with pytest.raises(ValueError, match="head dtype 'float16' is not supported"):
        RankerPipeline(artifact, head_dtype="float16")
    plain = RankerPipeline(artifact, use_crossing=False, head_dtype="bfloat16")
    assert plain.crossing is None and plain.head_dtype == "float32"


def test_served_auc_equals_the_trainers_auc(artifact, trained_ranker: TrainedRanker) -> None:
    encoded = trained_ranker.encoded
    test_rows = random_split(encoded.labels.size, trained_ranker.config.seed)[2]
    expected = evaluate(trained_ranker.model, RankerInputs(encoded), test_rows)["auc"]
    assert served_auc(artifact, encoded, test_rows) == pytest.approx(expected, abs=1e-6)
    bf16 = served_auc(artifact, encoded, test_rows, "bfloat16")
    assert abs(bf16 - expected) < 0.01


def test_user_table_width_must_match_the_crossing_block(artifact) -> None:
    import dataclasses

    from recserve.engine.crossing import crossing_from_artifact

    users = artifact.tables["user_features"]
    wider = np.zeros((users.shape[0], users.shape[1] + 1), dtype=np.int64)
    broken = dataclasses.replace(artifact, tables={**artifact.tables, "user_features": wider})
    with pytest.raises(ValueError, match="user_features has 5 columns, the crossing block 4"):
        crossing_from_artifact(broken)


# --- int8 -------------------------------------------------------------------------------


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    """``module`` as TorchScript, initialised as the trainer does (Linear: PyTorch's default,
    cross kernels: Xavier normal), with biases not zero."""
    torch.manual_seed(0)
    for name, p in module.named_parameters():
        if name.startswith("kernels."):
            nn.init.xavier_normal_(p)
        elif p.ndim == 1:
            nn.init.normal_(p, std=0.1)
    return script(module.eval())


def script(module: nn.Module) -> torch.jit.ScriptModule:
    with torchscript_deprecation_silenced():
        return torch.jit.script(module)


def stack_head() -> torch.jit.ScriptModule:
    """A DeepFM / Wide&Deep head: the MLP after the first ReLU."""
    return scripted(
        nn.Sequential(
            nn.Linear(32, 24), nn.ReLU(), nn.Dropout(0.2), nn.Linear(24, 16), nn.ReLU(),
            nn.Linear(16, 1),
        )
    )  # fmt: skip


def cross_head() -> torch.jit.ScriptModule:
    """A DCN-v2 head: two more cross layers (float32), then the MLP."""
    kernels = [nn.Parameter(torch.empty(24, 24)) for _ in range(2)]
    biases = [nn.Parameter(torch.empty(24)) for _ in range(2)]
    mlp = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    return scripted(CrossHead(kernels, biases, mlp))


def fresh_rows(n: int, width: int, inputs: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed)
    rows = [
        torch.from_numpy(rng.standard_normal((n, width), dtype=np.float32)) for _ in range(inputs)
    ]
    return [r.relu() for r in rows] if inputs == 1 else rows  # a ReLU feeds a stack head


@pytest.mark.parametrize("n", ROW_COUNTS)
@pytest.mark.parametrize("kind", ["stack", "cross"])
def test_int8_head_close_to_float32_on_fresh_rows(kind: str, n: int) -> None:
    program, width, inputs = (stack_head(), 32, 1) if kind == "stack" else (cross_head(), 24, 2)
    int8 = quantize_head(program, nonnegative_input=kind == "stack")
    rows = fresh_rows(n, width, inputs, seed=n)
    with torch.inference_mode():
        expected, got = program(*rows).reshape(-1), int8(*rows).reshape(-1)
    assert got.dtype == torch.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, expected, rtol=INT8_RTOL, atol=INT8_ATOL)
    if n:
        assert not torch.equal(got, expected)  # the products did run in int8


@pytest.mark.parametrize("n", ROW_COUNTS)
def test_int8_pipeline_scores_close_to_float32(artifact, n: int) -> None:
    f32 = RankerPipeline(artifact)
    int8 = make_pipeline(artifact, head_dtype="int8")
    assert isinstance(int8, RankerPipeline) and int8.head_dtype == "int8"
    user = f32.user_features[3]
    items = np.random.default_rng(n).choice(f32.num_items, n)  # repeats: n > the catalog
    expected, got = f32.score_rows(user, items), int8.score_rows(user, items)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=INT8_SCORE_ATOL)
    # The artifact's head (shared by other pipelines) stays float32 and unchanged.
    assert artifact.crossing.head is f32.crossing.head
    assert all(p.dtype == torch.float32 for p in artifact.crossing.head.parameters())
    np.testing.assert_array_equal(f32.score_rows(user, items), expected)


@pytest.mark.parametrize("kind", ["stack", "cross"])
def test_int8_row_logits_do_not_depend_on_the_other_rows(kind: str) -> None:
    """Bit for bit: requests of many sizes batched together equal each alone (through the
    batch plan's padding, recserve.engine.batch_plan). Unpadded too for a stack of Linear layers:
    each row alone and in any call; a DCN-v2 head's float32 cross layers need the padding
    (their GEMM rounds by row count), as they do in float32."""
    program, width, inputs = (stack_head(), 32, 1) if kind == "stack" else (cross_head(), 24, 2)
    int8 = quantize_head(program, nonnegative_input=kind == "stack")
    rows = fresh_rows(1000, width, inputs, seed=7)
    rows[0][5:9] *= 1e3  # rows far larger than the others: a shared scale would show it

    def head(*x: torch.Tensor) -> torch.Tensor:
        return int8(*x).reshape(-1)

    sizes = np.random.default_rng(1).integers(1, 150, size=40)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) % 800
    works = [
        HeadRows(tuple(r[s : s + n] for r in rows)) for s, n in zip(starts, sizes, strict=True)
    ]
    batched = run_head_rows(head, works)
    for work, logits in zip(works, batched, strict=True):
        assert torch.equal(run_head_rows(head, [work])[0], logits)
    if kind == "cross":
        return
    with torch.inference_mode():
        together = head(*rows)
        for i in [*range(10), 47, 999]:
            assert torch.equal(head(*(r[i : i + 1] for r in rows)), together[i : i + 1])
        assert torch.equal(head(*(r[:47] for r in rows)), together[:47])
        for work, logits in zip(works, batched, strict=True):
            assert torch.equal(head(*work.inputs), logits)


def test_int8_served_auc_near_float32(artifact, trained_ranker: TrainedRanker) -> None:
    encoded = trained_ranker.encoded
    test_rows = random_split(encoded.labels.size, trained_ranker.config.seed)[2]
    expected = served_auc(artifact, encoded, test_rows)
    assert abs(served_auc(artifact, encoded, test_rows, "int8") - expected) < 0.01


@pytest.mark.skipif(
    not (ROOT / "model-repo/deepfm/1").is_dir() or not (ROOT / "data/ml-100k").is_dir(),
    reason="needs `recserve train --model deepfm --data ml-100k` in model-repo/ (not committed)",
)
def test_int8_auc_on_movielens_100k_within_0_002() -> None:
    artifact = load_artifact(ROOT / "model-repo/deepfm/1")
    config = artifact.manifest["config"]
    encoded = encode_movielens(
        load_movielens_100k(ROOT / "data/ml-100k"), config["positive_rating"]
    )
    test_rows = random_split(encoded.labels.size, config["seed"])[2]
    expected = served_auc(artifact, encoded, test_rows)
    assert expected == pytest.approx(artifact.metrics["test_auc"], abs=1e-6)  # the same rows
    assert abs(served_auc(artifact, encoded, test_rows, "int8") - expected) < 0.002


def test_int8_head_refuses_what_it_cannot_read() -> None:
    tanh = script(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 1)))
    with pytest.raises(ValueError, match="layer '1' is a Tanh"):
        eager_head(tanh)

    class Sequential(nn.Sequential):  # the name of a stack, another forward
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self[0](x) + x.sum(dim=1, keepdim=True)

    with pytest.raises(ValueError, match="does not compute what its layers suggest"):
        eager_head(script(Sequential(nn.Linear(4, 1))))

    class Other(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(ValueError, match="this head is a Other"):
        eager_head(script(Other()))


def test_int8_needs_onednn_and_the_cpu(artifact, monkeypatch: pytest.MonkeyPatch) -> None:
    check_int8_support()
    with monkeypatch.context() as patch:
        patch.setattr(torch.backends.mkldnn, "enabled", False)
        with pytest.raises(RuntimeError, match="needs oneDNN, which is disabled"):
            quantize_head(stack_head())
    assert torch.backends.mkldnn.enabled
    with pytest.raises(ValueError, match="the int8 head runs on the CPU only"):
        make_pipeline(artifact, head_dtype="int8", device="cuda")
    plain = RankerPipeline(artifact, use_crossing=False, head_dtype="int8")
    assert plain.crossing is None and plain.head_dtype == "float32"
