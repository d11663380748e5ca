"""Fused feature crossing (recserve) against TorchScript, measured in the same run.

The models (--models): DeepFM, Wide&Deep and DCN-v2 with the default sizes (embedding
16, MLP 256-128-64, DCN-v2 with 3 cross layers before it) trained for --epochs on
synthetic MovieLens-like data with --items items, exported and loaded as the server
does. One user against N random candidates, on one thread (torch.set_num_threads(1)).
Each stage against what a user would run instead:

- crossing stage: gather the fields, first-order sum, FM term and the first MLP layer
  with its ReLU. recserve: user part (numpy) + the C++ kernel over the precomputed item
  tables. Baseline: a TorchScript module doing exactly those ops on the model's inputs.
  DeepFM only.
- whole ranking, logits of N candidates: recserve crossing + TorchScript head against
  the model's whole TorchScript forward (its inputs gathered by torch indexing in both).
- whole, bf16 head / whole, int8 head: the same with the opt-in bfloat16 head
  (head_dtype="bfloat16") or int8 head (head_dtype="int8", recserve.engine.int8_head), against
  the same float32 forward.

    python bench/crossing.py                      # 1k and 10k candidates of 20k items
    python bench/crossing.py --candidates 1000 --repeats 200
    python bench/crossing.py --models deepfm --candidates 1000   # short

Prints the median of --repeats timed calls for each (timed in alternating blocks) and
baseline/recserve (above 1:
recserve is faster), the memory of the precomputed item tables, and the largest
relative difference between the two paths' scores.

Then the head precisions side by side, named with the CPU and its SIMD level: the head
alone (as served: rows padded by recserve.engine.batch_plan) and the whole ranking, in fp32,
bf16 and int8, each with its speed-up over fp32 (all timed in interleaved blocks), the
largest logit difference from fp32, and whether a row's logit is the same alone as among
N rows. For reference (not served), torch.ao.quantization.quantize_dynamic's int8 head
(one activation scale per call) on each quantized engine this PyTorch has.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from recserve.core import kernels
from recserve.engine.artifact import load_artifact
from recserve.engine.batch_plan import HeadRows, run_head_rows
from recserve.engine.int8_head import eager_head
from recserve.engine.pipeline import RankerPipeline
from recserve.engine.programs import torchscript_deprecation_silenced
from recserve.training.data import make_synthetic_movielens
from recserve.training.models.deepfm import DeepFM
from recserve.training.models.layers import FieldEmbedding
from recserve.training.ranker import train_ranker
from recserve.training.registry import MODELS


class CrossingStage(nn.Module):
    """The crossing stage of DeepFM.forward, as TorchScript runs it: (linear [B], hidden [B, H1])."""

    def __init__(self, model: DeepFM) -> None:
        super().__init__()
        first, _ = model.split_mlp()
        self.embedding: FieldEmbedding = model.embedding
        self.first_order: FieldEmbedding = model.first_order
        self.bias = model.bias
        self.first = first

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        single = torch.cat([user, item], dim=1)  # [B, Fu + Fi]
        v = self.embedding(single, item_multi)  # [B, F, d]
        first = self.first_order(single, item_multi).sum(dim=(1, 2))  # [B]
        s = v.sum(dim=1)  # [B, d]
        fm = 0.5 * (s.pow(2) - v.pow(2).sum(dim=1)).sum(dim=1)  # [B]
        hidden = torch.relu(self.first(v.flatten(start_dim=1)))  # [B, H1]
        return self.bias + first + fm, hidden


def paired_medians(
    ours: Callable[[], object], base: Callable[[], object], repeats: int, rounds: int = 5
) -> tuple[float, float]:
    """Median seconds of each over ``repeats`` calls, timed in alternating blocks of
    ``repeats / rounds`` calls: a noisy neighbour hits both, and within a block each keeps
    its tables in cache as a busy server would."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((ours, times[0]), (base, times[1])):
            fn()  # warm up after the other one ran
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                fn()
                out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int, rounds: int = 5
) -> dict[str, float]:
    """:func:`paired_medians` for any number of functions: median seconds of each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(max(1, repeats // rounds)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def cpu_description() -> str:
    """The CPU's name, recserve's SIMD level and the CPU's int8/bf16 instructions."""
    name, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
    found = [f for f in wanted if f in flags] or ["none of " + "/".join(wanted)]
    return (
        f"{name}; recserve SIMD level {kernels.SIMD_LEVEL}; int8/bf16 instructions: "
        f"{' '.join(found)}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})"
    )


