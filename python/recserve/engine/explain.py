"""Explanations of ranker scores: exact Shapley values of the logit over the input fields.

The players are a model's F input fields (schema order: user fields, then item fields,
multi-valued ones included). A coalition S keeps its fields' values and sets every other
field to "unknown" (encoded id 0, all slots of a multi-valued field), which every ranker
embeds as a zero vector with zero first-order weight; v(S) is the logit of the ranker's
whole ``model`` program on those inputs. Field f's contribution is

    φ_f = Σ_{S ⊆ F∖{f}} |S|! (F − |S| − 1)! / F! · (v(S ∪ {f}) − v(S))

and ``baseline = v(∅)``, so ``logit = v(F) = baseline + Σ_f φ_f`` (efficiency). For an
additive term (a first-order weight) φ is exactly that term; a pairwise FM term <v_f, v_g>
goes half to f and half to g; the deep part gets its own Shapley values — one code path
for every ranker family. A field whose value is already unknown cannot change any v(S)
(a null player): it gets exactly 0 and is left out of the enumeration, which leaves the
other fields' values unchanged. Cost: 2^(known fields) ≤ 2^F forward rows per explained
item (F = 7 for the MovieLens models: at most 128), all items of a request in one or a
few forward calls; the program runs in float32, the Shapley sums in float64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from ..results import Explanation, FieldContribution, Ranking
from .artifact import RANKER_PROGRAM_FAMILIES
from .errors import InvalidRequest
from .pipeline import CatalogPipeline, RankerPipeline
from .schema import FeatureSchema, encode_ids

# 2^12 = 4096 coalitions per item; beyond that an explained Rank gets too slow to serve.
MAX_EXPLAIN_FIELDS = 12
# Rows per forward call of the model program (bounds the memory of a large request).
FORWARD_ROWS = 65_536


@dataclass(frozen=True)
class _Layout:
    """Which field (index in schema order) owns each column of the concatenated model
    input ``[user | item | item_multi]``."""

    names: tuple[str, ...]
    column_field: np.ndarray  # int64 [Fu + Fi + M]
    n_user: int
    n_item: int


def check_explainable(pipeline: CatalogPipeline) -> None:
    """Raises InvalidRequest when ``pipeline``'s scores cannot be explained."""
    if not isinstance(pipeline, RankerPipeline):
        artifact = getattr(pipeline, "artifact", None)
        family = getattr(artifact, "family", type(pipeline).__name__)
        raise InvalidRequest(
            f"family {family!r} cannot explain its scores; explain needs a ranker "
            f"({', '.join(RANKER_PROGRAM_FAMILIES)}): send the request without explain"
        )
    n_fields = len(pipeline.schema.features)
    if n_fields > MAX_EXPLAIN_FIELDS:
        raise InvalidRequest(
            f"model {pipeline.artifact.name!r} has {n_fields} input fields; explain evaluates "
            f"all 2^F field subsets and supports at most {MAX_EXPLAIN_FIELDS} fields "
            f"({2**MAX_EXPLAIN_FIELDS} per item): send the request without explain"
        )


def _layout(schema: FeatureSchema, multi_width: int) -> _Layout:
    names = tuple(f.name for f in schema.features)
    if schema.multi_valued("user"):
        raise InvalidRequest("explain cannot handle multi-valued user fields")
    columns: list[int] = []
    for spec in (*schema.single_valued("user"), *schema.single_valued("item")):
        columns.append(names.index(spec.name))
    for spec in schema.multi_valued("item"):  # contiguous, in schema order (FieldEmbedding)
        columns += [names.index(spec.name)] * spec.max_values
    n_user, n_item = len(schema.single_valued("user")), len(schema.single_valued("item"))
    if len(columns) - n_user - n_item != multi_width:
        raise ValueError(
            f"item_multi has {multi_width} columns, the schema's multi-valued fields "
            f"{len(columns) - n_user - n_item}"
        )
    return _Layout(names, np.asarray(columns, dtype=np.int64), n_user, n_item)


@lru_cache(maxsize=MAX_EXPLAIN_FIELDS + 1)
def shapley_matrix(n: int) -> np.ndarray:
    """float64 [2^n, n] ``A`` with ``φ = v @ A`` for ``v`` [.., 2^n] indexed by coalition
    bitmask: ``A[S, i] = w(|S| − 1)`` if i ∈ S else ``−w(|S|)``, ``w(s) = s!(n−s−1)!/n!``."""
    masks = np.arange(2**n, dtype=np.int64)
    member = (masks[:, None] >> np.arange(n)) & 1 == 1  # [2^n, n]
    size = member.sum(axis=1)
    w = np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
        + [0.0]
    )  # w[n] is never used with a non-member (there is none)
    matrix = np.where(member, w[np.maximum(size - 1, 0)][:, None], -w[size][:, None])
    matrix.setflags(write=False)
    return matrix


