"""The model artifact on disk: the only thing that passes from training to serving.

Layout: ``<repo>/<model name>/<version>/`` with ``manifest.json`` and the files it lists
(program modules and ``.npy`` tables). Nothing is pickled. Writing goes to a hidden
temporary directory that is renamed into place, so a reader never sees half a version;
loading verifies the format version and every file's sha256 before anything is used.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import aoti
from .programs import (
    PROGRAM_FORMATS,
    PROGRAM_SUFFIXES,
    Program,
    ProgramError,
    first_line,
    load_exported,
    load_program,
    program_format_of,
    save_program,
)
from .schema import FeatureSchema

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
COMPILED_SUFFIX = ".aoti.pt2"  # a stored AOTInductor compilation of the module of that key
# Model names: also what a request may name, so never a path ("..", "/" are refused).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# Parameter roles of a crossing block, by kind: what the fused kernel computes.
#   deepfm:    first-order sum + FM term + first MLP layer (split into user/item columns)
#   wide_deep: first-order (wide) sum + first MLP layer
#   dcnv2:     x0 and the first cross layer (W0 split into user/item columns)
_FIELDS = ("embedding", "single_offsets", "multi_offsets", "multi_fields", "w1", "b1")
CROSSING_ROLES: dict[str, tuple[str, ...]] = {
    "deepfm": (*_FIELDS, "first_order", "bias"),
    "wide_deep": (*_FIELDS, "first_order", "bias"),
    "dcnv2": _FIELDS,
}
CROSSING_KINDS = tuple(CROSSING_ROLES)
# The CTR ranker families the server answers with a RankerPipeline: each serves through
# its TorchScript ``model`` program, and those of CROSSING_ROLES through the fused C++
# crossing kernel and a ``head`` when the artifact has a crossing block. The trainers
# declare the same names (recserve.training.trainer.RANKERS).
RANKER_FAMILIES = ("mlp", "wide_deep", "deepfm", "dcnv2")
# A ranker program trained elsewhere (recserve.packaging.ranker): the signature of the
# families above, no crossing block.
PACKAGED_RANKER_FAMILY = "packaged_ranker"
# Every family a RankerPipeline serves, and explains.
RANKER_PROGRAM_FAMILIES = (*RANKER_FAMILIES, PACKAGED_RANKER_FAMILY)
# The ranker of a sequence retriever's items (engine/din.py): a cascade's second stage only.
DIN_FAMILY = "din"
# What a Recommend's rank_with may name.
CASCADE_RANKER_FAMILIES = (*RANKER_PROGRAM_FAMILIES, DIN_FAMILY)
# Role of each parameter table of a crossing block -> its table key in the artifact.
CROSSING_TABLES = {role: f"crossing_{role}" for role in (*_FIELDS, "first_order", "bias")}


class ArtifactError(ValueError):
    """An artifact that must not be served: unknown format, bad checksum, missing file."""


@dataclass(frozen=True)
class CrossingBlock:
    """The optional ``crossing`` block: the parts of the model the fused C++ kernel computes.

    ``kind`` is one of ``CROSSING_KINDS``; ``tables`` maps each role of
    ``CROSSING_ROLES[kind]`` to its array; ``hidden`` is the width of the split first
    layer; ``head`` is the program run on the kernel's outputs. See docs/artifact.md.
    """

    kind: str
    embedding_dim: int
    hidden: int
    user_fields: int
    item_fields: int
    item_multi_fields: int
    tables: dict[str, np.ndarray]
    head: Program


@dataclass(frozen=True)
class StoredCompilation:
    """A program's AOTInductor compilation stored in the artifact (docs/artifact.md):
    native code for ``target``, built with torch ``torch``; its file had ``sha256``."""

    path: Path
    target: str
    torch: str
    sha256: str

    def read_verified(self) -> bytes:
        """The file's bytes, checked again against the manifest's checksum: what a server
        loads is what was verified, even if the file changed since the version loaded."""
        data = self.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise ArtifactError(f"{self.path}: checksum mismatch; the file was altered")
        return data


@dataclass(frozen=True)
class Artifact:
    """A verified, loaded model version."""

    path: Path
    name: str
    version: int
    family: str
    program_format: str
    schema: FeatureSchema
    manifest: dict[str, Any]
    modules: dict[str, Program]
    tables: dict[str, np.ndarray]
    crossing: CrossingBlock | None = None  # absent: serve with the whole "model" program
    # program_format "export": each module's torch.export program (what compile_aoti takes)
    exported: dict[str, torch.export.ExportedProgram] = field(default_factory=dict)
    # module key -> its stored AOTInductor compilation (verified, not loaded)
    compiled: dict[str, StoredCompilation] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.manifest.get("metrics", {}))

    @property
    def created_at(self) -> str:
        return str(self.manifest.get("created_at", ""))


def validate_model_name(name: str) -> str:
    if not MODEL_NAME.match(name):
        raise ArtifactError(
            f"model name {name!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def list_versions(model_dir: Path) -> list[int]:
    """Published versions of one model (numeric directory names), oldest first."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_artifact(
    repo: str | os.PathLike[str],
    name: str,
    *,
    family: str,
    schema: FeatureSchema,
    modules: dict[str, torch.jit.ScriptModule | torch.export.ExportedProgram],
    tables: dict[str, np.ndarray],
    metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    version: int | None = None,
    compile_for: str | None = None,
    compiled_keys: tuple[str, ...] = (),
) -> Path:
    """Write a new version of ``name`` into ``repo`` atomically; returns its directory.

    ``version`` defaults to one more than the newest existing version. The programs are
    TorchScript modules or ``torch.export`` programs, all in one format (the manifest's
    ``program_format``; ``torchscript`` when there are none). With ``compile_for`` (a
    target of recserve.engine.aoti.AOTI_TARGETS), the ``torch.export`` programs named by
    ``compiled_keys`` are also stored compiled by AOTInductor for that target, each
    checked first on its program's example inputs, on this machine, which must run it.
    """
    validate_model_name(name)
    formats = {program_format_of(module) for module in modules.values()}
    if len(formats) > 1:
        raise ArtifactError("the programs of one version must share one program format")
    program_format = formats.pop() if formats else "torchscript"
    compiled: dict[str, bytes] = {}
    if compile_for is not None:
        _check_compile_for(compile_for, program_format, compiled_keys, modules)
        compiled = {key: _compile_checked(modules[key], compile_for) for key in compiled_keys}
    model_dir = Path(repo) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = (list_versions(model_dir) or [0])[-1] + 1
    final = model_dir / str(version)
    if final.exists():
        raise ArtifactError(f"{final} already exists; versions are never overwritten")

    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        files: dict[str, dict[str, str]] = {}
        for key, module in modules.items():
            path = staging / f"{key}{PROGRAM_SUFFIXES[program_format]}"
            save_program(module, path)
            files[path.name] = {"kind": "module", "key": key, "program_format": program_format}
        for key, data in compiled.items():
            path = staging / f"{key}{COMPILED_SUFFIX}"
            path.write_bytes(data)
            files[path.name] = {
                "kind": "compiled", "key": key, "compiler": "aotinductor",
                "target": compile_for, "torch": torch.__version__,
            }  # fmt: skip
        for key, table in tables.items():
            if table.dtype == object:
                raise ArtifactError(f"table {key!r} has dtype object; it would need pickle")
            path = staging / f"{key}.npy"
            np.save(path, table, allow_pickle=False)
            files[path.name] = {"kind": "table", "key": key}
        for filename, entry in files.items():
            entry["sha256"] = _sha256(staging / filename)
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "version": version,
            "family": family,
            "program_format": program_format,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "schema": schema.to_json(),
            "files": files,
            "metrics": metrics or {},
            "config": config or {},
            **(extra or {}),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        staging.chmod(0o755)  # mkdtemp makes it private; a serving account must read it
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _check_compile_for(
    target: str, program_format: str, keys: tuple[str, ...], modules: dict[str, Any]
) -> None:
    if target not in aoti.AOTI_TARGETS:
        raise ArtifactError(
            f"AOTInductor target {target!r} is not supported "
            f"(supported: {', '.join(aoti.AOTI_TARGETS)})"
        )
    if program_format != "export":
        raise ArtifactError(
            "AOTInductor compiles torch.export programs; these programs are TorchScript "
            "(export them with torch.export: program format export)"
        )
    missing = [key for key in keys if key not in modules]
    if not keys or missing:
        raise ArtifactError(f"no program {missing or list(keys)!r} to compile")
    unfit = aoti.unfit_reason(target, torch.__version__) or aoti.compiler_missing()
    if unfit is not None:
        raise ArtifactError(
            f"cannot make and check a compilation for {target} on this machine: {unfit}; "
            "compile on a machine that runs it and has a C++ compiler"
        )


