"""`python -m recserve.training`: `recserve train` that can run as several processes.

Launched by ``torchrun`` (``torchrun --nproc-per-node N -m recserve.training --model deepfm
...``) each process joins the process group torchrun describes and trains its share of
every batch through ``DistributedDataParallel`` (training.distributed; docs/distributed.md).
Launched alone it is `recserve train`, with ``--device`` besides.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .arguments import add_train_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recserve.training",
        description="Train a model and export it into a repository, on one process or, "
        "launched by torchrun, on several (CTR rankers: mlp, wide_deep, deepfm, dcnv2). "
        "The options are those of `recserve train`; see docs/distributed.md.",
    )
    add_train_arguments(parser)
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cpu (process-group backend gloo) or cuda (NCCL, GPU LOCAL_RANK per process)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from . import distributed
    from .commands import train_command

    try:
        distributed.init_from_environment(args.device)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        return train_command(args)
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
