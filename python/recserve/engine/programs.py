"""Program formats of an artifact: how a model's program is written and read back.

Two formats (manifest ``program_format``, docs/artifact.md):

- ``torchscript``: a ``torch.jit`` archive (``.pt``), what recserve has always written;
- ``export``: a ``torch.export`` program (``.pt2``), the format PyTorch now points
  serving to; read back with ``torch.export.load`` and run as its ``.module()``.

A ``.pt2`` archive may carry pickled payloads (tensor subclasses, custom objects, a
legacy layout), and ``torch.export.load`` would unpickle them with ``weights_only=False``.
recserve never runs a pickle from a file: :func:`check_pt2_plain` reads the archive's own
index first and refuses one that holds anything but plain tensors and JSON.
"""

from __future__ import annotations

import copy
import io
import json
import os
import re
import warnings
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

PROGRAM_FORMATS = ("torchscript", "export")
PROGRAM_SUFFIXES = {"torchscript": ".pt", "export": ".pt2"}
# What a program is once loaded: a TorchScript module, or an exported program's module.
Program = nn.Module


class ProgramError(ValueError):
    """A program file that must not be loaded, or a model that cannot be exported."""


@contextmanager
def torchscript_deprecation_silenced() -> Iterator[None]:
    """PyTorch deprecates TorchScript in favour of torch.export; recserve still writes and
    reads it (the ``export`` format is the other choice). Silence only that warning,
    only around our own TorchScript calls."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning
        )
        yield


@contextmanager
def tree_spec_warning_silenced() -> Iterator[None]:
    """Copying or compiling an exported program makes torch warn about its own internal
    tree specs (torch 2.13); only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
            category=FutureWarning,
        )
        yield


def copy_program(program: Program) -> Program:
    """A deep copy of a loaded program."""
    with tree_spec_warning_silenced():
        return copy.deepcopy(program)


def program_format_of(program: Any) -> str:
    """The format a program object is written in (raises ProgramError for another object)."""
    if isinstance(program, torch.jit.ScriptModule):
        return "torchscript"
    if isinstance(program, torch.export.ExportedProgram):
        return "export"
    raise ProgramError(
        f"a program must be a TorchScript module or a torch.export ExportedProgram, "
        f"not {type(program).__name__}"
    )


def save_program(
    program: torch.jit.ScriptModule | torch.export.ExportedProgram, path: str | os.PathLike[str]
) -> None:
    """Writes ``program`` to ``path`` in its own format."""
    if program_format_of(program) == "torchscript":
        with torchscript_deprecation_silenced():
            torch.jit.save(program, str(path))
    else:
        torch.export.save(program, str(path))


def load_program(data: bytes, program_format: str | None) -> Program:
    """The program in ``data`` (the bytes of its file), in eval mode, on the CPU."""
    if program_format == "torchscript":
        with torchscript_deprecation_silenced():
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        module.eval()
        return module
    if program_format == "export":
        return load_exported(data).module()
    raise ProgramError(
        f"program format {program_format!r} is not supported "
        f"(supported: {', '.join(PROGRAM_FORMATS)})"
    )


# The entries of a .pt2 archive that holds plain programs, below its one root folder. An
# allow-list: torch.export.load also reads other layouts (a legacy one, pickled payloads,
# compiled AOTInductor libraries), and any entry outside it refuses the archive.
PT2_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/\w+\.json"
    r"|data/weights/\w+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/\w+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/\w+\.pt)\Z"
)


def load_exported(data: bytes) -> torch.export.ExportedProgram:
    """The ``torch.export`` program in ``data``, after :func:`check_pt2_plain`; any
    failure is a ProgramError."""
    check_pt2_plain(data)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - torch.export.load raises many kinds
        raise ProgramError(f"not a loadable torch.export program ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def check_pt2_plain(data: bytes) -> None:
    """Refuses a ``.pt2`` archive that ``torch.export.load`` would not read as plain
    tensors and JSON: an entry outside :data:`PT2_ENTRIES` (a legacy layout, custom
    objects, compiled code), an entry name twice, no ``pt2`` archive format, payloads
    marked as pickles, or sample inputs that ``torch.load(weights_only=True)`` refuses."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise ProgramError("not a torch.export program: the file is not a .pt2 archive") from None
    with archive:
        names = archive.namelist()
        if len(set(names)) != len(names):
            raise ProgramError("the .pt2 archive names an entry twice")
        roots = {name.split("/", 1)[0] for name in names}
        if len(roots) != 1 or any("/" not in name for name in names):
            raise ProgramError("the .pt2 archive must hold one folder (torch.export.save's layout)")
        (root,) = roots
        for name in names:
            if not PT2_ENTRIES.match(name[len(root) + 1 :]):
                raise ProgramError(
                    f"the .pt2 archive holds {name}, which is not part of a plain torch.export "
                    "program (export plain tensors: no custom objects, no compiled code)"
                )
        try:
            if archive.read(f"{root}/archive_format") != b"pt2":
                raise ProgramError("the .pt2 archive's format is not pt2")
        except KeyError:
            raise ProgramError("the .pt2 archive has no archive_format entry") from None
        if not any(name.startswith(f"{root}/models/") for name in names):
            raise ProgramError("not a torch.export program: the archive holds no model")
        for name in names:
            if name.endswith("_config.json"):
                _check_payload_config(archive.read(name), name)
            elif "/data/sample_inputs/" in name:
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception as exc:  # noqa: BLE001 - any failure means "not plain"
                    raise ProgramError(
                        f"the .pt2 archive's {name} is not plain tensors ({first_line(exc)})"
                    ) from None


def _check_payload_config(raw: bytes, name: str) -> None:
    try:
        entries = json.loads(raw)["config"]
        items = [(str(fqn), dict(entry)) for fqn, entry in entries.items()]
    except (
        json.JSONDecodeError,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        ValueError,
        AttributeError,
    ):
        raise ProgramError(f"the .pt2 archive's {name} is not a payload index") from None
    for fqn, entry in items:
        path_name = str(entry.get("path_name", ""))
        # constants that are not tensors (torchbind objects) are pickled too
        plain = re.fullmatch(r"(weight|tensor)_\d+", path_name) is not None
        if entry.get("use_pickle", False) is not False or not plain:
            raise ProgramError(
                f"the .pt2 archive stores {fqn!r} as a pickled object; export plain tensors "
                "(no tensor subclasses or custom objects)"
            )


def export_program(
    model: nn.Module, example_inputs: Sequence[torch.Tensor], dynamic_dims: Sequence[int | None]
) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode; dimension ``dynamic_dims[i]`` of input i
    is dynamic, one size shared by all of them (None: input i has a fixed shape). An
    example's dynamic size must be at least 2, or torch.export fixes it."""
    model.eval()
    size = torch.export.Dim("n", min=1)
    shapes = tuple({d: size} if d is not None else None for d in dynamic_dims)
    try:
        with warnings.catch_warnings():
            # nn.GRU and nn.LSTM re-assign their flattened weights while traced, which torch
            # reports; the exported program reads the parameters themselves (tested)
            warnings.filterwarnings(
                "ignore", message=r"The tensor attributes .* were assigned during export"
            )
            return torch.export.export(model, tuple(example_inputs), dynamic_shapes=shapes)
    except Exception as exc:
        raise ProgramError(f"torch.export could not export {type(model).__name__}: {exc}") from exc
