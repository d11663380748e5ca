"""AOTInductor compilations stored in an artifact (``recserve package ranker
--aoti-target``, ``recserve train --aoti-target``): written only once checked, verified
like every file, loaded only by ``--compile-programs aoti-stored`` on a machine that runs
them, compiled again at load where they do not fit, and never served when they move
scores."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.programs import eager_scores, spread_weights

from recserve.engine import aoti
from recserve.engine.artifact import ArtifactError, load_artifact, save_artifact
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.programs import export_program
from recserve.engine.schema import FeatureSchema
from recserve.training.data import make_synthetic_movielens
from recserve.training.export import export_ranker, script_model
from recserve.training.features import EncodedData, encode_movielens
from recserve.training.trainer import RANKERS, build_ranker

TARGET = "x86-64-v3"  # AVX2: every machine this project runs on


@pytest.fixture(scope="module")
def encoded() -> EncodedData:
    return encode_movielens(make_synthetic_movielens(seed=3))


@pytest.fixture(scope="module")
def stored(encoded: EncodedData, tmp_path_factory: pytest.TempPathFactory):
    """A DeepFM (weights spread like a trained one's) exported with its crossing block,
    both programs also stored compiled for TARGET; the model and the version."""
    torch.manual_seed(5)
    config = RANKERS["deepfm"].config_type(embedding_dim=8)
    model = spread_weights(build_ranker("deepfm", encoded, config)).eval()
    repo = tmp_path_factory.mktemp("repo")
    version = export_ranker(
        model, encoded, repo, "deepfm", family="deepfm", metrics={}, config={},
        program_format="export", aoti_target=TARGET,
    )  # fmt: skip
    return model, version


def _served_scores_match(pipeline: RankerPipeline, model, tables) -> None:
    rng = np.random.default_rng(2)
    for n in (1, 7, 33, pipeline.num_items):
        rows = rng.choice(pipeline.num_items, size=n, replace=False)
        user = int(rng.integers(pipeline.num_users))
        served = pipeline.score_rows(tables["user_features"][user], rows)
        np.testing.assert_allclose(
            served, eager_scores(model, tables, user, rows), rtol=1e-5, atol=1e-7
        )


@pytest.mark.slow
def test_stored_compilations_serve_both_paths_without_compiling(stored, encoded) -> None:
    model, version = stored
    manifest = json.loads((version / "manifest.json").read_text())
    entries = {n: e for n, e in manifest["files"].items() if e["kind"] == "compiled"}
    assert set(entries) == {"model.aoti.pt2", "head.aoti.pt2"}
    assert all(
        (e["target"], e["torch"], e["compiler"]) == (TARGET, torch.__version__, "aotinductor")
        for e in entries.values()
    )
    artifact = load_artifact(version)
    for use_crossing, key in ((True, "head"), (False, "model")):
        pipeline = RankerPipeline(
            artifact, use_crossing=use_crossing, compile_programs="aoti-stored"
        )
        compiled = pipeline.compiled[key]
        assert compiled.how == f"stored compilation for {TARGET}" and compiled.served
        assert compiled.difference <= aoti.SCORE_TOLERANCE
        _served_scores_match(pipeline, model, encoded.tables)


def _exported_scores(version: Path, encoded: EncodedData) -> np.ndarray:
    """The uncompiled whole program's scores of user row 2 against every item."""
    pipeline = RankerPipeline(load_artifact(version), use_crossing=False)
    return pipeline.score_rows(encoded.tables["user_features"][2], None)


@pytest.mark.slow
def test_a_stored_compilation_for_a_level_this_cpu_lacks_is_compiled_at_load(
    stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling at load itself is tested in test_program_formats.py; here it hands back
    the exported program, and the test checks what fell back and why."""
    compiled_at_load = []

    def compile_here(program: torch.export.ExportedProgram) -> torch.nn.Module:
        compiled_at_load.append(program)
        return program.module()

    monkeypatch.setattr(aoti, "compile_aoti", compile_here)
    monkeypatch.setattr(aoti, "cpu_flags", lambda: frozenset({"sse2"}))
    artifact = load_artifact(stored[1])
    pipeline = RankerPipeline(artifact, use_crossing=False, compile_programs="aoti-stored")
    assert pipeline.compiled["model"].how.startswith(
        "compiled at load; its stored compilation does not fit: this CPU lacks abm, avx, avx2"
    )
    assert compiled_at_load == [artifact.exported["model"]]


class _Shifted(torch.nn.Module):
    """A compiled program gone wrong: the program's logits, all moved by 0.01."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        super().__init__()
        self.module = program.module()

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs) + 0.01


def _moves_scores(monkeypatch: pytest.MonkeyPatch, program) -> str:
    monkeypatch.setattr(aoti, "load_package", lambda data: _Shifted(program))
    return f"stored compilation for {TARGET}"


def _fails_to_load(monkeypatch: pytest.MonkeyPatch, program) -> str:
    def fails(data: bytes) -> None:
        raise RuntimeError("libmissing.so: cannot open shared object file\n(more)")

    monkeypatch.setattr(aoti, "load_package", fails)
    return f"stored compilation for {TARGET}, failed: libmissing.so: cannot open shared object file"


@pytest.mark.slow
@pytest.mark.parametrize("fault", [_moves_scores, _fails_to_load], ids=["moves", "fails"])
def test_a_compilation_that_moves_scores_or_fails_is_not_served(
    stored, encoded, monkeypatch: pytest.MonkeyPatch, fault
) -> None:
    """The version still serves, by its exported program, bit for bit."""
    artifact = load_artifact(stored[1])
    how = fault(monkeypatch, artifact.exported["model"])
    pipeline = RankerPipeline(artifact, use_crossing=False, compile_programs="aoti-stored")
    assert pipeline.compiled["model"].how == how
    assert not pipeline.compiled["model"].served
    served = pipeline.score_rows(encoded.tables["user_features"][2], None)
    assert np.array_equal(served, _exported_scores(stored[1], encoded))


def test_unfit_reasons_name_the_torch_and_the_missing_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    level = aoti.AOTI_TARGETS[TARGET].cpu_flags
    monkeypatch.setattr(aoti, "cpu_flags", lambda: level)
    assert aoti.unfit_reason(TARGET, torch.__version__) is None
    monkeypatch.setattr(aoti, "cpu_flags", lambda: level - {"avx2", "fma"})
    assert aoti.unfit_reason(TARGET, torch.__version__) == (
        "this CPU lacks avx2, fma (needed by x86-64-v3)"
    )
    assert aoti.unfit_reason(TARGET, "2.0.0") == (
        f"it was built with torch 2.0.0, this is torch {torch.__version__}"
    )
    assert "does not know" in aoti.unfit_reason("x86-64-v4", torch.__version__)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "aoti"])
