"""Recommend of a sequence model in its two program formats: the TorchScript encoder (the
baseline) against the torch.export one, in one process.

Two versions of one model, one per format (the same seed trains the same weights):

    recserve train --model sasrec --epochs 1 --model-repo /tmp/seqfmt --name ts
    recserve train --model sasrec --epochs 1 --model-repo /tmp/seqfmt --name ex --program-format export
    python bench/sequence_formats.py --model-repo /tmp/seqfmt --torchscript ts --export ex

``SequencePipeline.recommend`` (k = 10) for users with short and with long stored
histories, one torch thread, formats interleaved, median of the rounds; prints ms per
Recommend and the ratio export / TorchScript (above 1: the exported encoder is slower).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving import machine, newest_version

from recserve.core import kernels
from recserve.engine.artifact import load_artifact
from recserve.engine.dispatch import make_pipeline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, required=True)
    parser.add_argument("--torchscript", default="ts", help="the model in TorchScript")
    parser.add_argument("--export", default="ex", help="the same model, exported")
    parser.add_argument("--users", type=int, default=20, help="users per history length")
    parser.add_argument("--repeats", type=int, default=5, help="passes over them per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    versions = [newest_version(args.model_repo, name) for name in (args.torchscript, args.export)]
    if None in versions:
        return 2
    torch.set_num_threads(1)
    pipelines = dict(zip(("torchscript", "export"), (make_pipeline(load_artifact(v)) for v in versions), strict=True))  # fmt: skip
    scripted = pipelines["torchscript"]
    lengths = np.diff(scripted.history_indptr)
    host = machine()
    print(f"machine: {host['cpu']}, {host['cores']} cores, recserve SIMD level "
          f"{kernels.SIMD_LEVEL}, torch {host['torch']}, 1 torch thread")  # fmt: skip
    print("| users | TorchScript ms | torch.export ms | x |")
    print("| --- | --- | --- | --- |")
    for label, chosen in (
        ("histories of 20-25 items", (lengths >= 20) & (lengths <= 25)),
        ("histories of 60 items or more", lengths >= 60),
    ):
        users = scripted.user_ids[chosen][: args.users].tolist()
        if not users:
            continue
        times: dict[str, list[float]] = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, pipeline in pipelines.items():
                started = time.perf_counter()
                for _ in range(args.repeats):
                    for user in users:
                        pipeline.recommend(user, 10)
                times[name].append((time.perf_counter() - started) / (args.repeats * len(users)))
        base, exported = (statistics.median(times[n]) * 1e3 for n in pipelines)
        print(f"| {label} ({len(users)}) | {base:.3f} | {exported:.3f} | {exported / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
