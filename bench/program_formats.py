"""One ranker in four program formats: TorchScript (the baseline), a torch.export program
and that program compiled by AOTInductor for this machine and for the x86-64-v3 level (as
``--aoti-target`` stores it), timed on the same inputs in one process.

The model is a ranker of a model repository (by default ``deepfm``, what
``scripts/start.sh`` trains): its TorchScript artifact is loaded, the eager model is
rebuilt from the artifact's settings and weights, and that eager model is exported
(``recserve train --program-format export`` writes the same programs) and compiled
ahead of time by AOTInductor (recserve.engine.aoti, as the server does). For each format:

- ``head``: the crossing head alone, on the rows the fused C++ crossing kernel gives for
  N candidates (one user);
- ``whole ranking``: the crossing kernel, the head and the scores, N candidates;
- ``model program``: the whole ``model`` program (the path without the crossing block).

Each is timed ``--repeats`` times, formats interleaved, one torch thread; the table gives
the median and its ratio to TorchScript (above 1: slower), and the largest relative
differences of its logits and of its scores (the sigmoids a Rank answer reports) from
the eager model's; a last line gives how far the eager model's own float32 logits are
from the same model run in float64, the scale of float32 rounding.

    recserve train --model deepfm --data ml-100k
    python bench/program_formats.py                       # 1000 candidates
    python bench/program_formats.py --candidates 100,1000 --repeats 200 --no-aoti
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import machine, newest_version

from recserve.core import kernels
from recserve.engine.aoti import compile_aoti, compile_package, load_package
from recserve.engine.artifact import Artifact, load_artifact
from recserve.engine.batch_plan import HeadRows
from recserve.engine.pipeline import RankerPipeline
from recserve.training.export import crossing_block, export_ranker
from recserve.training.features import EncodedData
from recserve.training.registry import MODELS
from recserve.training.trainer import build_ranker

# aoti: compiled for this machine; aoti-x86-64-v3: for the AVX2 level, as stored in artifacts
FORMATS = ("torchscript", "export", "aoti", "aoti-x86-64-v3")


def eager_model(artifact: Artifact) -> torch.nn.Module:
    """The artifact's ranker as an eager module: built from its settings, given the
    TorchScript program's weights (the same parameter names)."""
    config_type = MODELS[artifact.family].config_type
    known = {f.name for f in dataclasses.fields(config_type)}
    config = config_type(**{k: v for k, v in artifact.manifest["config"].items() if k in known})
    encoded = EncodedData(artifact.schema, dict(artifact.tables), *(np.empty(0),) * 3)
    model = build_ranker(artifact.family, encoded, config)
    # the program also saved the index buffers the eager model rebuilds itself
    loaded = model.load_state_dict(artifact.modules["model"].state_dict(), strict=False)
    if loaded.missing_keys:
        raise ValueError(f"the program lacks the weights {loaded.missing_keys}")
    return model.eval()