def test_without_aoti_stored_the_native_code_is_never_loaded(
    stored, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    def refuse(data: bytes) -> None:
        raise AssertionError("a stored compilation was loaded")

    monkeypatch.setattr(aoti, "load_package", refuse)
    monkeypatch.setattr(aoti, "compile_aoti", lambda program: program.module())
    pipeline = RankerPipeline(load_artifact(stored[1]), use_crossing=False, compile_programs=mode)
    hows = {key: c.how for key, c in pipeline.compiled.items()}
    assert hows == ({} if mode == "none" else {"model": "compiled at load"})


@pytest.mark.slow
def test_a_stored_compilation_altered_after_loading_is_refused(stored, tmp_path: Path) -> None:
    version = tmp_path / "deepfm" / "1"
    shutil.copytree(stored[1], version)
    artifact = load_artifact(version)
    data = bytearray((version / "model.aoti.pt2").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (version / "model.aoti.pt2").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model\.aoti\.pt2: checksum mismatch"):
        RankerPipeline(artifact, use_crossing=False, compile_programs="aoti-stored")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for model\.aoti\.pt2"):
        load_artifact(version)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("key", "tower", r"no torch\.export program 'tower'"),
        ("target", None, r"model\.aoti\.pt2 does not say which target and torch"),
        ("torch", None, r"model\.aoti\.pt2 does not say which target and torch"),
    ],
)
def test_a_compiled_entry_that_cannot_be_checked_refuses_the_version(
    stored, tmp_path: Path, field: str, value, message: str
) -> None:
    version = tmp_path / "deepfm" / "1"
    shutil.copytree(stored[1], version)
    manifest = json.loads((version / "manifest.json").read_text())
    entry = manifest["files"]["model.aoti.pt2"]
    if value is None:
        del entry[field]
    else:
        entry[field] = value
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(version)


