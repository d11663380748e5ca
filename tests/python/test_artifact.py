from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recserve.engine.artifact import (
    CROSSING_TABLES,
    ArtifactError,
    list_versions,
    load_artifact,
    save_artifact,
)
from recserve.engine.pipeline import RankerPipeline
from recserve.training.export import export_ranker
from recserve.training.ranker import TrainedRanker


def copy_version(model_repo: Path, tmp_path: Path) -> Path:
    target = tmp_path / "deepfm" / "1"
    shutil.copytree(model_repo / "deepfm" / "1", target)
    return target


def test_round_trip_gives_identical_scores(trained_ranker: TrainedRanker, artifact) -> None:
    """export -> load -> the served scores equal the in-memory model's, bit for bit."""
    tables = trained_ranker.encoded.tables
    pipeline = RankerPipeline(artifact, use_crossing=False)  # the whole program
    for user_row in (0, 5, tables["user_ids"].size - 1):
        served = pipeline.score_rows(tables["user_features"][user_row], None)
        n = tables["item_ids"].size
        with torch.no_grad():
            logits = trained_ranker.model(
                torch.from_numpy(tables["user_features"][user_row : user_row + 1]).expand(n, -1),
                torch.from_numpy(tables["item_features"]),
                torch.from_numpy(tables["item_multi"]),
            )
        np.testing.assert_array_equal(
            pipeline.score_logits(tables["user_features"][user_row], None), logits.numpy()
        )
        np.testing.assert_allclose(served, torch.sigmoid(logits.double()).numpy(), rtol=1e-6)
    for key, table in tables.items():
        np.testing.assert_array_equal(artifact.tables[key], table)
    assert artifact.schema == trained_ranker.encoded.schema
    assert artifact.metrics["test_auc"] == trained_ranker.metrics["test_auc"]


def test_manifest_lists_every_file_with_its_checksum(artifact) -> None:
    files = artifact.manifest["files"]
    on_disk = {p.name for p in artifact.path.iterdir()} - {"manifest.json"}
    assert set(files) == on_disk
    assert all(len(entry["sha256"]) == 64 for entry in files.values())
    assert artifact.manifest["program_format"] == "torchscript"


