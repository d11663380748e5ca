"""The one place that turns a trained model into an artifact (program + tables)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recserve.engine.artifact import CROSSING_TABLES, save_artifact
from recserve.engine.programs import (
    PROGRAM_FORMATS,
    export_program,
    torchscript_deprecation_silenced,
)
from recserve.engine.schema import FeatureSchema

from .features import EncodedData
from .models.cfgan import CFGANGenerator
from .models.dcnv2 import DCNv2
from .models.deepfm import DeepFM
from .models.gru4rec import GRU4Rec
from .models.layers import FieldEmbedding
from .models.sasrec import SASRec
from .models.wide_deep import WideDeep


def script_model(model: nn.Module) -> torch.jit.ScriptModule:
    """TorchScript program of the inference model, in eval mode."""
    model.eval()
    with torchscript_deprecation_silenced():
        return torch.jit.script(model)


def program_of(
    model: nn.Module,
    program_format: str,
    example_inputs: tuple[torch.Tensor, ...],
    dynamic_dims: list[int | None] | None = None,
) -> torch.jit.ScriptModule | torch.export.ExportedProgram:
    """The serving program of ``model`` in ``program_format``: TorchScript, or a
    ``torch.export`` program traced on ``example_inputs`` with the dimensions
    ``dynamic_dims`` dynamic (default: every input's first, the batch)."""
    if program_format == "torchscript":
        return script_model(model)
    if program_format == "export":
        dims = [0] * len(example_inputs) if dynamic_dims is None else dynamic_dims
        return export_program(model, example_inputs, dims)
    raise ValueError(
        f"program format {program_format!r} is not supported "
        f"(supported: {', '.join(PROGRAM_FORMATS)})"
    )


EXAMPLE_ROWS = 4  # rows of an export's example inputs (at least 2: see export_program)


def _ranker_examples(tables: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """A few rows of a ranker program's inputs (user, item, item_multi) from its tables."""
    users = tables["user_features"]
    user = users[np.resize(np.arange(users.shape[0]), EXAMPLE_ROWS)] if users.shape[0] else None
    if user is None:
        user = np.zeros((EXAMPLE_ROWS, users.shape[1]), np.int64)
    items = np.resize(np.arange(tables["item_features"].shape[0]), EXAMPLE_ROWS)
    return tuple(
        torch.from_numpy(np.ascontiguousarray(a))
        for a in (user, tables["item_features"][items], tables["item_multi"][items])
    )


def _head_examples(block: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """Rows of a crossing head's inputs: the hidden layer, or DCN-v2's ``x0`` and ``x1``."""
    if block["kind"] != "dcnv2":
        return (torch.rand(EXAMPLE_ROWS, block["hidden"]),)
    fields = block["user_fields"] + block["item_fields"] + block["item_multi_fields"]
    width = fields * block["embedding_dim"]
    return torch.randn(EXAMPLE_ROWS, width), torch.randn(EXAMPLE_ROWS, width)


def _field_tables(emb: FieldEmbedding, num_user_fields: int) -> dict[str, np.ndarray]:
    """The tables that gather a model's field vectors, as the crossing path reads them."""
    n_single = emb.single_offsets.numel()
    if not 0 <= num_user_fields <= n_single:
        raise ValueError(f"num_user_fields={num_user_fields} is outside [0, {n_single}]")
    multi_fields = emb.pool.argmax(dim=1) if emb.pool.numel() else emb.multi_offsets
    return {
        "embedding": _array(emb.table.weight),  # [R, d]
        "single_offsets": _array(emb.single_offsets),  # [Fu + Fi]: table row of index 0
        "multi_offsets": _array(emb.multi_offsets),  # [M]: per column of item_multi
        "multi_fields": _array(multi_fields.to(torch.int64)),  # [M]: field of each column
    }


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def crossing_block(
    model: DeepFM | WideDeep | DCNv2, num_user_fields: int
) -> tuple[dict[str, Any], dict[str, np.ndarray], nn.Module]:
    """What the fused crossing path serves ``model`` with: (manifest block, tables, head).

    The block's ``kind`` says which parts the kernel computes (recserve.engine.artifact
    CROSSING_ROLES): for DeepFM the first-order sum, the FM term and the first MLP layer;
    for Wide&Deep the wide (first-order) sum and the first MLP layer; for DCN-v2 ``x0``
    and the first cross layer. The first layer's weight (role ``w1``) is split into user
    and item columns (``w1_columns``). The tables are the parameters in the model's
    dtype; the head, which stays a program, is the rest of the model: the MLP after the
    first ReLU (``forward(hidden [N, H1]) -> [N, 1]``), or for DCN-v2 the other cross
    layers and the MLP (``forward(x0 [N, D], x1 [N, D]) -> [N, 1]``). Fields are the
    user's single-valued fields, then the item's single-valued fields, then the item's
    multi-valued fields, and the first layer's columns are field-major: field f owns
    columns [f d, (f + 1) d).
    """
    model.eval()
    emb = model.embedding
    tables = _field_tables(emb, num_user_fields)
    d = emb.table.weight.shape[1]
    n_single, n_fields = emb.single_offsets.numel(), emb.single_offsets.numel() + emb.pool.shape[1]
    head: nn.Module
    if isinstance(model, DCNv2):
        kind = "dcnv2"
        w1, b1, head = model.split_cross()
    else:
        kind = "deepfm" if isinstance(model, DeepFM) else "wide_deep"
        first, head = model.split_mlp()
        w1, b1 = first.weight, first.bias
        wide = model.first_order if isinstance(model, DeepFM) else model.wide
        tables["first_order"] = _array(wide.table.weight[:, 0])  # [R]
        tables["bias"] = _array(model.bias)  # [1]
    if w1.shape[1] != n_fields * d:
        raise ValueError(f"first layer takes {w1.shape[1]} inputs, expected {n_fields * d}")
    tables["w1"], tables["b1"] = _array(w1), _array(b1)  # [H1, F d], [H1]
    block = {
        "kind": kind,
        "embedding_dim": int(d),
        "hidden": int(w1.shape[0]),
        "user_fields": int(num_user_fields),
        "item_fields": int(n_single - num_user_fields),
        "item_multi_fields": int(n_fields - n_single),
        "w1_columns": {
            "user": [0, num_user_fields * d],
            "item": [num_user_fields * d, n_fields * d],
        },
        "module": "head",
        "tables": {role: CROSSING_TABLES[role] for role in tables},
    }
    return block, {CROSSING_TABLES[role]: t for role, t in tables.items()}, head


def has_crossing(model: nn.Module) -> bool:
    """Whether ``crossing_block`` can split ``model`` (it has a first layer to split)."""
    if isinstance(model, DeepFM | WideDeep):
        return len(model.mlp) > 1
    return isinstance(model, DCNv2) and model.cross.num_layers > 0


def export_ranker(
    model: nn.Module,
    encoded: EncodedData,
    repo: str | os.PathLike[str],
    name: str,
    *,
    family: str,
    metrics: dict[str, float],
    config: dict[str, Any],
    extra: dict[str, Any] | None = None,
    crossing: bool = True,
    program_format: str = "torchscript",
    aoti_target: str | None = None,
) -> Path:
    """Write ``model`` and the tables it is served with as a new version of ``name``.

    A DeepFM or Wide&Deep with hidden layers, or a DCN-v2 with cross layers, also gets
    the fused-crossing block (manifest key ``crossing``, its parameter tables and the
    ``head`` program) unless ``crossing`` is False; an artifact without it is served
    with the whole ``model`` program. The programs are in ``program_format``
    (``torchscript`` or ``export``: recserve.engine.programs); with ``aoti_target``,
    exported programs are also stored compiled by AOTInductor for that target
    (recserve.engine.aoti).
    """
    tables = dict(encoded.tables)
    modules = {"model": program_of(model, program_format, _ranker_examples(tables))}
    extra = dict(extra or {})
    if crossing and has_crossing(model):
        n_user = len(encoded.schema.single_valued("user"))
        block, crossing_tables, head = crossing_block(model, n_user)
        modules[block["module"]] = program_of(head, program_format, _head_examples(block))
        tables.update(crossing_tables)
        extra["crossing"] = block
    return save_artifact(
        repo,
        name,
        family=family,
        schema=encoded.schema,
        modules=modules,
        tables=tables,
        metrics=metrics,
        config=config,
        extra=extra,
        compile_for=aoti_target,
        compiled_keys=tuple(modules),
    )


# -- top-N families (docs/artifact.md: "embedding", "sequence", "generator") ----------

TOPN_TABLES = ("user_ids", "item_ids", "item_titles", "seen_indptr", "seen_items", "popularity")


def export_embedding(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    metrics: dict[str, float],
    config: dict[str, Any],
) -> Path:
    """Family ``embedding``: score(u, i) = <user_vectors[u], item_vectors[i]> (no program)."""
    users = np.ascontiguousarray(user_vectors, dtype=np.float32)
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
        raise ValueError(f"vector tables disagree: users {users.shape}, items {items.shape}")
    return save_artifact(
        repo,
        name,
        family="embedding",
        schema=schema,
        modules={},
        tables={
            **{key: tables[key] for key in TOPN_TABLES},
            "user_vectors": users,
            "item_vectors": items,
        },
        metrics=metrics,
        config=config,
    )


def export_sequence(
    model: GRU4Rec | SASRec,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    max_length: int,
    metrics: dict[str, float],
    config: dict[str, Any],
    program_format: str = "torchscript",
) -> Path:
    """Family ``sequence``: ``encoder`` program (item rows + 1 -> user state) and item
    vectors; the user's time-ordered history is stored so a request needs no ids. An
    exported encoder takes exactly ``max_length`` items (the server pads on the left)."""
    items = np.ascontiguousarray(model.item_vectors().detach().numpy(), dtype=np.float32)
    example = torch.zeros(1, max_length, dtype=torch.int64)
    example[0, -1] = 1
    return save_artifact(
        repo,
        name,
        family="sequence",
        schema=schema,
        modules={"encoder": program_of(model, program_format, (example,), [None])},
        tables={
            **{key: tables[key] for key in (*TOPN_TABLES, "history_indptr", "history_items")},
            "item_vectors": items,
        },
        metrics=metrics,
        config=config,
        extra={"max_history": int(max_length)},
    )


def export_generator(
    generator: CFGANGenerator,
    schema: FeatureSchema,
    tables: dict[str, np.ndarray],
    repo: str | os.PathLike[str],
    name: str,
    *,
    metrics: dict[str, float],
    config: dict[str, Any],
    program_format: str = "torchscript",
) -> Path:
    """Family ``generator``: ``generator`` program (float32 [1, I] purchase vector ->
    float32 [1, I] scores); the user's purchases are the ``seen`` table."""
    example = torch.zeros(1, tables["item_ids"].size)
    return save_artifact(
        repo,
        name,
        family="generator",
        schema=schema,
        modules={"generator": program_of(generator, program_format, (example,), [None])},
        tables={key: tables[key] for key in TOPN_TABLES},
        metrics=metrics,
        config=config,
    )