def run_crossing(args: argparse.Namespace) -> list[dict[str, object]]:
    """One row per (model, stage, candidates): times in seconds, ratio, agreement; see main()."""
    torch.manual_seed(0)
    data = make_synthetic_movielens(
        n_users=args.users, n_items=args.items, n_interactions=args.interactions
    )
    rows_out: list[dict[str, object]] = []
    for name in args.models:
        config = MODELS[name].config_type(
            epochs=args.epochs, patience=args.epochs, num_threads=args.train_threads
        )
        torch.set_num_threads(args.train_threads)
        trained = train_ranker(name, data, config, show_progress=False)
        rows_out += run_model(args, name, trained)
    return rows_out


def agreement(got: np.ndarray, expected: np.ndarray) -> tuple[float, float]:
    """(max relative difference of the probabilities, of the logits relative to the largest)."""
    got, expected = got.astype(np.float64), expected.astype(np.float64)
    p_got, p_expected = 1 / (1 + np.exp(-got)), 1 / (1 + np.exp(-expected))
    score_rel = float(np.max(np.abs(p_got - p_expected) / np.abs(p_expected)))
    return score_rel, float(np.max(np.abs(got - expected)) / np.max(np.abs(expected)))


def run_model(args: argparse.Namespace, name: str, trained) -> list[dict[str, object]]:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as repo:
        artifact = load_artifact(trained.export(repo, name, "synthetic"))
    pipeline = RankerPipeline(artifact)
    crossing = pipeline.crossing
    assert crossing is not None, "the exported artifact has no crossing block"
    bf16 = RankerPipeline(artifact, head_dtype="bfloat16").crossing
    int8 = RankerPipeline(artifact, head_dtype="int8").crossing
    assert bf16 is not None and int8 is not None
    stage = None
    if name == "deepfm":
        with torchscript_deprecation_silenced():
            stage = torch.jit.script(CrossingStage(trained.model.eval()))
    program = artifact.modules["model"]
    items = torch.from_numpy(artifact.tables["item_features"])
    multi = torch.from_numpy(artifact.tables["item_multi"])
    user = pipeline.user_features[min(5, pipeline.num_users - 1)]
    rng = np.random.default_rng(0)
    rows_out: list[dict[str, object]] = []
    for n in args.candidates:
        rows = np.sort(rng.choice(pipeline.num_items, n, replace=False)).astype(np.int64)
        index = torch.from_numpy(rows)

        def inputs(index: torch.Tensor = index, n: int = n) -> tuple[torch.Tensor, ...]:
            return torch.from_numpy(user).expand(n, -1), items[index], multi[index]

        def torch_stage(inputs=inputs) -> object:
            with torch.inference_mode():
                return stage(*inputs())

        def torch_whole(inputs=inputs) -> object:
            with torch.inference_mode():
                return program(*inputs())

        def ours_stage(rows: np.ndarray = rows) -> object:
            return crossing.cross(crossing.user_part(user), rows)

        def ours_whole(rows: np.ndarray = rows) -> object:
            return crossing.logits(user, rows)

        def ours_bf16(rows: np.ndarray = rows) -> object:
            return bf16.logits(user, rows)

        def ours_int8(rows: np.ndarray = rows) -> object:
            return int8.logits(user, rows)

        outputs = ours_stage()

        head_inputs = [torch.from_numpy(o) for o in (outputs if name == "dcnv2" else outputs[1:])]

        def head_only(head_inputs=head_inputs) -> object:
            with torch.inference_mode():
                return crossing.head(*head_inputs)

        head_s = paired_medians(head_only, head_only, args.repeats)[0]
        expected = torch_whole().numpy()

        stages = [
            ("whole ranking", ours_whole, ours_whole()),
            ("whole, bf16 head", ours_bf16, ours_bf16()),
            ("whole, int8 head", ours_int8, ours_int8()),
        ]
        if stage is not None:
            stages.insert(0, ("crossing stage", ours_stage, ours_whole()))
        for stage_name, ours, got in stages:
            base = torch_stage if stage_name == "crossing stage" else torch_whole
            t_ours, t_base = paired_medians(ours, base, args.repeats)
            score_rel, logit_rel = agreement(got, expected)
            rows_out.append(
                dict(
                    table="crossing",
                    model=name,
                    stage=stage_name,
                    candidates=n,
                    recserve_s=t_ours,
                    torchscript_s=t_base,
                    ratio=t_base / t_ours,
                    head_s=head_s,
                    score_rel=score_rel,
                    logit_rel=logit_rel,
                    bytes_per_item=crossing.bytes_per_item,
                    items=crossing.num_items,
                    epochs=len(trained.history),
                    test_auc=trained.metrics["test_auc"],
                )
            )
        heads = {"fp32": crossing, "bf16": bf16, "int8": int8}
        rows_out += precision_rows(args, name, artifact, heads, user, rows, head_inputs)
    return rows_out


