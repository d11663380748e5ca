"""`recserve serve` options: one dataclass, read from flags, environment and a config file.

Each field is one flag (``--max-batch-size``), one environment variable
(``RECSERVE_MAX_BATCH_SIZE``) and one key of the config file (``max_batch_size``, in
TOML or JSON). A flag beats the environment, which beats the file, which beats the
default written next to the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "RECSERVE_"


def _opt(default: Any, help: str, **argparse_kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help, **argparse_kwargs})


@dataclass
class ServeOptions:
    """Everything `recserve serve` takes."""

    model_repo: Path = _opt(Path("model-repo"), "the model repository, <repo>/<name>/<version>/")  # noqa: RUF009 - an immutable default
    host: str = _opt("127.0.0.1", "address to listen on (0.0.0.0: every interface)")
    port: int = _opt(50051, "gRPC port (0: pick a free one)")
    default_model: str = _opt("", "model used when a request names none (default: first by name)")
    default_rank_with: str = _opt(
        "",
        "ranker that orders the default model's candidates when a Recommend names neither "
        "a model nor rank_with, making the default a cascade (default: none)",
    )
    workers: int = _opt(
        64, "gRPC handler threads; a request holds one while it waits for its batch"
    )
    torch_threads: int = _opt(1, "intra-op threads of each TorchScript call (keep 1 on few cores)")
    compute_threads: int = _opt(
        0,
        "threads per model that run batched model compute (head, top-k) "
        "(0: the cores this process may use)",
    )
    compute_nice: int = _opt(
        0,
        "how much lower the compute threads' scheduling priority is than the threads that "
        "take and refuse calls (Linux nice, 0-19; 0: the same; 19 sheds overload of cheap "
        "requests far better, see docs/serving.md)",
    )
    max_queue_ms: float = _opt(
        500.0,
        "a request that cannot start its model compute within this many milliseconds is "
        "refused at once with RESOURCE_EXHAUSTED (0: no limit)",
    )
    processes: int = _opt(
        1, "serving processes sharing the port (SO_REUSEPORT); each loads every model"
    )
    max_candidates: int = _opt(10_000, "most candidate (or recent) item ids in one request")
    max_k: int = _opt(1_000, "largest k a request may ask for")
    max_explain_k: int = _opt(100, "largest k of a Rank request with explain = true")
    max_message_bytes: int = _opt(
        4 * 1024 * 1024, "largest gRPC message received or sent (bigger: RESOURCE_EXHAUSTED)"
    )
    max_in_flight: int = _opt(
        256, "requests in progress beyond which new ones get RESOURCE_EXHAUSTED at once"
    )
    max_connection_age_seconds: float = _opt(
        0.0,
        "a client connection older than this is asked to reconnect, so DNS clients find "
        "new replicas (0: never)",
    )
    stream_idle_seconds: float = _opt(
        60.0,
        "a RankStream waiting this long on its client (to send or to read) is cancelled (0: never)",
    )
    max_batch_size: int = _opt(32, "most requests merged into one batch (1: no batching)")
    max_batch_delay_ms: float = _opt(
        2.0, "longest a request waits for others to join its batch (less when the queue is short)"
    )
    grace_seconds: float = _opt(
        5.0, "seconds in-flight requests get to finish on SIGTERM", flag="--grace"
    )
    head_precision: str = _opt(
        "fp32",
        "precision of the rankers' crossing heads (bf16: faster, scores to about 3 digits; "
        "int8: int8 Linear layers, CPU only, faster where the CPU has VNNI)",
        choices=("fp32", "bf16", "int8"),
    )
    compile_programs: str = _opt(
        "none",
        "aoti: compile each ranker's torch.export program (program format export) with "
        "AOTInductor when it loads (CPU only, needs a C++ compiler; 10-20 s per model; logs "
        "how far its scores moved from the uncompiled program's); aoti-stored: load the "
        "compilation the artifact stores when it fits this CPU and torch (native code from "
        "the model repository: only for a repository you trust), else compile as aoti",
        choices=("none", "aoti", "aoti-stored"),  # recserve.engine.aoti.COMPILE_MODES
    )
    device: str = _opt(
        "auto",
        "where the C++ kernels run: cuda needs a CUDA build and a GPU (auto: cuda if usable)",
        choices=("auto", "cpu", "cuda"),
    )
    poll_seconds: float = _opt(
        10.0, "how often the repository is rescanned for new versions (0: only on SIGHUP/RPC)"
    )
    keep_versions: int = _opt(
        1, "newest good versions served per model (more lets clients pin an older one)"
    )
    metrics_host: str = _opt("127.0.0.1", "address of the Prometheus /metrics endpoint")
    metrics_port: int = _opt(9464, "port of the Prometheus /metrics endpoint (0: any, -1: off)")
    log_format: str = _opt(
        "text", "log lines as text or one JSON object each", choices=("text", "json")
    )
    tls_cert: str = _opt("", "PEM certificate chain of the server; with --tls-key turns TLS on")
    tls_key: str = _opt("", "PEM private key of --tls-cert")
    tls_client_ca: str = _opt(
        "", "PEM CA bundle; clients must present a certificate it signed (mutual TLS)"
    )
    auth_tokens_file: str = _opt(
        "", "file of accepted bearer tokens, one per line; every RPC but health needs one"
    )

    @property
    def head_dtype(self) -> str:
        return {"fp32": "float32", "bf16": "bfloat16", "int8": "int8"}[self.head_precision]

    @property
    def compute_thread_count(self) -> int:
        """--compute-threads, with 0 resolved to the cores this process may use."""
        return self.compute_threads or available_cores()

    @property
    def max_batch_delay(self) -> float:
        """The batching delay in seconds."""
        return self.max_batch_delay_ms / 1000.0


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def _env_name(f: dataclasses.Field) -> str:
    return ENV_PREFIX + f.name.upper()


def _convert(f: dataclasses.Field, value: Any, where: str) -> Any:
    kind = type(f.default)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected {kind.__name__} for {f.name}, got {value!r}") from None
    choices = f.metadata.get("choices")
    if choices and converted not in choices:
        raise ValueError(f"{where}: {f.name} must be one of {', '.join(choices)}; got {value!r}")
    return converted


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per option, each help line ending with its default and variable."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML or JSON file of options (keys as the flags, with underscores); "
        f"env {ENV_PREFIX}CONFIG",
    )
    for f in dataclasses.fields(ServeOptions):
        default = f.default
        shown = f"'{default}'" if isinstance(default, str | Path) else default
        parser.add_argument(
            _flag(f),
            dest=f.name,
            type=type(default),
            default=None,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['help']} (default: {shown}; env {_env_name(f)})",
        )


def _read_config(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    elif sys.version_info >= (3, 11):
        import tomllib

        data = tomllib.loads(text)
    else:
        raise ValueError(f"{path}: TOML needs Python 3.11; write the options as JSON")
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a table of options")
    return data


def options_from(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> ServeOptions:
    """Options from flags, then the environment, then the config file, then defaults.

    Raises ValueError naming the source of a bad or unknown value."""
    environ = os.environ if environ is None else environ
    flags = vars(args) if args is not None else {}
    config_path = flags.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    config = _read_config(Path(config_path)) if config_path else {}
    known = {f.name for f in dataclasses.fields(ServeOptions)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(
            f"{config_path}: unknown option(s) {', '.join(unknown)}; "
            "`recserve serve --help` lists them"
        )
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeOptions):
        if flags.get(f.name) is not None:
            values[f.name] = _convert(f, flags[f.name], _flag(f))
        elif _env_name(f) in environ:
            values[f.name] = _convert(f, environ[_env_name(f)], _env_name(f))
        elif f.name in config:
            values[f.name] = _convert(f, config[f.name], str(config_path))
    options = ServeOptions(**values)
    check_ranges(options)
    return options


# Options that must be at least 1 (or 0 where zero means "off" / "any").
_AT_LEAST_ONE = (
    "workers", "torch_threads", "max_candidates", "max_k", "max_explain_k",
    "max_message_bytes", "max_in_flight", "max_batch_size", "keep_versions", "processes",
)  # fmt: skip
_NOT_NEGATIVE = (
    "max_batch_delay_ms", "grace_seconds", "poll_seconds", "port", "stream_idle_seconds",
    "max_connection_age_seconds", "compute_threads", "max_queue_ms", "compute_nice",
)  # fmt: skip


def check_head_on_device(head_precision: str, device: str) -> None:
    """The int8 head's matrix products are CPU kernels: refused with CUDA at start, not at
    the first model load. ``device`` is the flag, or what ``auto`` resolved to."""
    if head_precision == "int8" and device == "cuda":
        raise ValueError(
            "--head-precision int8 runs on the CPU only, and the kernels would run on CUDA "
            "(--device cuda, or auto with a usable GPU); use --head-precision fp32 or bf16, "
            "or --device cpu"
        )


def check_compile_on_device(compile_programs: str, device: str) -> None:
    """AOTInductor compiles the programs for this machine's CPU: refused with CUDA."""
    if compile_programs != "none" and device == "cuda":
        raise ValueError(
            f"--compile-programs {compile_programs} compiles the rankers' programs for the CPU, and the "
            "kernels would run on CUDA (--device cuda, or auto with a usable GPU); use "
            "--device cpu, or leave --compile-programs at none"
        )


def check_ranges(options: ServeOptions) -> None:
    """Raises ValueError naming the flag of the first out-of-range value."""
    for f in dataclasses.fields(ServeOptions):
        value = getattr(options, f.name)
        if f.name in _AT_LEAST_ONE and value < 1:
            raise ValueError(f"{_flag(f)} must be at least 1; got {value}")
        if f.name in _NOT_NEGATIVE and value < 0:
            raise ValueError(f"{_flag(f)} must not be negative; got {value}")
    check_head_on_device(options.head_precision, options.device)
    check_compile_on_device(options.compile_programs, options.device)
    if options.compute_nice > 19:
        raise ValueError(f"--compute-nice is a nice value, 0-19; got {options.compute_nice}")
    if options.metrics_port < -1:
        raise ValueError(
            f"--metrics-port must be a port, 0 (any) or -1 (off); got {options.metrics_port}"
        )
