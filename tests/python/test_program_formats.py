"""The ``export`` program format (torch.export ``.pt2``) next to TorchScript: the same
served scores for every family with a program (the four rankers, GRU4Rec, LSTM, SASRec,
CFGAN, DIN), archives that would unpickle refused, and AOTInductor on request."""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.programs import eager_scores, spread_weights

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
                served, eager_scores(model, tables, user, rows), rtol=1e-5, atol=1e-7
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


def _small_version(repo: Path) -> Path:
    """A version whose one program is ``_small_program``, in the export format."""
    modules = {"model": _small_program()}
    return save_artifact(
        repo, "m", family="mlp", schema=FeatureSchema(()), modules=modules, tables={}
    )


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
    version = _small_version(tmp_path)
    (version / "model.pt2").write_bytes(data)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["model.pt2"]["sha256"] = hashlib.sha256(data).hexdigest()
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=message):
        load_artifact(version)


def _with_entry(data: bytes, name: str, body: bytes, first: bool = False) -> bytes:
    """The archive with one more entry (before the others when ``first``)."""
    out = io.BytesIO()
    with (
        warnings.catch_warnings(),  # zipfile warns of a duplicate name: the point here
        zipfile.ZipFile(io.BytesIO(data)) as src,
        zipfile.ZipFile(out, "w") as dst,
    ):
        warnings.simplefilter("ignore", UserWarning)
        if first:
            dst.writestr(name, body)
        for info in src.infolist():
            dst.writestr(info, src.read(info.filename))
        if not first:
            dst.writestr(name, body)
    return out.getvalue()


