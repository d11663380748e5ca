"""What an explanation costs: Rank with explain = true against a plain Rank, in one run.

Both in this process, on one thread (torch.set_num_threads(1)), through the same
RankerPipeline the server uses, on the model repository's newest version of --model:
(a) ``pipeline.rank(user, candidates, k)``, the plain Rank; (b) the same followed by
``explain_ranking`` (2^F forward rows per returned item, F = the model's fields). Each
repeat draws a user and --candidates random known items; the two are timed in
alternating blocks so drift on the machine hits both. On a server, gRPC's own cost per
call comes on top of both (not measured here).

    python bench/explain.py                          # deepfm, 100 candidates, k = 10
    python bench/explain.py --candidates 1000 -k 100 --repeats 50

Prints the median time of each, explained/plain (the cost factor: above 1 the
explanation costs that many plain Ranks), the forward rows the explanation ran, and
the largest |sigmoid(baseline + Σ contributions) - score| over every explained item
(the explanations add up to the served scores).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from recserve.engine.artifact import load_artifact
from recserve.engine.explain import explain_ranking
from recserve.engine.pipeline import RankerPipeline


def newest_version(model_repo: Path, model: str) -> Path | None:
    versions = [p.parent for p in (model_repo / model).glob("[0-9]*/manifest.json")]
    return max(versions, key=lambda p: int(p.name), default=None)


def timed_blocks(
    calls: dict[str, Callable[[int], object]], repeats: int, block: int = 5
) -> dict[str, list[float]]:
    """Seconds per call of each, timed in alternating blocks of ``block`` calls."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for start in range(0, repeats, block):
        for name, call in calls.items():
            for n in range(start, min(start + block, repeats)):
                began = time.perf_counter()
                call(n)
                times[name].append(time.perf_counter() - began)
    return times


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--model", default="deepfm", help="a ranker of the repository")
    parser.add_argument("--candidates", type=int, default=100, help="ids per Rank (100)")
    parser.add_argument("-k", "--k", type=int, default=10, help="items explained (10)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls of each (100)")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    version = newest_version(args.model_repo, args.model)
    if version is None:
        print(
            f"error: no version of {args.model!r} in {args.model_repo}; make the default "
            "DeepFM with `bash scripts/start.sh` or `recserve train --model deepfm`",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    pipeline = RankerPipeline(load_artifact(version))
    fields = len(pipeline.schema.features)
    rng = np.random.default_rng(args.seed)
    n_candidates = min(args.candidates, pipeline.item_ids.size)
    requests = [
        (
            int(rng.choice(pipeline.user_ids)),
            rng.choice(pipeline.item_ids, n_candidates, replace=False).tolist(),
        )
        for _ in range(args.repeats)
    ]

    def plain(n: int):
        user, candidates = requests[n]
        return pipeline.rank(user, candidates, k=args.k)

    def explained(n: int):
        user, candidates = requests[n]
        return explain_ranking(pipeline, user, {}, pipeline.rank(user, candidates, k=args.k))

    for n in range(min(3, args.repeats)):  # TorchScript optimises on its first calls
        plain(n)
        explained(n)
    times = timed_blocks({"plain": plain, "explained": explained}, args.repeats)
    worst = 0.0
    for n in range(args.repeats):
        for item in explained(n).items:
            logit = item.explanation.logit
            worst = max(worst, abs(1 / (1 + np.exp(-logit)) - item.score))
    median = {name: statistics.median(t) * 1000 for name, t in times.items()}
    k = min(args.k, n_candidates) if args.k else n_candidates
    print(
        f"{args.model} v{version.name} ({fields} fields, 2^{fields} = {2**fields} forward "
        f"rows per item); {n_candidates} candidates, k = {args.k}, {args.repeats} repeats, "
        f"one thread, median ms"
    )
    print(f"  plain Rank             {median['plain']:8.3f}")
    print(f"  Rank + explanation     {median['explained']:8.3f}   (up to {k * 2**fields:,} rows)")
    print(f"  explained / plain      {median['explained'] / median['plain']:8.1f}x")
    print(f"  largest |sigmoid(baseline + sum) - score| over the explained items: {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
