"""Figures of a load test: percentiles over every process's samples, errors by status code,
per-second series, service-level objectives, and the text, JSON and plot that show them."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from recserve.client import target_count

from .options import BenchOptions
from .traffic import IdSpace
from .workers import OK, Samples

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
LATE_WARNING_SHARE = 0.01  # warn when more requests than this were sent late
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_UNITS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}
_SLO_ITEM = re.compile(r"(p\d+(?:\.\d+)?|max|mean)=(\d+(?:\.\d*)?|\.\d+)(us|µs|ms|s)")
_ERRORS_ITEM = re.compile(r"errors=(\d+(?:\.\d*)?|\.\d+)%")


@dataclass(frozen=True)
class Objective:
    """One target of ``--slo``: a latency statistic at most ``limit`` seconds, or, for
    ``errors``, at most ``limit`` percent of the requests sent failing."""

    name: str  # "p99", "p99.9", "max", "mean" or "errors"
    limit: float

    def describe(self) -> str:
        if self.name == "errors":
            return f"errors <= {self.limit:g}%"
        return f"{self.name} <= {_ms(self.limit):g} ms"


def parse_slo(text: str) -> list[Objective]:
    """``p99=20ms,p50=5ms``, ``p99.9=0.1s``, ``max=1s``, ``errors=0.1%`` -> objectives.

    Raises ValueError saying what is accepted."""
    objectives = []
    for item in text.replace(" ", "").split(","):
        if match := _SLO_ITEM.fullmatch(item):
            name, value, unit = match.groups()
            if name.startswith("p") and not 0 < float(name[1:]) <= 100:
                raise ValueError(f"--slo {item}: a percentile is between p0 and p100")
            objectives.append(Objective(name, float(value) * _UNITS[unit]))
        elif match := _ERRORS_ITEM.fullmatch(item):
            objectives.append(Objective("errors", float(match.group(1))))
        else:
            raise ValueError(
                f"--slo: cannot read {item!r}; write targets like p99=20ms,p50=5ms or "
                "p99.9=0.1s (pNN, max or mean, with us, ms or s), or errors=1%"
            )
    return objectives


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def _statistic(latency: np.ndarray, name: str) -> float | None:
    """A latency statistic in seconds, None without answers."""
    if latency.size == 0:
        return None
    if name == "max":
        return float(latency.max())
    if name == "mean":
        return float(latency.mean())
    # "higher": a latency some request really had, never an interpolation below it.
    return float(np.percentile(latency, float(name[1:]), method="higher"))


def _series(intended: np.ndarray, latency: np.ndarray, ok: np.ndarray, start: float) -> list:
    """Per second of intended send time: answers, errors and the answers' p99."""
    if intended.size == 0:
        return []
    second = np.floor(intended - start).astype(np.int64)
    series = []
    for s in range(int(second.max()) + 1):
        here = second == s
        answered = latency[here & ok]
        p99 = _statistic(answered, "p99")
        series.append(
            {
                "time_s": float(s),
                "count": int(answered.size),
                "errors": int((here & ~ok).sum()),
                "p99_ms": None if p99 is None else _ms(p99),
            }
        )
    return series