def aoti(program_file: Path, out: Path, target: str | None) -> Callable[..., torch.Tensor]:
    """An exported program file compiled by AOTInductor, as the server runs it: for this
    machine (``target`` None: what ``--compile-programs aoti`` does at load) or for an
    x86-64 level (what ``--aoti-target`` stores in an artifact)."""
    program = torch.export.load(str(program_file))
    if target is None:
        return compile_aoti(program)
    compile_package(program, out, target)
    return load_package(out.read_bytes())


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--candidates", default="1000")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per point")
    parser.add_argument("--rounds", type=int, default=5, help="format interleavings")
    parser.add_argument("--no-aoti", action="store_true", help="skip AOTInductor (slow build)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    version = newest_version(args.model_repo, args.model)
    if version is None:
        return 2
    artifact = load_artifact(version)
    if artifact.crossing is None or artifact.program_format != "torchscript":
        print("error: the bench needs a TorchScript ranker with a crossing block", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    model = eager_model(artifact)
    formats = [f for f in FORMATS if not (f.startswith("aoti") and args.no_aoti)]

    with tempfile.TemporaryDirectory() as tmp:
        encoded = EncodedData(artifact.schema, dict(artifact.tables), *(np.empty(0),) * 3)
        exported_dir = export_ranker(
            model, encoded, tmp, "exported", family=artifact.family, metrics={}, config={},
            program_format="export",
        )  # fmt: skip
        pipelines = {
            "torchscript": (RankerPipeline(artifact), RankerPipeline(artifact, use_crossing=False)),
        }
        exported = load_artifact(exported_dir)
        pipelines["export"] = (
            RankerPipeline(exported),
            RankerPipeline(exported, use_crossing=False),
        )
        for name in (f for f in formats if f.startswith("aoti")):
            target = name.removeprefix("aoti-") if name != "aoti" else None
            started = time.perf_counter()
            crossing, whole = RankerPipeline(exported), RankerPipeline(exported, use_crossing=False)
            out = Path(tmp)
            crossing.crossing.head = aoti(exported_dir / "head.pt2", out / "head.aoti.pt2", target)
            whole.module = aoti(exported_dir / "model.pt2", out / "model.aoti.pt2", target)
            pipelines[name] = (crossing, whole)
            print(
                f"{name}: AOTInductor build of both programs {time.perf_counter() - started:.0f} s"
            )
        report(args, artifact, model, pipelines, formats)
    return 0


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One user against N candidate rows, in the forms each part takes."""

    user: np.ndarray  # encoded user row
    rows: np.ndarray  # item rows
    head_rows: HeadRows  # the crossing kernel's output: the head's input
    model_rows: HeadRows  # the whole program's input (user, item, item_multi)


def part_calls(pipelines, formats: list[str], x: Inputs) -> dict[tuple[str, str], Callable]:
    """(format, part) -> a call of that part on the inputs."""
    calls: dict[tuple[str, str], Callable] = {}
    for name in formats:
        crossing, whole = pipelines[name]
        calls[(name, "head")] = partial(crossing.crossing.head_logits, *x.head_rows.inputs)
        calls[(name, "whole ranking")] = partial(crossing.score_rows, x.user, x.rows)
        calls[(name, "model program")] = partial(whole.head, *x.model_rows.inputs)
    return calls


def report(args, artifact: Artifact, model, pipelines, formats: list[str]) -> None:
    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, recserve SIMD level "
          f"{kernels.SIMD_LEVEL}, torch {host['torch']}, 1 torch thread")  # fmt: skip
    print(f"model: {artifact.name} v{artifact.version} ({artifact.family}); median of "
          f"{args.repeats} calls x {args.rounds} rounds, formats interleaved")  # fmt: skip
    rng = np.random.default_rng(args.seed)
    tables = artifact.tables
    _, _, head = crossing_block(model, len(artifact.schema.single_valued("user")))
    n_items = tables["item_ids"].size
    for n in (int(c) for c in args.candidates.split(",")):
        rows = rng.choice(n_items, size=min(n, n_items), replace=False)
        user = tables["user_features"][int(rng.integers(tables["user_ids"].size))]
        head_rows, _ = pipelines["torchscript"][0].crossing.head_inputs(user, rows)
        model_rows = HeadRows(
            (
                torch.from_numpy(user)[None].expand(rows.size, -1),
                torch.from_numpy(tables["item_features"][rows]),
                torch.from_numpy(tables["item_multi"][rows]),
            )
        )
        x = Inputs(user, rows, head_rows, model_rows)
        with torch.no_grad():
            eager = {
                "head": head(*head_rows.inputs).reshape(-1).double(),
                "model program": model(*model_rows.inputs).double(),
            }
            # the same computations in float64: how far float32 rounding alone moves logits
            exact = {
                "head": copy.deepcopy(head).double()(*_float64(head_rows.inputs)).reshape(-1),
                "model program": copy.deepcopy(model).double()(*model_rows.inputs),
            }
        calls = part_calls(pipelines, formats, x)
        with torch.no_grad():
            errors = {
                (name, part): _differences(calls[(name, part)](), eager[part])
                for name in formats
                for part in eager
            }
        times: dict[tuple[str, str], list[float]] = {key: [] for key in calls}
        for _ in range(args.rounds):
            for key, call in calls.items():
                call()  # warm
                times[key].append(median_ms(call, args.repeats))
        print(f"\nN = {rows.size} candidates")
        print("| part | format | ms | x TorchScript | logits: max relative difference from "
              "eager | scores: max relative difference from eager |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- |")
        for part in ("head", "whole ranking", "model program"):
            base = statistics.median(times[("torchscript", part)])
            for name in formats:
                ms = statistics.median(times[(name, part)])
                logit, score = errors.get((name, part), errors[(name, "head")])  # the ranking's
                print(
                    f"| {part} | {name} | {ms:.3f} | {ms / base:.2f}x | {logit:.1e} | {score:.1e} |"
                )
        rounding = {part: _differences(eager[part], exact[part]) for part in eager}
        print("eager float32 against the same model in float64 (logits, scores): "
              + ", ".join(f"{part} {a:.1e}, {b:.1e}" for part, (a, b) in rounding.items()))  # fmt: skip


def _float64(inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return [t.double() if t.is_floating_point() else t for t in inputs]


def _differences(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Largest relative differences from ``reference`` of the logits (each against at
    least 1e-3, so a logit near 0 does not divide by ~0) and of the scores (sigmoids)."""
    logits, reference = logits.reshape(-1).double(), reference.reshape(-1).double()
    logit = (logits - reference).abs() / reference.abs().clamp(min=1e-3)
    score = (logits.sigmoid() - reference.sigmoid()).abs() / reference.sigmoid()
    return float(logit.max()), float(score.max())


if __name__ == "__main__":
    sys.exit(main())
