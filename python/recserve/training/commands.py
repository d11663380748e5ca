"""`recserve train` and `recserve data`: the training side of the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .checkpoint import checkpoint_path, load_checkpoint
from .data import (
    SCHEMA_SUFFIXES,
    InteractionData,
    fetch_movielens_100k,
    load_interaction_log,
    load_movielens,
    load_movielens_1m,
    load_movielens_100k,
    make_synthetic_movielens,
)
from .registry import MODELS, ModelEntry, RunOptions


def load_data(spec: str, data_dir: Path) -> InteractionData:
    """The data set ``--data`` names; exits with the reason when it cannot be loaded.

    ``ml-100k`` (fetched into ``data_dir`` when missing), ``ml-1m`` (in ``data_dir/ml-1m``,
    downloaded by the user), ``synthetic``, a schema file (``.toml``/``.json``) describing a
    CSV/TSV interaction log, or a directory holding MovieLens-100k or MovieLens-1M.
    """
    path = Path(spec)
    try:
        if spec == "ml-100k":
            return load_movielens_100k(fetch_movielens_100k(data_dir, progress=print_stderr))
        if spec == "ml-1m":
            return load_movielens_1m(data_dir)
        if spec == "synthetic":
            return make_synthetic_movielens()
        if path.suffix.lower() in SCHEMA_SUFFIXES:
            return load_interaction_log(path)
        if path.is_dir():
            return load_movielens(path)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"--data {spec}: {error}") from None
    raise SystemExit(
        f"--data {spec!r}: expected 'ml-100k', 'ml-1m', 'synthetic', a schema file "
        "(.toml or .json) describing a CSV/TSV interaction log, or a directory holding "
        "MovieLens-100k or MovieLens-1M"
    )


def print_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_config(
    config_type: type,
    path: Path | None,
    overrides: dict[str, object],
    base: dict[str, object] | None = None,
) -> Any:
    """The model's settings: dataclass defaults, then ``base`` (a resumed run's settings),
    then ``path`` (JSON), then ``overrides`` (None = not given)."""
    known = {f.name for f in fields(config_type)}
    values: dict[str, object] = {k: v for k, v in (base or {}).items() if k in known}
    if path is not None:
        values.update(json.loads(path.read_text()))
        unknown = sorted(set(values) - known)
        if unknown:
            raise SystemExit(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    values.update({k: v for k, v in overrides.items() if v is not None and k in known})
    return config_type(**values)


def _run_dir(args: argparse.Namespace, model: str) -> Path:
    """``--run-dir``, else ``runs/<model>-<timestamp>`` (with ``--resume``: the newest one)."""
    if getattr(args, "run_dir", None) is not None:
        return Path(args.run_dir)
    if getattr(args, "resume", False):
        runs = sorted(Path("runs").glob(f"{model}-*/checkpoint.pt"), key=lambda p: p.parent.name)
        if not runs:
            raise SystemExit(f"--resume: no runs/{model}-*/checkpoint.pt; pass --run-dir DIR")
        return runs[-1].parent
    return Path("runs") / f"{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_workers(entry: ModelEntry) -> distributed.Workers:
    """This process's place among the workers torchrun launched; refuses what cannot run."""
    workers = distributed.current()
    launched = distributed.requested_world_size()
    if launched > 1 and not workers.grouped:
        raise SystemExit(
            f"this process is one of {launched} (WORLD_SIZE={launched}) but joined no process "
            "group, so every worker would train alone and write the same files; launch "
            "`torchrun --nproc-per-node N -m recserve.training ...` (docs/distributed.md)"
        )
    if workers.world_size > 1 and entry.task != "ctr":
        rankers = ", ".join(name for name, e in MODELS.items() if e.task == "ctr")
        raise SystemExit(
            f"{entry.name} trains on one process only; training on several processes "
            f"supports the CTR rankers ({rankers}). Run it with --nproc-per-node 1 or "
            f"`recserve train --model {entry.name}`"
        )
    return workers


def check_aoti_target(args: argparse.Namespace, entry: ModelEntry) -> None:
    """Refuses --aoti-target, before any training, where it cannot be honoured."""
    if args.aoti_target is None:
        return
    if args.program_format != "export":
        raise SystemExit(
            "--aoti-target compiles torch.export programs; add --program-format export"
        )
    if entry.task != "ctr":
        raise SystemExit(
            f"--aoti-target stores compilations of rankers' programs; {entry.name} is a "
            "top-N model (serve it with `recserve serve --compile-programs none`)"
        )
    from recserve.engine.aoti import compiler_missing, unfit_reason

    unfit = unfit_reason(args.aoti_target, torch.__version__) or compiler_missing()
    if unfit is not None:
        raise SystemExit(
            f"--aoti-target {args.aoti_target}: the compilation is made and checked on this "
            f"machine, and {unfit}"
        )