def _linear() -> torch.export.ExportedProgram:
    torch.manual_seed(0)
    return export_program(torch.nn.Linear(3, 1).eval(), (torch.randn(4, 3),), [0])


@pytest.mark.parametrize(
    ("modules", "target", "message"),
    [
        (lambda: {"model": _linear()}, "armv9", "target 'armv9' is not supported"),
        (
            lambda: {"model": script_model(torch.nn.Linear(3, 1))},
            TARGET,
            r"AOTInductor compiles torch\.export programs; these programs are TorchScript",
        ),
    ],
    ids=["unknown target", "torchscript"],
)
def test_compilations_that_cannot_be_made_are_refused_before_writing(
    tmp_path: Path, modules, target: str, message: str
) -> None:
    with pytest.raises(ArtifactError, match=message):
        save_artifact(
            tmp_path, "m", family="mlp", schema=FeatureSchema(()), modules=modules(),
            tables={}, compile_for=target, compiled_keys=("model",),
        )  # fmt: skip
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.parametrize(
    ("lacking", "reason"),
    [
        ("cpu_flags", "this CPU lacks abm"),
        ("compiler_missing", "AOTInductor finds no C++ compiler"),
    ],
)
def test_a_compilation_this_machine_cannot_make_or_run_is_refused_before_compiling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lacking: str, reason: str
) -> None:
    if lacking == "cpu_flags":
        monkeypatch.setattr(aoti, "cpu_flags", lambda: frozenset())
    else:
        monkeypatch.setattr(aoti, "compiler_missing", lambda: f"{reason} (none found)")
    expected = f"cannot make and check a compilation for x86-64-v3 on this machine: {reason}"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        save_artifact(
            tmp_path, "m", family="mlp", schema=FeatureSchema(()), modules={"model": _linear()},
            tables={}, compile_for=TARGET, compiled_keys=("model",),
        )  # fmt: skip
    assert list(tmp_path.rglob("*")) == []


def test_a_compilation_that_moves_scores_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check on the example inputs is what refuses (the compiler stubbed, and the
    check's result made too large: no real compilation should move them)."""
    monkeypatch.setattr(
        aoti, "compile_package", lambda program, path, target: path.write_bytes(b"so")
    )
    monkeypatch.setattr(aoti, "package_difference", lambda path, program: 3e-4)
    with pytest.raises(ArtifactError, match=r"moved scores by 3\.0e-04 relative"):
        save_artifact(
            tmp_path, "m", family="mlp", schema=FeatureSchema(()), modules={"model": _linear()},
            tables={}, compile_for=TARGET, compiled_keys=("model",),
        )  # fmt: skip
    assert list(tmp_path.rglob("*")) == []


def test_train_refuses_an_aoti_target_before_training(run_recserve, tmp_path: Path) -> None:
    base = ("train", "--data", "synthetic", "--epochs", "1", "--model-repo", str(tmp_path))
    for args, message in (
        (("--model", "deepfm", "--aoti-target", TARGET), "add --program-format export"),
        (
            ("--model", "sasrec", "--program-format", "export", "--aoti-target", TARGET),
            "sasrec is a top-N model",
        ),
    ):
        done = run_recserve(*base, *args)
        assert done.returncode != 0 and message in done.stderr, done.stderr
        assert "training" not in done.stderr
    assert list(tmp_path.rglob("*")) == []


@pytest.mark.slow
def test_train_stores_a_compilation_of_the_rankers_program(run_recserve, tmp_path: Path) -> None:
    """An MLP: its one program (no crossing block) compiled, stored, and served."""
    done = run_recserve(
        "train", "--model", "mlp", "--data", "synthetic", "--epochs", "1",
        "--model-repo", str(tmp_path), "--program-format", "export", "--aoti-target", TARGET,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    artifact = load_artifact(tmp_path / "mlp" / "1")
    assert {key: c.target for key, c in artifact.compiled.items()} == {"model": TARGET}
    pipeline = RankerPipeline(artifact, compile_programs="aoti-stored")
    assert pipeline.compiled["model"].how == f"stored compilation for {TARGET}"
    assert pipeline.compiled["model"].served