def _compile_checked(program: torch.export.ExportedProgram, target: str) -> bytes:
    """``program`` compiled for ``target`` (the package's bytes); refuses a compilation
    whose scores leave aoti.SCORE_TOLERANCE of the program's."""
    try:
        with tempfile.TemporaryDirectory(prefix="recserve-aoti-") as folder:
            path = Path(folder) / f"program{COMPILED_SUFFIX}"
            aoti.compile_package(program, path, target)
            difference = aoti.package_difference(path, program)
            data = path.read_bytes()
    except Exception as exc:  # the compiler and its loader raise many kinds
        raise ArtifactError(
            f"AOTInductor could not compile the program for {target}: {first_line(exc)}"
        ) from exc
    if difference > aoti.SCORE_TOLERANCE:
        raise ArtifactError(
            f"the AOTInductor compilation for {target} moved scores by {difference:.1e} "
            f"relative on the example inputs, more than {aoti.SCORE_TOLERANCE:.0e}"
        )
    return data


def load_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Load and verify one version directory; raises ArtifactError with the reason."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no {MANIFEST}; not a model version directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: unreadable manifest ({exc})") from None

    fmt = manifest.get("format_version")
    if fmt != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format version {fmt!r} is not supported by this recserve "
            f"(it reads version {FORMAT_VERSION}); re-export the model with a matching recserve"
        )
    # The directory is the identity a repository serves under; the manifest must agree.
    if (manifest.get("name"), str(manifest.get("version"))) != (path.parent.name, path.name):
        raise ArtifactError(
            f"{path}: manifest says {manifest.get('name')!r} version {manifest.get('version')!r}"
            f", but the directory is {path.parent.name!r} version {path.name!r}; versions are "
            "published by `recserve train`/`save_artifact`, not by copying directories"
        )
    program_format = manifest.get("program_format")
    if program_format not in PROGRAM_FORMATS:
        raise ArtifactError(
            f"{path}: program format {program_format!r} is not supported "
            f"(supported: {', '.join(PROGRAM_FORMATS)})"
        )

    modules: dict[str, Program] = {}
    exported: dict[str, torch.export.ExportedProgram] = {}
    tables: dict[str, np.ndarray] = {}
    compiled: dict[str, StoredCompilation] = {}
    for filename, entry in manifest.get("files", {}).items():
        file_path = path / filename
        if Path(filename).name != filename:
            raise ArtifactError(f"{path}: manifest names a file outside the version: {filename}")
        if not file_path.is_file():
            raise ArtifactError(f"{path}: file {filename} listed in the manifest is missing")
        try:
            if entry["kind"] == "module":
                data = file_path.read_bytes()
                _check_sha256(path, filename, hashlib.sha256(data).hexdigest(), entry)
                if entry.get("program_format") != program_format:
                    raise ArtifactError(
                        f"{path}: {filename} is in program format "
                        f"{entry.get('program_format')!r}, the manifest says {program_format!r}"
                    )
                if program_format == "export":
                    exported[entry["key"]] = load_exported(data)
                    modules[entry["key"]] = exported[entry["key"]].module()
                else:
                    modules[entry["key"]] = load_program(data, program_format)
            elif entry["kind"] == "table":
                _check_sha256(path, filename, _sha256(file_path), entry)
                tables[entry["key"]] = _map_table(file_path)
            elif entry["kind"] == "compiled":
                # native code: verified here, loaded only by a server told to trust it
                _check_sha256(path, filename, _sha256(file_path), entry)
                target, built_with = entry.get("target"), entry.get("torch")
                if not isinstance(target, str) or not isinstance(built_with, str):
                    raise ArtifactError(
                        f"{path}: {filename} does not say which target and torch it was "
                        "compiled for"
                    )
                compiled[entry["key"]] = StoredCompilation(
                    file_path, target, built_with, entry["sha256"]
                )
            else:
                raise ArtifactError(f"{path}: unknown file kind {entry['kind']!r} for {filename}")
        except (RuntimeError, ValueError, OSError, ProgramError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"{path}: cannot load {filename}: {exc}") from None

    crossing = _crossing_block(path, manifest.get("crossing"), modules, tables)
    orphans = sorted(compiled.keys() - exported.keys())
    if orphans:
        raise ArtifactError(
            f"{path}: a compilation of {orphans[0]!r} is stored, but the version has no "
            f"torch.export program {orphans[0]!r} to check it against"
        )
    return Artifact(
        path=path,
        name=manifest["name"],
        version=int(manifest["version"]),
        family=manifest["family"],
        program_format=program_format,
        schema=FeatureSchema.from_json(manifest["schema"]),
        manifest=manifest,
        modules=modules,
        tables=tables,
        crossing=crossing,
        exported=exported,
        compiled=compiled,
    )