def _without(data: bytes, suffix: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith(suffix):
                dst.writestr(info, src.read(info.filename))
    return out.getvalue()


def test_archives_outside_the_plain_layout_are_refused() -> None:
    """What torch.export.load would also read: a legacy layout (no archive_format, with a
    pickled state dict beside it), a second entry of one name (zip readers disagree on
    which counts), compiled code, entries outside the one root folder."""
    data = _pt2_bytes(_small_program())
    root = zipfile.ZipFile(io.BytesIO(data)).namelist()[0].split("/")[0]
    pickled = io.BytesIO()
    torch.save({"weight": torch.ones(1)}, pickled)
    config = f"{root}/data/weights/model_weights_config.json"
    cases = {
        "has no archive_format": _without(data, "archive_format"),
        "names an entry twice": _with_entry(data, config, b'{"config": {}}', first=True),
        "aotinductor": _with_entry(data, f"{root}/data/aotinductor/model/model.so", b"\x7fELF"),
        "must hold one folder": _with_entry(data, "serialized_state_dict.pt", pickled.getvalue()),
        "serialized_exported_program": _with_entry(
            data, f"{root}/serialized_exported_program.json", b"{}"
        ),
    }
    for message, archive in cases.items():
        with pytest.raises(ProgramError, match=message):
            check_pt2_plain(archive)


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
    version = _small_version(tmp_path)
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


@pytest.mark.slow
@pytest.mark.parametrize("family", list(RANKERS))
def test_aoti_compiled_whole_programs_serve_the_eager_models_scores(
    family: str, encoded: EncodedData, tmp_path: Path
) -> None:
    """Each ranker family's whole program (the path a packaged ranker takes), compiled by
    AOTInductor, serves the eager model's scores within 1e-5 relative."""
    torch.manual_seed(7)
    config = RANKERS[family].config_type(embedding_dim=8)
    model = spread_weights(build_ranker(family, encoded, config)).eval()
    export_ranker(
        model, encoded, tmp_path, family, family=family, metrics={}, config={},
        crossing=False, program_format="export",
    )  # fmt: skip
    pipeline = RankerPipeline(
        load_artifact(tmp_path / family / "1"), use_crossing=False, compile_programs="aoti"
    )
    assert set(pipeline.compiled) == {"model"} and pipeline.compiled["model"].served
    tables = encoded.tables
    rng = np.random.default_rng(1)
    logits = []
    for n in (1, 7, 33, pipeline.num_items):
        rows = rng.choice(pipeline.num_items, size=n, replace=False)
        user = int(rng.integers(pipeline.num_users))
        logits.append(pipeline.score_logits(tables["user_features"][user], rows))
        served = pipeline.score_rows(tables["user_features"][user], rows)
        np.testing.assert_allclose(
            served, eager_scores(model, tables, user, rows), rtol=1e-5, atol=1e-7
        )
    assert np.ptp(np.concatenate(logits)) > 3  # the bound was tested on spread logits


@pytest.mark.slow
def test_a_server_compiles_exported_rankers_with_aoti_on_request(
    encoded: EncodedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--compile-programs aoti: the exported whole program (no crossing block, as a
    packaged ranker is served) and the crossing head are compiled when the model loads;
    the answers keep the exported program's scores within 1e-5 relative, and the log
    says how far they moved. A TorchScript artifact is served as it is."""
    from recserve import Client
    from recserve.server.app import ServeOptions, build_server

    torch.manual_seed(5)
    config = RANKERS["deepfm"].config_type(embedding_dim=8)
    model = spread_weights(build_ranker("deepfm", encoded, config)).eval()
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
        assert all(c.served and c.difference < 1e-5 for m in compiled.values() for c in m.values())
        assert "the model program of whole v1 with AOTInductor (compiled at load)" in caplog.text
        user = int(plain["whole"].user_ids[2])
        candidates = plain["whole"].item_ids[:40].tolist()
        with Client(f"127.0.0.1:{running.port}", timeout=30) as client:
            for name, pipeline in plain.items():
                answer = client.rank(user, candidates, model=name)
                expected = {i.item_id: i.score for i in pipeline.rank(user, candidates).items}
                got = {i.item_id: i.score for i in answer.items}
                assert got.keys() == expected.keys()
                np.testing.assert_allclose(
                    [got[i] for i in expected], list(expected.values()), rtol=1e-5
                )
    finally:
        running.stop(0)


@pytest.fixture(scope="module")
def topn_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GRU4Rec, LSTM, SASRec, CFGAN and DIN (on SASRec), each trained once, small, and
    exported in both formats: `<family>` TorchScript, `<family>-export` torch.export."""
    from helpers.sequences import SMALL_DIN, SMALL_SEQUENCE

    from recserve.training import topn
    from recserve.training.gan import CFGANConfig, train_cfgan

    torch.set_num_threads(1)
    data = make_synthetic_movielens(n_users=40, n_items=30, n_interactions=600, seed=4)
    repo = tmp_path_factory.mktemp("topn-formats")
    trained = {
        name: topn.train_sequence(data, config(**SMALL_SEQUENCE))
        for name, config in (
            ("gru4rec", topn.SequenceConfig),
            ("lstm", topn.LSTMConfig),
            ("sasrec", topn.SASRecConfig),
        )
    }
    trained["cfgan"] = train_cfgan(
        data, CFGANConfig(epochs=2, generator_hidden=[16], discriminator_hidden=[8])
    )
    for name, model in trained.items():
        model.export(repo, name, "syn")
        model.export(repo, f"{name}-export", "syn", "export")
    din = topn.train_din(data, topn.DINConfig(**SMALL_DIN), lambda line: None, False, repo)
    din.export(repo, "din", "syn")
    din.export(repo, "din-export", "syn", "export")
    return repo


@pytest.mark.parametrize("family", ["gru4rec", "lstm", "sasrec", "cfgan"])
def test_exported_top_n_programs_serve_the_torchscript_answers(
    family: str, topn_repo: Path
) -> None:
    """Every user, with and without recent items (histories shorter and longer than the
    exported encoder's fixed length): the same user vectors within 1e-5 and the same
    answers."""
    from recserve.engine.dispatch import make_pipeline

    scripted = make_pipeline(load_artifact(topn_repo / family / "1"))
    exported = make_pipeline(load_artifact(topn_repo / f"{family}-export" / "1"))
    assert exported.artifact.program_format == "export"
    for user in scripted.user_ids.tolist():
        for recent in ([], [int(scripted.item_ids[3])], scripted.item_ids[:12].tolist()):
            rows = np.searchsorted(scripted.item_ids, recent).astype(np.int64)
            a, _ = scripted.encode_user(user, {}, rows)
            b, _ = exported.encode_user(user, {}, rows)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
            ids = [i.item_id for i in scripted.recommend(user, 5, recent).items]
            assert [i.item_id for i in exported.recommend(user, 5, recent).items] == ids


def test_an_exported_din_ranks_as_its_torchscript_program(topn_repo: Path) -> None:
    from recserve.engine.dispatch import make_pipeline

    scripted = make_pipeline(load_artifact(topn_repo / "din" / "1"))
    exported = make_pipeline(load_artifact(topn_repo / "din-export" / "1"))
    rng = np.random.default_rng(1)
    for user in [*scripted.user_ids.tolist()[:10], 99_999]:  # and a user with no history
        for n in (1, 2, 17):
            items = rng.choice(scripted.item_ids, size=n, replace=False).tolist()
            scores = rng.normal(size=n).tolist()
            a = scripted.rank_retrieved(user, items, scores)
            b = exported.rank_retrieved(user, items, scores)
            assert [i.item_id for i in b.items] == [i.item_id for i in a.items]
            np.testing.assert_allclose(
                [i.score for i in b.items], [i.score for i in a.items], rtol=1e-5, atol=1e-6
            )