def _logits(pipeline: RankerPipeline, inputs: np.ndarray, layout: _Layout) -> np.ndarray:
    """float64 logits of the whole ``model`` program on rows of ``[user | item | multi]``."""
    module = pipeline.artifact.modules["model"]
    device = next(module.parameters()).device  # the GPU when the model was placed there
    a, b = layout.n_user, layout.n_user + layout.n_item
    out = np.empty(inputs.shape[0], dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], FORWARD_ROWS):
            chunk = inputs[start : start + FORWARD_ROWS]
            parts = (chunk[:, :a], chunk[:, a:b], chunk[:, b:])
            user, item, multi = (
                torch.from_numpy(np.ascontiguousarray(p)).to(device) for p in parts
            )
            logits = module(user, item, multi).reshape(-1).to(torch.float64).cpu()  # [B] or [B, 1]
            out[start : start + chunk.shape[0]] = logits
    return out


def explain_rows(
    pipeline: CatalogPipeline, user_features: np.ndarray, item_rows: np.ndarray
) -> list[Explanation]:
    """Shapley explanation of the logit of one user (encoded row, as ``encode_user``
    gives) against each item table row, in the order of ``item_rows``."""
    check_explainable(pipeline)
    assert isinstance(pipeline, RankerPipeline)
    tables = pipeline.artifact.tables
    layout = _layout(pipeline.schema, tables["item_multi"].shape[1])
    rows = np.asarray(item_rows, dtype=np.int64)
    user = np.asarray(user_features, dtype=np.int64)
    if user.shape != (layout.n_user,):
        raise ValueError(f"user features have shape {user.shape}, expected ({layout.n_user},)")
    if rows.size and (rows.min() < 0 or rows.max() >= pipeline.num_items):
        raise IndexError(f"item rows must lie in [0, {pipeline.num_items})")
    n, n_fields = rows.size, len(layout.names)
    item, multi = tables["item_features"][rows], tables["item_multi"][rows]
    x = np.concatenate([np.broadcast_to(user, (n, user.size)), item, multi], axis=1)  # [N, C]
    x = x.astype(np.int64, copy=False)
    # A field is a player when any of its columns is known; the others are null players.
    known = np.zeros((n, n_fields), dtype=bool)  # [N, F]
    for f in range(n_fields):
        known[:, f] = (x[:, layout.column_field == f] != 0).any(axis=1)
    player_masks = known.astype(np.int64) @ (1 << np.arange(n_fields, dtype=np.int64))  # [N]

    groups, inputs = [], []
    for mask in np.unique(player_masks).tolist():
        members = np.flatnonzero(player_masks == mask)
        players = np.flatnonzero((mask >> np.arange(n_fields)) & 1)
        coalitions = np.arange(2**players.size, dtype=np.int64)
        keep = np.zeros((coalitions.size, n_fields), dtype=np.int64)
        keep[:, players] = (coalitions[:, None] >> np.arange(players.size)) & 1  # [2^p, F]
        masked = x[members][:, None, :] * keep[:, layout.column_field][None]  # [n_g, 2^p, C]
        inputs.append(masked.reshape(-1, x.shape[1]))
        groups.append((members, players))
    logits = _logits(pipeline, np.concatenate(inputs), layout) if n else np.empty(0)

    baseline = np.zeros(n, dtype=np.float64)
    phi = np.zeros((n, n_fields), dtype=np.float64)  # null players stay exactly 0
    start = 0
    for members, players in groups:
        size = members.size * 2**players.size
        v = logits[start : start + size].reshape(members.size, -1)  # [n_g, 2^p]
        start += size
        baseline[members] = v[:, 0]
        phi[np.ix_(members, players)] = v @ shapley_matrix(players.size)
    return [
        Explanation(
            b, [FieldContribution(name, c) for name, c in zip(layout.names, row, strict=True)]
        )
        for b, row in zip(baseline.tolist(), phi.tolist(), strict=True)
    ]


def explain_ranking(
    pipeline: CatalogPipeline, user_id: int, context: Mapping[str, str], ranking: Ranking
) -> Ranking:
    """``ranking`` (of ``pipeline``, for this user and context) with an explanation on
    each item."""
    check_explainable(pipeline)
    assert isinstance(pipeline, RankerPipeline)
    user_features, _ = pipeline.encode_user(user_id, context)
    rows = encode_ids(pipeline.item_ids, [item.item_id for item in ranking.items]) - 1
    if (rows < 0).any():
        raise ValueError("the ranking holds items this model does not know")
    explanations = explain_rows(pipeline, user_features, rows)
    items = [
        replace(item, explanation=explanation)
        for item, explanation in zip(ranking.items, explanations, strict=True)
    ]
    return replace(ranking, items=items)