def _check_sha256(path: Path, filename: str, digest: str, entry: dict[str, Any]) -> None:
    if digest != entry.get("sha256"):
        raise ArtifactError(
            f"{path}: checksum mismatch for {filename}; the file was altered or is "
            "incomplete, re-export the model"
        )


def _map_table(file_path: Path) -> np.ndarray:
    """The table memory-mapped from its file: the page cache holds it once however many
    server processes map it, and a version directory deleted while it serves keeps its
    pages (the mapping holds the file open). Versions are never rewritten in place, so
    what the checksum just verified is what stays mapped.

    Copy-on-write ("c") rather than read-only: consumers hand tables to torch, which
    warns on read-only arrays and would crash writing to one. Nothing writes to them, so
    every page stays shared; a stray write would copy that one page for this process and
    never reach the file. A plain ndarray view, not np.memmap, so results of arithmetic
    on it are ordinary arrays."""
    return np.asarray(np.load(file_path, mmap_mode="c", allow_pickle=False))


def _crossing_block(
    path: Path,
    block: Any,
    modules: dict[str, Program],
    tables: dict[str, np.ndarray],
) -> CrossingBlock | None:
    """The manifest's ``crossing`` block, checked against the files it names (or None)."""
    if block is None:
        return None
    if not isinstance(block, dict) or block.get("kind") not in CROSSING_KINDS:
        kind = block.get("kind") if isinstance(block, dict) else block
        raise ArtifactError(
            f"{path}: crossing kind {kind!r} is not supported (supported: "
            f"{', '.join(CROSSING_KINDS)}); re-export the model with a matching recserve"
        )
    try:
        sizes = {
            key: int(block[key])
            for key in (
                "embedding_dim",
                "hidden",
                "user_fields",
                "item_fields",
                "item_multi_fields",
            )
        }
        module = modules[block["module"]]
        named = {role: tables[block["tables"][role]] for role in CROSSING_ROLES[block["kind"]]}
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(
            f"{path}: the crossing block is incomplete ({exc!r} is missing or malformed); "
            "re-export the model"
        ) from None
    return CrossingBlock(kind=block["kind"], tables=named, head=module, **sizes)