def summarize(
    samples: Samples, options: BenchOptions, space: IdSpace, processes: int
) -> dict[str, Any]:
    """Every figure of the run, as the JSON holds them (latencies of answers, in ms)."""
    start, end = options.warmup, options.warmup + options.duration
    measured = (samples.intended >= start) & (samples.intended < end)
    intended = samples.intended[measured]
    latency = samples.latency[measured]
    code = samples.code[measured]
    ok = code == OK
    answered = latency[ok]
    # Until the last measured request finished: a queue drained after the end counts.
    duration = float((intended + latency).max() - start) if intended.size else 0.0
    errors: dict[str, int] = {}
    # How fast each kind of error came back: a refusal should be quick, a timeout is not.
    error_latency_ms: dict[str, dict[str, float]] = {}
    for number, count in zip(*np.unique(code[~ok], return_counts=True), strict=True):
        name = CODE_NAMES.get(int(number), f"CODE_{int(number)}")
        errors[name] = int(count)
        these = latency[code == number]
        error_latency_ms[name] = {p: _ms(_statistic(these, p) or 0.0) for p in ("p50", "p99")}
    latency_ms: dict[str, float | None] = {}
    for name in [p for p, _ in PERCENTILES] + ["max", "mean"]:
        value = _statistic(answered, name)
        latency_ms[name] = None if value is None else _ms(value)
    summary: dict[str, Any] = {
        "options": asdict(options),
        "mode": options.mode,
        "rpc": options.rpc,
        "target": options.target,
        "targets": target_count(options.target),  # servers listed; a DNS name counts 1
        "model": {"name": space.model_name, "version": space.model_version},
        "processes": processes,
        "offered_rate_rps": options.rate,
        "warmup_s": options.warmup,
        "warmup_requests": int((samples.intended < start).sum()),
        "duration_s": round(duration, 6),
        "requests": {
            "sent": int(measured.sum()),
            "completed": int(ok.sum()),
            "errors": int((~ok).sum()),
        },
        "throughput_rps": round(ok.sum() / duration, 3) if duration > 0 else 0.0,
        "latency_ms": latency_ms,
        "errors_by_code": dict(sorted(errors.items(), key=lambda kv: -kv[1])),
        "error_latency_ms": error_latency_ms,
        "error_examples": {
            CODE_NAMES.get(number, f"CODE_{number}"): message
            for number, message in sorted(samples.messages.items())
        },
        "series": _series(intended, latency, ok, start),
        "generator": _generator(samples, int(ok.sum()), duration),
    }
    if options.slo is not None:
        summary["slo"] = [_check(o, answered, summary) for o in parse_slo(options.slo)]
    return summary


def _generator(samples: Samples, answers: int, duration: float) -> dict[str, Any]:
    """The generator's own figures: late sends (open loop), and the CPU time of all its
    processes over the measured window, per answer and in cores, to see what it took
    from a server on the same machine."""
    cpu = samples.cpu_seconds
    return {
        "late_sends": samples.late_sends,
        "max_send_lag_ms": _ms(samples.max_send_lag),
        "cpu_seconds": round(cpu, 4),
        "cpu_ms_per_answer": round(1000.0 * cpu / answers, 4) if answers else None,
        "cpu_cores": round(cpu / duration, 3) if duration > 0 else None,
        "decoded_answers": samples.decoded,
    }


def _check(objective: Objective, answered: np.ndarray, summary: dict[str, Any]) -> dict:
    if objective.name == "errors":
        sent = summary["requests"]["sent"]
        measured = 100.0 * summary["requests"]["errors"] / sent if sent else None
        limit = objective.limit
    else:
        value = _statistic(answered, objective.name)
        measured = None if value is None else _ms(value)
        limit = _ms(objective.limit)
    return {
        "target": objective.describe(),
        "name": objective.name,
        "limit": limit,
        "measured": measured,
        "met": measured is not None and measured <= limit,
    }


def missed_objectives(summary: dict[str, Any]) -> list[dict]:
    return [o for o in summary.get("slo", []) if not o["met"]]


def _targets(summary: dict[str, Any]) -> str:
    count = summary.get("targets", 1)
    return f"{count} targets ({summary['target']})" if count > 1 else summary["target"]


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def format_text(summary: dict[str, Any]) -> str:
    o = summary["options"]
    if summary["mode"] == "closed":
        load = f"closed loop, concurrency {o['concurrency']}"
    else:
        load = f"open loop, {o['rate']:g} requests/s {o['arrival']}"
    model = summary["model"]
    r = summary["requests"]
    lat = summary["latency_ms"]
    lines = [
        (
            f"recserve bench: {summary['rpc']} against {_targets(summary)} (model "
            f"{model['name']} v{model['version']}), {load}, {_processes(summary['processes'])}"
        ),
        (
            f"  measured   {summary['duration_s']:.2f} s after {summary['warmup_s']:g} s "
            f"warm-up ({summary['warmup_requests']} requests left out)"
        ),
        f"  requests   sent {r['sent']}  answered {r['completed']}  errors {r['errors']}",
        f"  throughput {summary['throughput_rps']:.1f} answers/s",
        "  latency ms "
        + "  ".join(
            f"{name} {'-' if value is None else f'{value:.2f}'}" for name, value in lat.items()
        ),
    ]
    for code, n in summary["errors_by_code"].items():
        example = summary["error_examples"].get(code, "")
        took = summary["error_latency_ms"][code]
        lines.append(
            f"  errors     {code} {n} (after p50 {took['p50']:.2f} ms, p99 {took['p99']:.2f} ms)"
            + (f": {example}" if example else "")
        )
    lines.append(_generator_line(summary))
    late = summary["generator"]["late_sends"]
    if late > LATE_WARNING_SHARE * max(r["sent"], 1):
        lines.append(
            f"  warning    the generator sent {late} requests late (up to "
            f"{summary['generator']['max_send_lag_ms']:.0f} ms): it was short of CPU, and "
            "that delay is in the latencies; add --processes or lower --rate"
        )
    for objective in summary.get("slo", []):
        measured = objective["measured"]
        unit = "%" if objective["name"] == "errors" else " ms"
        got = "no answers" if measured is None else f"{measured:g}{unit}"
        lines.append(
            f"  SLO {objective['target']}: {'met' if objective['met'] else 'MISSED'} ({got})"
        )
    return "\n".join(lines)


