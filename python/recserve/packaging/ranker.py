"""A ranker trained elsewhere, packaged as a model recserve serves.

What a team brings: its program (TorchScript ``.pt`` or ``torch.export`` ``.pt2``), a
feature schema (TOML or JSON) that says which features the program reads and how each
is encoded, and the item table (and optionally the user table) as CSV. The program's
signature is the one recserve's own rankers have::

    forward(user: int64[B, Fu], item: int64[B, Fi], item_multi: int64[B, M]) -> float[B]

one logit per candidate (the answer's score is its sigmoid), each column an encoded
feature: 0 is unknown, an id is its rank among the table's sorted ids plus 1, a token its
place in the sorted vocabulary plus 1, a number its bucket (recserve.engine.schema). The
package is the ``packaged_ranker`` family (docs/artifact.md), served by ``Rank`` and as a
cascade's ``rank_with`` with explanations and metrics like the rankers recserve trains.
Each request's candidates are one call of the program, never merged with another
request's: a program from elsewhere may mix the rows of a call (a softmax over the
candidates), and merging would change its answers. Everything is checked before anything
is written, including a forward pass on rows of the tables and on the largest index of
every column; nothing is unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recserve.engine.artifact import (
    PACKAGED_RANKER_FAMILY,
    save_artifact,
)
from recserve.engine.schema import FeatureSchema

from .features import SideTable, read_features, read_side
from .program import SAMPLE_ROWS, column_names, load_program, probe_rows, run_probe
from .tables import PackageError, check_model_name, seen_table


@dataclass(frozen=True)
class RankerFiles:
    program: Path  # TorchScript (.pt) or torch.export (.pt2)
    features: Path  # the feature schema: TOML (.toml) or JSON (.json)
    items: Path  # CSV: id, optional title, a column per item feature
    users: Path | None = None  # CSV: id, a column per user feature
    interactions: Path | None = None  # CSV: user_id, item_id; left out of Recommend


def check_ranker(
    module: torch.nn.Module, schema: FeatureSchema, users: SideTable, items: SideTable
) -> None:
    """Runs the program on the probes (program.probe_rows) and refuses it when it fails
    or answers anything but one finite float logit per candidate."""
    n = min(SAMPLE_ROWS, items.ids.size)
    user = users.single[:1] if users.ids.size else np.zeros((1, users.single.shape[1]), np.int64)
    first = {
        "user": np.repeat(user, n, axis=0),
        "item": items.single[:n],
        "item_multi": items.multi[:n],
    }
    for what, arrays in probe_rows(schema, first, f"user against the first {n} items").items():
        run_probe(
            module,
            arrays,
            what,
            column_names(schema, tuple(first)),
            lambda rows: ((rows,), (rows, 1)),
            "one logit per candidate",
        )


def package_ranker(
    files: RankerFiles,
    repo: str | os.PathLike[str],
    name: str,
    aoti_target: str | None = None,
) -> Path:
    """Checks the files and writes a new version of ``name`` into ``repo`` (atomically);
    returns its directory. Raises PackageError, naming the file and field, and writes
    nothing, when a file is missing or wrong. With ``aoti_target`` (a target of
    recserve.engine.aoti.AOTI_TARGETS) a ``.pt2`` program is also stored compiled by
    AOTInductor for it (``recserve serve --compile-programs aoti-stored`` loads that)."""
    check_model_name(name)
    if aoti_target is not None and files.program.suffix != ".pt2":
        raise PackageError(
            f"program: {files.program} is not a .pt2; AOTInductor compiles torch.export "
            "programs (save one with torch.export.save)"
        )
    features = read_features(files.features)
    if not any(f.spec.side == "item" for f in features):
        raise PackageError(
            f"{files.features}: no [[item]] feature; a ranker needs the candidate's features"
        )
    user_side = [f for f in features if f.spec.side == "user"]
    item_side = [f for f in features if f.spec.side == "item"]
    if files.users is None and any(f.spec.kind == "id" for f in user_side):
        raise PackageError(
            f"{files.features}: the user id feature needs the users table (--users): it "
            "numbers users by their sorted ids"
        )
    items = read_side(files.items, item_side, "items")
    if items.ids.size == 0:
        raise PackageError(f"items: {files.items} has no rows")
    users = read_side(files.users, user_side, "users")
    schema = FeatureSchema((*users.specs, *items.specs))
    program, module = load_program(files.program)
    check_ranker(module, schema, users, items)
    indptr, seen, _ = seen_table(files.interactions, users.ids, items.ids)
    return save_artifact(
        repo,
        name,
        family=PACKAGED_RANKER_FAMILY,
        schema=schema,
        modules={"model": program},
        tables={
            "user_ids": users.ids,
            "user_features": users.single,
            "item_ids": items.ids,
            "item_features": items.single,
            "item_multi": items.multi,
            "item_titles": items.titles,
            "seen_indptr": indptr,
            "seen_items": seen,
        },
        metrics={},
        config={
            "model": "ranker (packaged)",
            "files": {key: str(path) for key, path in vars(files).items() if path is not None},
        },
        compile_for=aoti_target,
        compiled_keys=("model",),
    )
