"""The ``export`` program format (torch.export ``.pt2``) next to TorchScript: the same
served scores per ranker family, and archives that would unpickle are refused."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch

from recserve.engine.artifact import ArtifactError, load_artifact, save_artifact
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.programs import ProgramError, check_pt2_plain, export_program
from recserve.engine.schema import FeatureSchema
from recserve.training.data import make_synthetic_movielens
from recserve.training.export import export_ranker, script_model
from recserve.training.features import EncodedData, encode_movielens
from recserve.training.trainer import RANKERS, build_ranker


@pytest.fixture(scope="module")
def encoded() -> EncodedData:
    return encode_movielens(make_synthetic_movielens(seed=3))


def _eager_scores(model, tables, user_row: int, item_rows: np.ndarray) -> np.ndarray:
    n = item_rows.size
    with torch.no_grad():
        logits = model(
            torch.from_numpy(tables["user_features"][user_row : user_row + 1]).expand(n, -1),
            torch.from_numpy(tables["item_features"][item_rows]),
            torch.from_numpy(tables["item_multi"][item_rows]),
        ).double()
    return torch.sigmoid(logits).numpy()


@pytest.mark.parametrize("family", list(RANKERS))
def test_exported_program_serves_the_eager_models_scores(
    family: str, encoded: EncodedData, tmp_path: Path
) -> None:
    torch.manual_seed(7)
    model = build_ranker(family, encoded, RANKERS[family].config_type(embedding_dim=8)).eval()
    export_ranker(
        model,
        encoded,
        tmp_path,
        family,
        family=family,
        metrics={},
        config={},
        program_format="export",
    )
    artifact = load_artifact(tmp_path / family / "1")
    assert artifact.program_format == "export"
    assert {p.suffix for p in artifact.path.glob("*.pt*")} == {".pt2"}
    tables = encoded.tables
    rng = np.random.default_rng(0)
    for use_crossing in (False, True):
        pipeline = RankerPipeline(artifact, use_crossing=use_crossing)
        assert (pipeline.crossing is not None) == (use_crossing and "crossing" in artifact.manifest)
        for n in (0, 1, 7, 33, pipeline.num_items):
            rows = rng.choice(pipeline.num_items, size=n, replace=False)
            user = int(rng.integers(pipeline.num_users))
            served = pipeline.score_rows(tables["user_features"][user], rows)
            np.testing.assert_allclose(
                served, _eager_scores(model, tables, user, rows), rtol=1e-5, atol=1e-7
            )


def test_bfloat16_head_runs_on_an_exported_head(encoded: EncodedData, tmp_path: Path) -> None:
    model = build_ranker("deepfm", encoded, RANKERS["deepfm"].config_type(embedding_dim=8))
    export_ranker(
        model.eval(),
        encoded,
        tmp_path,
        "m",
        family="deepfm",
        metrics={},
        config={},
        program_format="export",
    )
    artifact = load_artifact(tmp_path / "m" / "1")
    f32 = RankerPipeline(artifact)
    bf16 = RankerPipeline(artifact, head_dtype="bfloat16")
    user = encoded.tables["user_features"][0]
    np.testing.assert_allclose(bf16.score_rows(user, None), f32.score_rows(user, None), atol=2e-2)


def _small_program() -> torch.export.ExportedProgram:
    return export_program(torch.nn.Linear(3, 1).eval(), (torch.ones(2, 3),), [0])


def _pt2_bytes(program: torch.export.ExportedProgram) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


def _rewrite(data: bytes, suffix: str, edit) -> bytes:
    """The archive with the member ending in ``suffix`` replaced by ``edit(its bytes)``."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            dst.writestr(info, edit(body) if info.filename.endswith(suffix) else body)
    return out.getvalue()


def _pickled_weights(body: bytes) -> bytes:
    config = json.loads(body)
    for entry in config["config"].values():
        entry["use_pickle"] = True
    return json.dumps(config).encode()


def _pickled_sample_inputs(_: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.save({"not a tensor": date(2026, 1, 1)}, buffer)
    return buffer.getvalue()


def test_a_plain_archive_passes_the_check() -> None:
    check_pt2_plain(_pt2_bytes(_small_program()))


@pytest.mark.parametrize(
    ("suffix", "edit", "message"),
    [
        ("model_weights_config.json", _pickled_weights, r"stores 'weight' as a pickled object"),
        ("sample_inputs/model.pt", _pickled_sample_inputs, r"sample_inputs/model\.pt is not plain"),
    ],
)
def test_archives_that_would_unpickle_are_refused(
    suffix: str, edit, message: str, tmp_path: Path
) -> None:
    data = _rewrite(_pt2_bytes(_small_program()), suffix, edit)
    with pytest.raises(ProgramError, match=message):
        check_pt2_plain(data)
    # and through the artifact, checksum updated as a forger would
    version = save_artifact(
        tmp_path,
        "m",
        family="mlp",
        schema=FeatureSchema(()),
        modules={"model": _small_program()},
        tables={},
    )
    (version / "model.pt2").write_bytes(data)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["model.pt2"]["sha256"] = hashlib.sha256(data).hexdigest()
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(version)


def test_a_file_that_is_no_archive_is_refused() -> None:
    with pytest.raises(ProgramError, match=r"not a \.pt2 archive"):
        check_pt2_plain(b"\x80\x04not a zip")


def test_one_version_cannot_mix_program_formats(tmp_path: Path) -> None:
    scripted = script_model(torch.nn.Linear(3, 1))
    with pytest.raises(ArtifactError, match="share one program format"):
        save_artifact(
            tmp_path,
            "m",
            family="mlp",
            schema=FeatureSchema(()),
            modules={"a": scripted, "b": _small_program()},
            tables={},
        )
    assert not (tmp_path / "m" / "1").exists()


def test_a_module_entry_in_another_format_than_the_manifest_is_refused(tmp_path: Path) -> None:
    version = save_artifact(
        tmp_path,
        "m",
        family="mlp",
        schema=FeatureSchema(()),
        modules={"model": _small_program()},
        tables={},
    )
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["program_format"] = "torchscript"
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"model\.pt2 is in program format 'export'"):
        load_artifact(version)