def ao_dynamic_heads(artifact) -> dict[str, Callable[..., torch.Tensor]]:
    """torch.ao.quantization.quantize_dynamic's int8 head ({nn.Linear}, qint8 weights) on
    each quantized engine this PyTorch has, set explicitly around each call."""
    eager = eager_head(artifact.crossing.head)
    out: dict[str, Callable[..., torch.Tensor]] = {}
    for engine in ("x86", "fbgemm", "onednn"):
        if engine not in torch.backends.quantized.supported_engines:
            continue
        torch.backends.quantized.engine = engine
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in PyTorch 2.13
            warnings.simplefilter("ignore")
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(eager), {nn.Linear}, dtype=torch.qint8
            )

        def head(*inputs: torch.Tensor, quantized=quantized, engine=engine) -> torch.Tensor:
            torch.backends.quantized.engine = engine
            with torch.inference_mode():
                return quantized(*inputs).reshape(-1)

        out[f"int8 per call ({engine}, torch.ao)"] = head
    return out


def precision_rows(
    args: argparse.Namespace,
    name: str,
    artifact,
    heads: dict,
    user: np.ndarray,
    rows: np.ndarray,
    head_inputs: list[torch.Tensor],
) -> list[dict[str, object]]:
    """fp32, bf16 and int8 heads (and the torch.ao reference) on the same candidates: the
    head alone as served, the whole ranking, logit differences, row independence."""
    work = HeadRows(tuple(head_inputs))
    first = HeadRows(tuple(t[:47] for t in head_inputs))
    programs: dict[str, Callable[..., torch.Tensor]] = {p: c.head_logits for p, c in heads.items()}
    programs.update(ao_dynamic_heads(artifact))
    head_fns = {p: lambda f=f: run_head_rows(f, [work]) for p, f in programs.items()}
    whole_fns = {p: lambda c=c: c.logits(user, rows) for p, c in heads.items()}
    timed = interleaved_medians(
        {**{("head", p): f for p, f in head_fns.items()},
         **{("whole", p): f for p, f in whole_fns.items()}},
        args.repeats,
    )  # fmt: skip
    reference = run_head_rows(programs["fp32"], [work])[0]
    out = []
    for precision, program in programs.items():
        logits = run_head_rows(program, [work])[0]
        alone = run_head_rows(program, [first])[0]
        whole = timed.get(("whole", precision))
        out.append(
            dict(
                table="precision",
                model=name,
                precision=precision,
                candidates=int(rows.size),
                head_s=timed[("head", precision)],
                head_x=timed[("head", "fp32")] / timed[("head", precision)],
                whole_s=whole,
                whole_x=None if whole is None else timed[("whole", "fp32")] / whole,
                logit_diff=float((logits - reference).abs().max()),
                row_independent=bool(torch.equal(alone, logits[:47])),
            )
        )
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="catalog size")
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs")
    parser.add_argument("--train-threads", type=int, default=2)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--models", nargs="+", default=["deepfm", "wide_deep", "dcnv2"])
    return parser