def test_altered_file_is_refused(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    with (version / "item_features.npy").open("r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x07")
    with pytest.raises(ArtifactError, match=r"checksum mismatch for item_features\.npy"):
        load_artifact(version)


def test_truncated_module_is_refused(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    data = (version / "model.pt").read_bytes()
    (version / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match=r"checksum mismatch for model\.pt"):
        load_artifact(version)


def test_missing_file_and_missing_manifest_are_refused(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    (version / "item_ids.npy").unlink()
    with pytest.raises(ArtifactError, match=r"item_ids\.npy listed in the manifest is missing"):
        load_artifact(version)
    (version / "manifest.json").unlink()
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load_artifact(version)


def test_unknown_format_version_names_the_version(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["format_version"] = 99
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="format version 99 is not supported"):
        load_artifact(version)


def test_manifest_cannot_point_outside_the_version(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["files"]["../escape.npy"] = {"kind": "table", "key": "x", "sha256": "0" * 64}
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="outside the version"):
        load_artifact(version)


def test_versions_increase_and_a_failed_save_leaves_nothing(artifact, tmp_path: Path) -> None:
    kwargs = dict(family="deepfm", schema=artifact.schema, modules=artifact.modules)
    assert save_artifact(tmp_path, "m", tables={"a": np.arange(3)}, **kwargs).name == "1"
    assert save_artifact(tmp_path, "m", tables={"a": np.arange(3)}, **kwargs).name == "2"
    with pytest.raises(ArtifactError, match="pickle"):
        save_artifact(tmp_path, "m", tables={"bad": np.array([object()])}, **kwargs)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1", "2"]
    assert list_versions(tmp_path / "m") == [1, 2]
    with pytest.raises(ArtifactError, match="not allowed"):
        save_artifact(tmp_path, "../evil", tables={}, **kwargs)


def test_crossing_block_round_trip(trained_ranker: TrainedRanker, artifact) -> None:
    """The block names its tables and head; they hold the model's own parameters."""
    model = trained_ranker.model
    block = artifact.manifest["crossing"]
    schema = artifact.schema
    d, h1 = model.embedding.table.weight.shape[1], model.mlp[0].out_features
    n_user = len(schema.single_valued("user"))
    assert block["kind"] == "deepfm" and block["module"] == "head"
    assert (block["embedding_dim"], block["hidden"], block["user_fields"]) == (d, h1, n_user)
    assert block["item_fields"] == len(schema.single_valued("item"))
    assert block["item_multi_fields"] == len(schema.multi_valued("item"))
    assert block["w1_columns"] == {
        "user": [0, n_user * d],
        "item": [n_user * d, model.mlp[0].in_features],
    }
    assert block["tables"] == CROSSING_TABLES
    crossing = artifact.crossing
    assert crossing is not None and crossing.head is artifact.modules["head"]
    np.testing.assert_array_equal(
        crossing.tables["embedding"], model.embedding.table.weight.detach()
    )
    np.testing.assert_array_equal(
        crossing.tables["first_order"], model.first_order.table.weight.detach()[:, 0]
    )
    np.testing.assert_array_equal(crossing.tables["w1"], model.mlp[0].weight.detach())
    np.testing.assert_array_equal(crossing.tables["b1"], model.mlp[0].bias.detach())
    np.testing.assert_array_equal(crossing.tables["bias"], model.bias.detach())
    np.testing.assert_array_equal(crossing.tables["single_offsets"], model.embedding.single_offsets)
    np.testing.assert_array_equal(crossing.tables["multi_offsets"], model.embedding.multi_offsets)
    x = torch.randn(5, h1)
    with torch.no_grad():
        torch.testing.assert_close(crossing.head(x), model.mlp[3:](x), rtol=0, atol=0)


def test_artifact_without_crossing_block_is_served_by_the_program(
    trained_ranker: TrainedRanker, artifact, tmp_path: Path
) -> None:
    path = export_ranker(
        trained_ranker.model,
        trained_ranker.encoded,
        tmp_path,
        "plain",
        family="deepfm",
        metrics={},
        config={},
        crossing=False,
    )
    plain = load_artifact(path)
    assert "crossing" not in plain.manifest and plain.crossing is None
    assert "head" not in plain.modules and not set(CROSSING_TABLES.values()) & set(plain.tables)
    pipeline = RankerPipeline(plain)
    assert pipeline.crossing is None
    user = plain.tables["user_features"][2]
    expected = RankerPipeline(artifact, use_crossing=False).score_rows(user, None)
    np.testing.assert_array_equal(pipeline.score_rows(user, None), expected)
    assert pipeline.rank(int(plain.tables["user_ids"][2]), plain.tables["item_ids"][:5]).items


def test_crossing_block_naming_a_missing_table_is_refused(model_repo: Path, tmp_path: Path) -> None:
    version = copy_version(model_repo, tmp_path)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["crossing"]["tables"]["w1"] = "no_such_table"
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="crossing block is incomplete"):
        load_artifact(version)
    manifest["crossing"]["kind"] = "dcn-v3"
    (version / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="crossing kind 'dcn-v3' is not supported"):
        load_artifact(version)


def test_a_copied_version_directory_is_refused(model_repo: Path, tmp_path: Path) -> None:
    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "deepfm" / "2")
    with pytest.raises(ArtifactError, match="manifest says 'deepfm' version 1"):
        load_artifact(tmp_path / "deepfm" / "2")
    shutil.copytree(model_repo / "deepfm" / "1", tmp_path / "other" / "1")
    with pytest.raises(ArtifactError, match="directory is 'other'"):
        load_artifact(tmp_path / "other" / "1")


def test_published_versions_are_readable_by_others(artifact) -> None:
    assert artifact.path.stat().st_mode & 0o055 == 0o055