def train_command(args: argparse.Namespace) -> int:
    entry = MODELS.get(args.model)
    if entry is None:
        raise SystemExit(f"unknown model {args.model!r}; available: {', '.join(sorted(MODELS))}")
    check_aoti_target(args, entry)
    workers = _check_workers(entry)
    report = print_stderr if workers.is_main else _silent
    overrides = {"epochs": args.epochs, "seed": args.seed}
    resume = getattr(args, "resume", False)
    run = None
    if entry.checkpoints:
        # worker 0's choice (a default run dir is named by the clock)
        run_dir = distributed.broadcast_object(_run_dir(args, entry.name), workers)
        run = RunOptions(run_dir, resume, args.data, str(args.data_dir))
    elif resume:
        raise SystemExit(
            f"{entry.name} does not write checkpoints (it trains in one pass); "
            "--resume is for models trained in epochs"
        )
    if resume:
        state = load_checkpoint(checkpoint_path(run.run_dir))
        if state.get("model_name") != entry.name:
            raise SystemExit(
                f"{run.run_dir} is a run of {state.get('model_name')!r}, not {entry.name!r}; "
                f"pass --model {state.get('model_name')}"
            )
        # the run's own settings and data; --config and --epochs/--seed still override
        config = read_config(entry.config_type, args.config, overrides, state["config"])
        args.data = state.get("data", args.data)
        args.data_dir = Path(state.get("data_dir", args.data_dir))
        run = dataclasses.replace(run, data=args.data, data_dir=str(args.data_dir))
    else:
        config = read_config(entry.config_type, args.config, overrides)
    # the first worker of each machine loads (and fetches) the data before the others
    if workers.grouped and workers.local_rank != 0:
        distributed.barrier()
    data = load_data(args.data, args.data_dir)
    if workers.grouped and workers.local_rank == 0:
        distributed.barrier()
    group = f" on {workers.world_size} processes ({workers.device})" if workers.grouped else ""
    report(
        f"training {entry.name} on {data.name}{group}: {data.user_id.size:,} interactions, "
        f"{data.users.user_id.size:,} users, {data.items.item_id.size:,} items"
        + (f"; run dir {run.run_dir}" + (" (resuming)" if resume else "") if run else "")
    )
    extra = (run,) if run is not None else ()
    repo = {"model_repo": args.model_repo} if entry.reads_repo else {}
    progress = sys.stderr.isatty() and workers.is_main
    try:
        trained = entry.train(data, config, report, progress, *extra, **repo)
    except ValueError as error:  # the data cannot train this model; the message says why
        raise SystemExit(f"error: {error}") from None
    except RuntimeError as error:
        if not resume:
            raise
        raise SystemExit(
            f"error: the checkpoint in {run.run_dir} does not fit this model and data "
            f"({str(error).splitlines()[0]}); start a new run without --resume"
        ) from None
    if workers.is_main:  # one artifact; the others wait until it is written
        _print_headline(entry, trained.metrics)
        path = _export(trained, args, args.name or entry.name, data.name, run)
        print(f"exported {path}")
    distributed.barrier()
    return 0


def _export(
    trained: Any, args: argparse.Namespace, name: str, data_name: str, run: RunOptions | None
) -> Path:
    """The trained model's new version in --model-repo; a refused compilation
    (--aoti-target) exits saying how to export the run's model again."""
    from recserve.engine.artifact import ArtifactError

    try:
        return trained.export(
            args.model_repo, name, data_name, args.program_format, aoti_target=args.aoti_target
        )
    except ArtifactError as error:
        again = (
            f"; export the trained model again with `recserve export --run-dir {run.run_dir}`"
            if run is not None
            else ""
        )
        raise SystemExit(f"error: {error}; nothing was written{again}") from None


def _silent(message: str) -> None:
    pass


def _print_headline(entry: ModelEntry, m: dict[str, float]) -> None:
    headline = "  ".join(f"{label} {m[key]:.4f}" for key, label in entry.headline)
    print(f"{headline}  ({m.get('epochs', 0):.0f} epochs, {m.get('train_seconds', 0):.0f}s)")


def export_command(args: argparse.Namespace) -> int:
    """Export the best state of a run directory's checkpoint into a model repository."""
    from .ranker import ranker_from_checkpoint

    state = load_checkpoint(checkpoint_path(args.run_dir))
    name = str(state.get("model_name", ""))
    entry = MODELS.get(name)
    if entry is None or not entry.checkpoints:
        raise SystemExit(f"{args.run_dir}: checkpoint of unknown model {name!r}")
    if entry.task != "ctr":
        raise SystemExit(
            f"{args.run_dir}: a run of {name!r}; `recserve export --run-dir` is for rankers "
            f"(`recserve train --model {name} --resume` exports the top-N model)"
        )
    check_aoti_target(args, entry)
    data_spec = str(state.get("data") or "")
    if not data_spec:
        raise SystemExit(f"{args.run_dir}: the checkpoint does not name its data set")
    data_dir = args.data_dir or Path(str(state.get("data_dir") or "data"))
    data = load_data(data_spec, data_dir)
    trained = ranker_from_checkpoint(state, data, entry.config_type)
    _print_headline(entry, trained.metrics)
    path = _export(trained, args, args.name or name, data.name, None)
    print(f"exported {path}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    if args.dataset != "ml-100k":
        raise SystemExit(f"unknown data set {args.dataset!r}; available: ml-100k")
    path = fetch_movielens_100k(args.data_dir, progress=print_stderr)
    print(path)
    return 0
