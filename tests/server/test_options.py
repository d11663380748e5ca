"""`recserve serve` options: flags beat the environment, which beats the config file."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import pytest

from recserve.server.app import build_server
from recserve.server.options import ServeOptions, add_serve_arguments, options_from


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return parser.parse_args(list(flags))


def test_defaults_without_any_source() -> None:
    assert options_from(parse(), environ={}) == ServeOptions()


def test_flag_beats_env_beats_file(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text('port = 6000\nmax_k = 50\nhead_precision = "bf16"\nmodel_repo = "repo"\n')
    environ = {"RECSERVE_PORT": "7000", "RECSERVE_MAX_BATCH_DELAY_MS": "0.5"}
    options = options_from(parse("--config", str(config), "--port", "8000"), environ)
    assert options.port == 8000  # flag
    assert options.max_batch_delay_ms == 0.5  # environment
    assert options.max_k == 50 and options.head_dtype == "bfloat16"  # file
    assert options.model_repo == Path("repo")
    assert options_from(parse("--config", str(config)), environ).port == 7000


def test_json_config_and_config_from_env(tmp_path: Path) -> None:
    config = tmp_path / "serve.json"
    config.write_text(json.dumps({"grace_seconds": 1.5, "log_format": "json"}))
    options = options_from(parse(), {"RECSERVE_CONFIG": str(config)})
    assert options.grace_seconds == 1.5 and options.log_format == "json"


@pytest.mark.parametrize(
    ("environ", "config", "message"),
    [
        ({"RECSERVE_PORT": "http"}, "", "RECSERVE_PORT: expected int for port"),
        ({"RECSERVE_LOG_FORMAT": "xml"}, "", "log_format must be one of text, json"),
        ({}, "prot = 1\n", "unknown option(s) prot"),
        ({}, "max_k = 'many'\n", "expected int for max_k"),
        ({"RECSERVE_KEEP_VERSIONS": "0"}, "", "--keep-versions must be at least 1; got 0"),
        ({}, "max_batch_delay_ms = -1.0\n", "--max-batch-delay-ms must not be negative"),
    ],
)
def test_bad_values_name_their_source(
    tmp_path: Path, environ: dict[str, str], config: str, message: str
) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(config)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options_from(parse("--config", str(path)), environ)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_size", 0, "--max-batch-size must be at least 1; got 0"),
        ("max_batch_delay_ms", -2.0, "--max-batch-delay-ms must not be negative; got -2.0"),
        ("workers", 0, "--workers must be at least 1; got 0"),
        ("compute_nice", 20, "--compute-nice is a nice value, 0-19; got 20"),
        ("compute_nice", -1, "--compute-nice must not be negative; got -1"),
    ],
)
def test_options_built_in_code_are_range_checked_before_anything_binds(
    tmp_path: Path, field: str, value: float, message: str
) -> None:
    options = ServeOptions(model_repo=tmp_path, port=0, metrics_port=-1, **{field: value})
    with pytest.raises(ValueError, match=message):
        build_server(options)


def test_an_int8_head_with_cuda_kernels_is_refused_at_start(tmp_path: Path) -> None:
    options = ServeOptions(
        model_repo=tmp_path, port=0, metrics_port=-1, head_precision="int8", device="cuda"
    )
    with pytest.raises(ValueError, match="--head-precision int8 runs on the CPU only"):
        build_server(options)


def test_compiled_programs_with_cuda_kernels_are_refused_at_start(tmp_path: Path) -> None:
    options = ServeOptions(
        model_repo=tmp_path, port=0, metrics_port=-1, compile_programs="aoti", device="cuda"
    )
    with pytest.raises(ValueError, match=r"--compile-programs aoti compiles .* for the CPU"):
        build_server(options)


def test_help_documents_every_option_with_default_and_variable(run_recserve) -> None:
    result = run_recserve("serve", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for f in dataclasses.fields(ServeOptions):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert flag in text, flag
        assert f"env RECSERVE_{f.name.upper()}" in text, f.name
    assert "(default: 32; env RECSERVE_MAX_BATCH_SIZE)" in text


def test_a_bad_option_stops_serve_with_a_message(run_recserve) -> None:
    result = run_recserve("serve", "--log-format", "text", "--port", "x")
    assert result.returncode == 2 and "--port" in result.stderr


def test_the_operator_docs_list_every_option() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "serving.md").read_text()
    for f in dataclasses.fields(ServeOptions):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        assert f"| `{flag}` | `RECSERVE_{f.name.upper()}` |" in docs, flag


def test_head_precision_names_the_head_dtype() -> None:
    for flag, dtype in (("fp32", "float32"), ("bf16", "bfloat16"), ("int8", "int8")):
        assert options_from(parse("--head-precision", flag), environ={}).head_dtype == dtype
    with pytest.raises(SystemExit):
        parse("--head-precision", "int4")