def test_train_writes_an_exported_ranker_that_the_server_answers_with(
    run_recserve, tmp_path: Path
) -> None:
    """`recserve train --program-format export`, then Rank through a live server: the
    answer is the loaded program's own order, and ListModels reports the format."""
    from recserve import Client
    from recserve.server.app import ServeOptions, build_server

    done = run_recserve(
        "train", "--model", "deepfm", "--data", "synthetic", "--epochs", "1",
        "--model-repo", str(tmp_path), "--program-format", "export",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    artifact = load_artifact(tmp_path / "deepfm" / "1")
    assert artifact.program_format == "export"
    pipeline = RankerPipeline(artifact)
    running = build_server(ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1))
    try:
        running.repository.load_all()
        running.set_serving(True)
        user = int(pipeline.user_ids[3])
        candidates = pipeline.item_ids[:50].tolist()
        with Client(f"127.0.0.1:{running.port}", timeout=10) as client:
            (info,), _ = client.list_models()
            answer = client.rank(user, candidates, k=10)
        assert info.program_format == "export"
        expected = pipeline.rank(user, candidates, k=10)
        assert [i.item_id for i in answer.items] == [i.item_id for i in expected.items]
        np.testing.assert_allclose(
            [i.score for i in answer.items], [i.score for i in expected.items], rtol=1e-6
        )
    finally:
        running.stop(0)


def test_train_refuses_the_export_format_for_a_sequence_model(run_recserve, tmp_path) -> None:
    done = run_recserve(
        "train", "--model", "sasrec", "--data", "synthetic", "--model-repo", str(tmp_path),
        "--program-format", "export",
    )  # fmt: skip
    assert done.returncode != 0
    assert "available for the CTR rankers" in done.stderr and "sasrec" in done.stderr
    assert not (tmp_path / "sasrec").exists()


@pytest.mark.slow
def test_a_server_compiles_exported_rankers_with_aoti_on_request(
    encoded: EncodedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--compile-programs aoti: the exported whole program (no crossing block, as a
    packaged ranker is served) and the crossing head are compiled when the model loads;
    the answers keep the exported program's scores within the compiled kernels' rounding,
    and the log says how far they moved. A TorchScript artifact is served as it is."""
    from recserve import Client
    from recserve.server.app import ServeOptions, build_server

    torch.manual_seed(5)
    model = build_ranker("deepfm", encoded, RANKERS["deepfm"].config_type(embedding_dim=8)).eval()
    for name, crossing in (("whole", False), ("crossing", True)):
        export_ranker(
            model, encoded, tmp_path, name, family="deepfm", metrics={}, config={},
            crossing=crossing, program_format="export",
        )  # fmt: skip
    export_ranker(model, encoded, tmp_path, "scripted", family="deepfm", metrics={}, config={})
    plain = {n: RankerPipeline(load_artifact(tmp_path / n / "1")) for n in ("whole", "crossing")}
    running = build_server(
        ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1, compile_programs="aoti")
    )
    try:
        with caplog.at_level("INFO", logger="recserve.server.repository"):
            running.repository.load_all()
        running.set_serving(True)
        compiled = {m.name: m.pipeline.compiled for m in running.repository.served()}
        assert set(compiled["whole"]) == {"model"} and set(compiled["crossing"]) == {"head"}
        assert compiled["scripted"] == {}
        assert all(d < 1e-4 for c in compiled.values() for _, d in c.values()), compiled
        assert "compiled the model program of whole v1 with AOTInductor" in caplog.text
        user = int(plain["whole"].user_ids[2])
        candidates = plain["whole"].item_ids[:40].tolist()
        with Client(f"127.0.0.1:{running.port}", timeout=30) as client:
            for name, pipeline in plain.items():
                answer = client.rank(user, candidates, model=name)
                expected = {i.item_id: i.score for i in pipeline.rank(user, candidates).items}
                got = {i.item_id: i.score for i in answer.items}
                assert got.keys() == expected.keys()
                np.testing.assert_allclose(
                    [got[i] for i in expected], list(expected.values()), rtol=1e-4
                )
    finally:
        running.stop(0)