def _generator_line(summary: dict[str, Any]) -> str:
    g = summary["generator"]
    per_answer = g["cpu_ms_per_answer"]
    if per_answer is None:
        cpu = f"{g['cpu_seconds']:.2f} s, no answers"
    else:
        cpu = f"{per_answer:.2f} ms per answer"
    if g["cpu_cores"] is not None:
        cpu += f", {g['cpu_cores']:.2f} cores"
    parsed = (
        "parsed" if summary["options"]["decode"] or summary["rpc"] == "stream" else "not parsed"
    )
    return f"  generator  CPU {cpu} ({_processes(summary['processes'])}, answers {parsed})"


def write_json(summary: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")


def write_plot(summary: dict[str, Any], samples: Samples, path: str | Path) -> None:
    """The answers' latency distribution, and latency over time with the per-second p99."""
    from matplotlib.figure import Figure  # lazily: plotting is optional (the plot extra)

    start = summary["warmup_s"]
    end = start + summary["options"]["duration"]
    keep = (samples.intended >= start) & (samples.intended < end) & (samples.code == OK)
    t = samples.intended[keep] - start
    ms = samples.latency[keep] * 1000.0
    figure = Figure(figsize=(11, 4.2), layout="constrained")
    hist, over_time = figure.subplots(1, 2)
    if ms.size:
        low, high = max(ms.min(), 1e-3), max(ms.max(), 2e-3)
        bins = np.logspace(math.log10(low), math.log10(high * 1.01), 60)
        hist.hist(ms, bins=bins, color="tab:blue")
        hist.set_xscale("log")
        for name, value in summary["latency_ms"].items():
            if name in ("p50", "p99", "p99.9") and value is not None:
                hist.axvline(value, color="tab:red", linestyle="--", linewidth=1)
                hist.annotate(
                    name,
                    (value, 1),
                    xycoords=("data", "axes fraction"),
                    rotation=90,
                    va="top",
                    ha="right",
                    fontsize=8,
                )
        if t.size > 20_000:  # enough points to see the shape, few enough to draw fast
            pick = np.random.default_rng(0).choice(t.size, 20_000, replace=False)
            t, ms = t[pick], ms[pick]
        over_time.scatter(t, ms, s=2, alpha=0.4, label="answers")
    series = [s for s in summary["series"] if s["p99_ms"] is not None]
    if series:
        over_time.plot(  # a step per second of intended send time
            [s["time_s"] for s in series] + [series[-1]["time_s"] + 1],
            [s["p99_ms"] for s in series] + [series[-1]["p99_ms"]],
            color="tab:red",
            drawstyle="steps-post",
            label="p99 per second",
        )
        over_time.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("latency (ms, log scale)")
    hist.set_ylabel("answers")
    hist.set_title("latency distribution")
    over_time.set_yscale("log")
    over_time.set_xlabel("intended send time after warm-up (s)")
    over_time.set_ylabel("latency (ms)")
    over_time.set_title("latency over time")
    mode = summary["mode"]
    figure.suptitle(
        f"recserve bench: {summary['rpc']}, {mode} loop, {summary['throughput_rps']:.0f} answers/s",
        fontsize=10,
    )
    figure.savefig(path, dpi=110)