def print_crossing(all_rows: list[dict[str, object]], repeats: int) -> None:
    rows = [r for r in all_rows if r["table"] == "crossing"]
    first = rows[0]
    print(
        f"d=16, MLP 256-128-64 (DCN-v2: 3 cross layers first), trained {first['epochs']} "
        f"epochs on synthetic data, {first['items']} items; one thread, median of {repeats}"
    )
    header = (
        f"{'model':<10} {'stage':<17} {'N':>6} {'recserve ms':>12} {'TorchScript ms':>15} "
        f"{'TS/recserve':>12} {'max rel diff (score)':>21}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<10} {r['stage']:<17} {r['candidates']:>6} "
            f"{r['recserve_s'] * 1e3:>12.3f} {r['torchscript_s'] * 1e3:>15.3f} "
            f"{r['ratio']:>11.1f}x {r['score_rel']:>21.2e}"
        )
    for r in rows:
        if r["stage"] != "whole ranking":
            continue
        print(
            f"{r['model']} N={r['candidates']}: test AUC {r['test_auc']:.3f}, item tables "
            f"{r['bytes_per_item']} B/item ({r['bytes_per_item'] * r['items'] / 2**20:.1f} MiB); "
            f"the float32 head alone takes {r['head_s'] * 1e3:.3f} ms, so a float32 path is "
            f"at most {r['torchscript_s'] / r['head_s']:.1f}x faster than the full forward"
        )
    f32 = [r for r in rows if r["stage"] not in ("whole, bf16 head", "whole, int8 head")]
    worst = max(r["score_rel"] for r in f32)
    print(
        f"float32 scores agree within 1e-5 relative: {'yes' if worst <= 1e-5 else 'NO'} "
        f"({worst:.1e}); the bfloat16 and int8 heads are opt-in and not held to 1e-5"
    )
    print_precision([r for r in all_rows if r["table"] == "precision"], repeats)


def print_precision(rows: list[dict[str, object]], repeats: int) -> None:
    print()
    print(f"head precision: {cpu_description()}")
    print(
        f"one thread, median of {repeats} calls in 5 interleaved rounds; x fp32: fp32 time / "
        "this time (above 1: faster); rows alone = a row's logit is the same alone (47 "
        "rows) as among all N"
    )
    header = (
        f"{'model':<10} {'head':<33} {'N':>6} {'head ms':>8} {'x fp32':>7} "
        f"{'whole ms':>9} {'x fp32':>7} {'max |d logit|':>14} {'rows alone':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        whole = "-" if r["whole_s"] is None else f"{r['whole_s'] * 1e3:.3f}"
        whole_x = "-" if r["whole_x"] is None else f"{r['whole_x']:.2f}x"
        print(
            f"{r['model']:<10} {r['precision']:<33} {r['candidates']:>6} "
            f"{r['head_s'] * 1e3:>8.3f} {r['head_x']:>6.2f}x {whole:>9} {whole_x:>7} "
            f"{r['logit_diff']:>14.2e} {'same' if r['row_independent'] else 'DIFFERS':>11}"
        )


def main() -> None:
    args = build_parser().parse_args()
    print_crossing(run_crossing(args), args.repeats)


if __name__ == "__main__":
    main()
