"""A program a team brings (TorchScript ``.pt`` or ``torch.export`` ``.pt2``): loaded
without unpickling anything, and run on probe inputs before it is packaged."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recserve.engine.programs import load_exported, torchscript_deprecation_silenced
from recserve.engine.schema import FeatureSchema

from .tables import PackageError


def load_program(path: Path) -> tuple[Any, torch.nn.Module]:
    """(what save_artifact writes, the callable module) of a TorchScript or .pt2 file;
    PackageError for a missing file, a pickle, or anything else."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"program: {path} does not exist") from None
    except OSError as exc:
        raise PackageError(f"program: {path} cannot be read ({exc})") from None
    if path.suffix == ".pt2":
        try:
            program = load_exported(data)
            return program, program.module()
        except Exception as exc:  # noqa: BLE001 - ProgramError, or .module() failing
            raise PackageError(f"program: {path}: {exc}") from None
    try:
        with torchscript_deprecation_silenced():
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - whatever a foreign file makes torch.jit raise
        raise PackageError(
            f"program: {path} is not a TorchScript program ({_last_line(exc)}); save it with "
            "torch.jit.save(torch.jit.script(model), ...) or, as a .pt2, with torch.export.save"
        ) from None
    module.eval()
    return module, module


SAMPLE_ROWS = 8  # rows of the first probe


def run_probe(
    module: torch.nn.Module,
    arrays: dict[str, np.ndarray],
    what: str,
    columns: str,
    expected_shape: Callable[[int], tuple[tuple[int, ...], ...]],
    meaning: str,
) -> torch.Tensor:
    """The program's output on one probe (``arrays``: input name -> int64 rows), refused
    with a PackageError when the call fails, or its output is not a finite float tensor
    of one of ``expected_shape(rows)``; ``meaning`` says what the output should be."""
    inputs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in arrays.values()]
    shapes = ", ".join(
        f"{name} int64[{t.shape[0]}, {t.shape[1]}]" for name, t in zip(arrays, inputs, strict=True)
    )
    try:
        with torch.inference_mode():
            out = module(*inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the user's program raises
        error = _last_line(exc)
        hint = (
            "A torch.export program must be exported with a dynamic batch dimension "
            "(dynamic_shapes; docs/packaging.md)"
            if "Guard failed" in error  # an exported program called off its traced shapes
            else "Does the feature schema match the program's inputs?"
        )
        raise PackageError(
            f"program: the sample forward pass failed on {what} ({shapes}; columns "
            f"{columns}): {error}. {hint}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise PackageError(
            f"program: returns {type(out).__name__} on {what}; expected a float tensor of {meaning}"
        )
    if not out.is_floating_point():
        raise PackageError(
            f"program: returns dtype {out.dtype} on {what}; expected a float dtype (float32, "
            f"float64, float16 or bfloat16) for {meaning}"
        )
    rows = inputs[0].shape[0]
    allowed = expected_shape(rows)
    if tuple(out.shape) not in allowed:
        wanted = " or ".join(str(list(shape)) for shape in allowed)
        raise PackageError(
            f"program: returns shape {list(out.shape)} on {what} ({rows} rows); expected "
            f"{wanted}, {meaning}"
        )
    if not torch.isfinite(out).all():
        raise PackageError(f"program: returns a value that is not finite on {what}")
    return out


def probe_rows(schema: FeatureSchema, first: dict[str, np.ndarray], what: str) -> dict[str, dict]:
    """The probes of a program over ``first`` (input name -> its first rows): those rows,
    one row, every column at its largest index (cardinality - 1: a vocabulary longer than
    the program's embedding fails there) and every column unknown (0)."""
    largest = dict(zip(first, largest_codes(schema), strict=False))
    return {
        f"the first {what}": first,
        "one row": {name: a[:1] for name, a in first.items()},
        "every column at its largest index (cardinality - 1)": {
            name: np.repeat(largest[name][None, :], 2, axis=0) for name in first
        },
        "every column unknown (0)": {
            name: np.zeros((2, largest[name].size), np.int64) for name in first
        },
    }


def _last_line(exc: BaseException) -> str:
    """The error itself: TorchScript puts the program's traceback first, the error last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def largest_codes(schema: FeatureSchema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The largest index of every column of ``user``, ``item`` and ``item_multi``."""
    user = [f.cardinality - 1 for f in schema.single_valued("user")]
    item = [f.cardinality - 1 for f in schema.single_valued("item")]
    multi = [f.cardinality - 1 for f in schema.multi_valued("item") for _ in range(f.max_values)]
    return tuple(np.asarray(c, dtype=np.int64) for c in (user, item, multi))  # type: ignore[return-value]


def column_names(schema: FeatureSchema, inputs: tuple[str, ...]) -> str:
    """What each column of the named inputs (``user``, ``item``, ``item_multi``) holds."""
    parts = []
    for label, specs in (
        ("user", schema.single_valued("user")),
        ("item", schema.single_valued("item")),
        ("item_multi", schema.multi_valued("item")),
    ):
        if label not in inputs:
            continue
        names = [f"{s.name}x{s.max_values}" if s.multi_valued else s.name for s in specs]
        parts.append(f"{label}: [{', '.join(names)}]")
    return "; ".join(parts)
