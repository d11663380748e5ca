"""The options of `recserve train`, shared with `python -m recserve.training` (which adds
``--device``). Only argparse here, so the `recserve` parser stays cheap to build."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_train_arguments(train: argparse.ArgumentParser) -> None:
    train.add_argument("--model", default="deepfm", help="model to train (default: deepfm)")
    train.add_argument(
        "--data",
        default="ml-100k",
        help="'ml-100k' (fetched when missing), 'ml-1m' (in --data-dir), 'synthetic', a schema file (.toml/.json) of a CSV/TSV log, or a directory",
    )
    train.add_argument("--data-dir", type=Path, default=Path("data"))
    train.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    train.add_argument("--name", default="", help="model name in the repository (default: --model)")
    add_program_format_argument(train)
    train.add_argument("--config", type=Path, help="JSON file of training settings")
    train.add_argument("--epochs", type=int, help="maximum epochs (overrides --config)")
    train.add_argument("--seed", type=int, help="random seed (overrides --config)")
    train.add_argument(
        "--run-dir",
        type=Path,
        help="where checkpoint.pt and curves.png go (default: runs/<model>-<timestamp>)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir (default: the newest runs/<model>-*) from its "
        "checkpoint; --epochs may raise the maximum",
    )


def add_program_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--program-format",
        choices=("torchscript", "export"),
        default="torchscript",
        help="how the model's programs are written: TorchScript (default) or torch.export "
        "programs (.pt2) (docs/artifact.md)",
    )
    add_aoti_target_argument(parser, "with --program-format export, a ranker's programs are")


def add_aoti_target_argument(parser: argparse.ArgumentParser, stored: str) -> None:
    """--aoti-target; ``stored`` says what is also stored compiled ("the program is")."""
    parser.add_argument(
        "--aoti-target",
        choices=("x86-64-v3",),  # recserve.engine.aoti.AOTI_TARGETS
        help=f"{stored} also stored compiled by AOTInductor for this x86-64 level "
        "(v3: AVX2 and FMA), checked on this machine first, which must run it; "
        "`recserve serve --compile-programs aoti-stored` loads that instead of compiling "
        "at load (docs/artifact.md)",
    )
