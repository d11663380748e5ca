"""The head's cost per request when a batch runs as one call against calls of at most
``--max-rows`` rows (recserve.engine.batch_plan.MAX_HEAD_ROWS), in one run.

A batch of ranking requests runs the head program on their rows concatenated. Past a few
thousand rows the activations leave the caches, so one call on every row of the batch
can cost more per row than a few smaller calls. This measures it on the DeepFM of
scripts/start.sh, through ``RankerPipeline.compute_batch`` (the padding, the copy into
the batch buffer and the program: what the server's batch worker runs), with one torch
thread, as each compute thread of the server has.

    python bench/head_batching.py                         # 100 and 1000 candidates
    python bench/head_batching.py --max-rows 1024,2048,4096 --rounds 7

For each number of candidates and batch size, the CPU time per request (median of
--rounds, the settings alternating within each round) with the whole batch in one call
(the baseline) and with each cap, and the ratio baseline / cap (above 1: the cap is
faster). The machine and the SIMD level head the table.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from recserve.core import kernels
from recserve.engine import batch_plan
from recserve.engine.artifact import list_versions, load_artifact
from recserve.engine.dispatch import make_pipeline

ONE_CALL = 1 << 62  # a cap no batch reaches: the whole batch in one call


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_request_ms(pipeline, prepared: list, max_rows: int, calls: int) -> float:
    batch_plan.MAX_HEAD_ROWS = max_rows
    pipeline.compute_batch(prepared)  # warm: the buffers' sizes, the program's caches
    start = cpu_seconds()
    for _ in range(calls):
        pipeline.compute_batch(prepared)
    return 1000 * (cpu_seconds() - start) / (calls * len(prepared))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--model", default="deepfm")
    parser.add_argument("--candidates", default="100,1000")
    parser.add_argument("--batch-sizes", default="4,8,16,32")
    parser.add_argument("--max-rows", default="1024,2048,4096")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=8, help="batches per measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    directory = args.model_repo / args.model
    versions = list_versions(directory)
    if not versions:
        print(
            f"error: no version of {args.model} in {args.model_repo}; run scripts/start.sh",
            file=sys.stderr,
        )
        return 2
    pipeline = make_pipeline(load_artifact(directory / str(versions[-1])))
    caps = [int(v) for v in args.max_rows.split(",")]
    rng = np.random.default_rng(0)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import machine

    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, recserve SIMD level "
          f"{kernels.SIMD_LEVEL}, torch {torch.__version__}, 1 torch thread")  # fmt: skip
    print(f"CPU ms per request of compute_batch, median of {args.rounds} rounds "
          f"({args.calls} batches each); ratio = one call / capped")  # fmt: skip
    header = "| candidates | batch | one call |" + "".join(f" max {c} rows | x |" for c in caps)
    print(header)
    print("|" + " --- |" * (3 + 2 * len(caps)))
    for n in (int(v) for v in args.candidates.split(",")):
        for size in (int(v) for v in args.batch_sizes.split(",")):
            prepared = [
                pipeline.prepare_rank(
                    int(rng.choice(pipeline.user_ids)),
                    rng.choice(pipeline.item_ids, min(n, pipeline.num_items), replace=False),
                    10,
                )
                for _ in range(size)
            ]
            samples: dict[int, list[float]] = {cap: [] for cap in [ONE_CALL, *caps]}
            for _ in range(args.rounds):
                for cap, measured in samples.items():
                    measured.append(per_request_ms(pipeline, prepared, cap, args.calls))
            base = statistics.median(samples[ONE_CALL])
            cells = "".join(
                f" {statistics.median(samples[c]):.3f} | {base / statistics.median(samples[c]):.2f}x |"
                for c in caps
            )
            print(f"| {n} | {size} | {base:.3f} |{cells}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
