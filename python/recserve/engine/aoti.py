"""AOTInductor: a ``torch.export`` program compiled into fused C++ kernels.

Two ways to get one (docs/artifact.md, docs/serving.md):

- compiled when the model loads, on and for the serving machine (:func:`compile_aoti`);
- compiled when the artifact is written, for a named x86-64 level
  (:data:`AOTI_TARGETS`), and stored in the artifact next to the portable program
  (:func:`compile_package`); a server loads it (:func:`load_package`) only when told to
  trust it and when :func:`unfit_reason` finds nothing that stops this machine running it.

A stored compilation is native code, built for one instruction set and one libtorch: an
AVX-512 build would crash an AVX2 machine, and another torch may not link it. So it is
compiled for a level rather than for the building machine (``-march=native``), and the
manifest records the level and the torch it was built with. The one level is x86-64-v3
(AVX2, FMA): every machine here has it, and the compiled program ran as fast as one
compiled for this AVX-512 machine (docs/performance.md). An AVX-512 level is left out on
purpose: torch would add whatever 512-bit extensions the building CPU has (VNNI, AMX),
which the level's name does not promise.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .programs import first_line, torchscript_deprecation_silenced, tree_spec_warning_silenced

# --compile-programs: none; compile at load; or load the artifact's stored compilation
# when it fits this machine (native code from the model repository) and compile otherwise.
COMPILE_MODES = ("none", "aoti", "aoti-stored")
# How far a compilation's scores may be from the exported program's (its kernels
# reassociate sums): one written to an artifact, or served, beyond it is refused.
SCORE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class AotiTarget:
    """An x86-64 micro-architecture level: the compiler's -march, the width of the
    vector code the kernels are written with, and the CPU flags (as /proc/cpuinfo names
    them) a machine needs to run the result."""

    march: str
    simdlen: int
    cpu_flags: frozenset[str]


_V2 = {"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"}
_V3 = _V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}
AOTI_TARGETS = {"x86-64-v3": AotiTarget("x86-64-v3", 256, frozenset(_V3))}  # AVX2 and FMA


@dataclass(frozen=True)
class Compilation:
    """What became of a served program's compilation: how it was had, the seconds that
    took, the largest relative difference of the served scores from the exported
    program's on the probe, and whether it serves (False: it moved them by more than
    :data:`SCORE_TOLERANCE`, and the exported program serves)."""

    how: str
    seconds: float
    difference: float
    served: bool


class CompiledProgram(nn.Module):
    """A program compiled by AOTInductor. Its kernels assume the input strides they were
    compiled for, so inputs are made contiguous (a ranker's user row arrives expanded
    with stride 0)."""

    def __init__(self, runner: Any) -> None:
        super().__init__()
        self.runner = runner

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.runner(*(x.contiguous() for x in inputs))


def compile_aoti(program: torch.export.ExportedProgram) -> CompiledProgram:
    """``program`` compiled by AOTInductor on and for this machine, loaded."""
    with tempfile.TemporaryDirectory(prefix="recserve-aoti-") as folder:
        path = os.path.join(folder, "program.pt2")
        with _compiler_quiet():
            torch._inductor.aoti_compile_and_package(program, package_path=path)
        return _load(path)


def compile_package(program: torch.export.ExportedProgram, path: Path, target: str) -> None:
    """Writes ``program`` compiled by AOTInductor for ``target`` (a key of
    :data:`AOTI_TARGETS`) to ``path``, whatever machine this is."""
    level = AOTI_TARGETS[target]
    settings = {"cpp.march": level.march, "cpp.simdlen": level.simdlen}
    with _compiler_quiet(), torch._inductor.config.patch(settings):
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


def load_package(data: bytes) -> CompiledProgram:
    """The stored compilation in ``data`` (bytes whose checksum the caller verified),
    loaded from a private copy, so that what runs is what was verified."""
    with tempfile.TemporaryDirectory(prefix="recserve-aoti-") as folder:
        path = os.path.join(folder, "program.pt2")
        Path(path).write_bytes(data)
        return _load(path)


def package_difference(path: Path, program: torch.export.ExportedProgram) -> float:
    """The largest relative difference of the scores (sigmoids of the logits) of the
    compilation at ``path`` from ``program``'s, on the example inputs ``program`` was
    exported with."""
    if program.example_inputs is None:
        raise ValueError("the program carries no example inputs to check its compilation on")
    args, kwargs = program.example_inputs
    with torch.no_grad(), tree_spec_warning_silenced():
        expected = program.module()(*args, **kwargs).double().sigmoid()
        got = load_package(path.read_bytes())(*args, **kwargs).double().sigmoid()
    return score_difference(got, expected)


def score_difference(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest relative difference of scores (probabilities) from the ``expected`` ones
    (a score that underflowed to 0 counts against the smallest float32)."""
    if expected.numel() == 0:
        return 0.0
    scale = expected.clamp(min=torch.finfo(torch.float32).tiny)
    return float(((got.reshape(expected.shape) - expected).abs() / scale).max())


def compiler_missing() -> str | None:
    """Why AOTInductor cannot compile here (no C++ compiler), or None."""
    from torch._inductor import cpp_builder  # loaded only where a compilation is asked for

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - torch raises its own kinds when the search fails
        return f"AOTInductor finds no C++ compiler ({first_line(exc)})"
    return None


def unfit_reason(target: str, built_with: str) -> str | None:
    """Why a compilation for ``target`` built with torch ``built_with`` must not run
    here (None: it may)."""
    if target not in AOTI_TARGETS:
        return f"it was compiled for {target!r}, which this recserve does not know"
    if built_with != torch.__version__:
        return f"it was built with torch {built_with}, this is torch {torch.__version__}"
    missing = AOTI_TARGETS[target].cpu_flags - cpu_flags()
    if missing:
        return f"this CPU lacks {', '.join(sorted(missing))} (needed by {target})"
    return None


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags as /proc/cpuinfo names them; empty where that cannot be
    read or the machine is not x86-64, so that no x86-64 target fits."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return frozenset()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def _load(path: str) -> CompiledProgram:
    # torch compares the package's instruction set with this CPU's and warns on any
    # difference, also for an AVX2 package on an AVX-512 machine; unfit_reason decides.
    package_log = logging.getLogger("torch.export.pt2_archive._package")
    level = package_log.level
    package_log.setLevel(logging.ERROR)
    try:
        return CompiledProgram(torch._inductor.aoti_load_package(path))
    finally:
        package_log.setLevel(level)


@contextmanager
def _compiler_quiet() -> Iterator[None]:
    # AOTInductor calls torch.jit itself; its deprecation notice is not the caller's
    with torchscript_deprecation_silenced(), tree_spec_warning_silenced():
        yield
