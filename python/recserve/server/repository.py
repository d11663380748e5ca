"""The model repository: ``<root>/<name>/<version>/``, the newest good versions served.

:meth:`ModelRepository.reload` rescans the directory and swaps versions while requests
run; :meth:`ModelRepository.acquire` holds a version for one request, so a retired
version is unloaded only once its last request has finished.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recserve.engine.artifact import (
    CASCADE_RANKER_FAMILIES,
    MODEL_NAME,
    ArtifactError,
    list_versions,
    load_artifact,
)
from recserve.engine.dispatch import make_pipeline
from recserve.engine.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from recserve.engine.pipeline import CatalogPipeline, Runner
from recserve.engine.validation import Limits

from .lifecycle import release_memory, warm_up
from .metrics import Metrics

log = logging.getLogger(__name__)

LOADED, REFUSED, UNLOADED = "loaded", "refused", "unloaded"
RELEASE_WAIT_SECONDS = 5.0  # for a released version's last request to drop its reference


@dataclass(frozen=True)
class LoadedModel:
    """One served version. ``runner`` answers its requests: the pipeline itself, or a
    batcher in front of it (recserve.engine.pipeline.Runner)."""

    name: str
    version: int
    pipeline: CatalogPipeline
    # None at construction: the pipeline itself answers.
    runner: Runner = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.runner is None:
            object.__setattr__(self, "runner", self.pipeline)


@dataclass(frozen=True)
class RepositoryEvent:
    """What one scan did to one version; ``reason`` says why it was refused."""

    name: str
    version: int
    action: str  # LOADED, REFUSED or UNLOADED
    reason: str = ""


# Puts a runner (e.g. a batcher) in front of a freshly loaded pipeline.
RunnerFactory = Callable[[CatalogPipeline], Runner]


def _fingerprint(version_dir: Path) -> tuple[Any, ...]:
    """Changes whenever the directory's contents do: a file added, removed or rewritten
    (a half-written copy completed, a manifest replaced)."""
    try:
        with os.scandir(version_dir) as entries:
            files = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
        return (version_dir.stat().st_ino, *files)
    except OSError:  # vanished while we looked: retried on the next scan
        return ()


class ModelRepository:
    """Serves the models under ``root`` and finds the one a request asks for.

    For each model the newest ``keep_versions`` versions that load, verify and warm up
    are served; a broken version is logged with its reason and skipped, so an older good
    one keeps serving. Events go to the log and to ``metrics``.
    """

    def __init__(
        self,
        root: str | Path,
        limits: Limits,
        default_model: str = "",
        head_dtype: str = "float32",
        make_runner: RunnerFactory | None = None,
        metrics: Metrics | None = None,
        keep_versions: int = 1,
        device: str = "cpu",
        default_rank_with: str = "",
        compile_programs: str = "none",
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1; got {keep_versions}")
        self.root = Path(root)
        self._make_runner = make_runner
        self.limits = limits
        self.head_dtype = head_dtype  # of the rankers' crossing heads
        self.device = device  # where each loaded version's tables and head live
        self.compile_programs = compile_programs  # AOTInductor for exported rankers (aoti.py)
        self.keep_versions = keep_versions
        self._metrics = metrics
        self._default = default_model
        self.default_rank_with = default_rank_with  # "": the default Recommend is no cascade
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._lock = threading.Lock()  # guards _models, _holds, _retired, _draining
        self._scan_lock = threading.Lock()  # one scan at a time
        self._holds: dict[int, int] = {}  # id(LoadedModel) -> requests holding it
        self._retired: dict[int, LoadedModel] = {}  # no longer served, still held
        self._refused: dict[tuple[str, int], tuple[Any, ...]] = {}  # -> fingerprint
        self._release_pending = False  # a scan unloaded a version: give memory back
        self._draining = False

    # -- scanning --------------------------------------------------------------------

    def load_all(self) -> list[LoadedModel]:
        """The first scan; returns the served versions. Raises FileNotFoundError without
        a repository, ModelNotFound when the default model did not load."""
        try:
            exists = self.root.is_dir()
            readable = not exists or os.access(self.root, os.R_OK | os.X_OK)
        except PermissionError:  # a folder above it is closed to this account
            exists, readable = True, False
        if not readable:
            uid = f" (uid {os.getuid()})" if hasattr(os, "getuid") else ""
            raise PermissionError(
                f"model repository {self.root} is not readable by the account running the "
                f"server{uid}; give that account read access to it and the folders above it "
                f"(e.g. chmod -R a+rX {self.root}), or run as the user that owns it"
            )
        if not exists:
            raise FileNotFoundError(
                f"model repository {self.root} does not exist; train a model first with "
                "`recserve train --model-repo " + str(self.root) + "`"
            )
        self.reload()
        names = self.names()
        if self._default and self._default not in names:
            raise ModelNotFound(
                f"--default-model {self._default!r} is not among the loaded models "
                f"({', '.join(names) or 'none'})"
            )
        if self.default_rank_with:
            self._check_default_ranker(names)
        return self.served()

    def _check_default_ranker(self, names: list[str]) -> None:
        name = self.default_rank_with
        if name not in names:
            raise ModelNotFound(
                f"--default-rank-with {name!r} is not among the loaded models "
                f"({', '.join(names) or 'none'})"
            )
        pipeline = self.get(name, 0).pipeline
        family = pipeline.artifact.family
        if family not in CASCADE_RANKER_FAMILIES:
            raise ModelNotFound(
                f"--default-rank-with {name!r} is a {family!r} model, not a ranker "
                f"({', '.join(CASCADE_RANKER_FAMILIES)})"
            )
        try:
            pipeline.check_retriever(self.default_model)
        except InvalidRequest as exc:
            raise ModelNotFound(f"--default-rank-with {name!r}: {exc}") from None

    def reload(self) -> list[RepositoryEvent]:
        """Rescans the repository and returns what changed, in order.

        New versions are loaded, verified and warmed up in the calling thread while the
        served ones keep answering, then swapped in atomically. Scans are serialised: a
        caller arriving during a scan waits for it, then scans itself, so a version
        published before the call is always seen. A refused version is not retried
        until its directory's contents change. A model whose versions are all bad keeps
        what it served, as does one whose directory holds no version any more (nothing good
        replaces it); a model directory that is gone is unloaded.
        """
        with self._scan_lock:
            if self._draining:
                return []
            try:
                model_dirs = sorted(
                    p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
                )
            except OSError as exc:  # e.g. an unmounted volume: keep serving what we have
                log.warning("cannot scan the model repository %s: %s", self.root, exc)
                return []
            events: list[RepositoryEvent] = []
            for model_dir in model_dirs:
                events += self._scan_model(model_dir)
            on_disk = {p.name for p in model_dirs}
            for name in self.names():
                if name not in on_disk:
                    events += self._swap(name, {}, "its directory left the repository")
            self._refused = {k: v for k, v in self._refused.items() if k[0] in on_disk}
            if self._release_pending:  # here, where no frame of the scan holds a model
                self._release_pending = False
                release_memory()
            return events

    def _scan_model(self, model_dir: Path) -> list[RepositoryEvent]:
        name = model_dir.name
        with self._lock:
            served = dict(self._models.get(name, {}))
        versions = list_versions(model_dir)
        keep: dict[int, LoadedModel] = {}
        events: list[RepositoryEvent] = []
        for version in reversed(versions):
            if len(keep) == self.keep_versions:
                break
            if version in served:
                keep[version] = served[version]
                continue
            version_dir = model_dir / str(version)
            fingerprint = _fingerprint(version_dir)
            if self._refused.get((name, version)) == fingerprint:
                continue  # refused before and unchanged since
            try:
                keep[version] = self._load(version_dir)
            except Exception as exc:  # noqa: BLE001 - a bad version never stops the others
                self._refused[(name, version)] = fingerprint
                event = RepositoryEvent(name, version, REFUSED, str(exc))
                self._record(event, exc_info=not isinstance(exc, ArtifactError))
                events.append(event)
                continue
            self._refused.pop((name, version), None)
        for key in [k for k in self._refused if k[0] == name and k[1] not in versions]:
            del self._refused[key]
        if not keep and served:
            # No good replacement (every version bad, or the directory emptied): keep the
            # good version in memory. Only removing the model's directory unloads it.
            log.warning(
                "no good version of %s in %s; still serving version(s) %s from memory",
                name,
                model_dir,
                ", ".join(str(v) for v in sorted(served, reverse=True)),
                extra={"model": name},
            )
            return events
        return events + self._swap(name, keep, "replaced by newer versions")

    def _load(self, version_dir: Path) -> LoadedModel:
        """Verify (every checksum), build the pipeline, warm it up; nothing is locked.
        The log gives each step's time: a reload competes with the requests it serves."""
        started = time.perf_counter()
        artifact = load_artifact(version_dir)
        verified = time.perf_counter()
        pipeline = make_pipeline(
            artifact, self.limits, self.head_dtype, self.device, self.compile_programs
        )
        built = time.perf_counter()
        for program, compiled in getattr(pipeline, "compiled", {}).items():
            log.log(
                logging.INFO if compiled.served else logging.WARNING,
                "the %s program of %s v%d with AOTInductor (%s) in %.1f s: largest relative "
                "difference of its scores from the exported program's on the probe %.1e; %s",
                program, artifact.name, artifact.version, compiled.how, compiled.seconds,
                compiled.difference,
                "serving it" if compiled.served else "beyond the bound, the exported program serves",
                extra={"model": artifact.name},
            )  # fmt: skip
        warm_up(pipeline)
        log.info(
            "%s/%d took %.2f s to verify, %.2f s to build, %.2f s to warm up",
            artifact.name, artifact.version, verified - started, built - verified,
            time.perf_counter() - built, extra={"model": artifact.name},
        )  # fmt: skip
        runner = self._make_runner(pipeline) if self._make_runner else None
        return LoadedModel(artifact.name, artifact.version, pipeline, runner)

    def _swap(self, name: str, keep: dict[int, LoadedModel], why: str) -> list[RepositoryEvent]:
        """Serve exactly ``keep`` for ``name``; retired versions unload when released."""
        with self._lock:
            old = self._models.get(name, {})
            if keep:
                self._models[name] = dict(keep)
            else:
                self._models.pop(name, None)
            retired = [m for v, m in old.items() if keep.get(v) is not m]
            idle = [m for m in retired if id(m) not in self._holds]
            self._retired.update((id(m), m) for m in retired if id(m) in self._holds)
        events = [
            RepositoryEvent(name, v, LOADED) for v, m in sorted(keep.items()) if old.get(v) is not m
        ]
        events += [RepositoryEvent(m.name, m.version, UNLOADED) for m in retired]
        for event in events:
            self._record(event, why=why)
        for model in idle:
            self._close(model)
        self._release_pending |= bool(idle)
        return events

    def _record(self, event: RepositoryEvent, why: str = "", exc_info: bool = False) -> None:
        extra = {"model": event.name, "version": event.version, "action": event.action}
        where = f"{event.name}/{event.version}"
        if event.action == REFUSED:
            log.warning("not serving %s: %s", where, event.reason, exc_info=exc_info, extra=extra)
        elif event.action == LOADED:
            log.info("loaded %s: verified and warmed up, now serving", where, extra=extra)
        else:
            log.info("no longer serving %s (%s)", where, why, extra=extra)
        if self._metrics is not None:
            self._metrics.model_event(event.name, event.version, event.action)

    def _close(self, model: LoadedModel) -> None:
        """Closes the runner (a batcher); the memory goes with the last reference."""
        runner = model.runner
        if runner is not model.pipeline and callable(getattr(runner, "close", None)):
            try:
                runner.close()
            except Exception:
                log.exception("closing the runner of %s/%d failed", model.name, model.version)
        extra = {"model": model.name, "version": model.version}
        log.info("released %s/%d: no request holds it", model.name, model.version, extra=extra)

    def _unload_released(self, box: list[LoadedModel]) -> None:
        """Unloads a version its last request let go of (passed in ``box`` so that this
        thread keeps no reference), once that request's own references are gone too."""
        model = box.pop()
        gone = threading.Event()
        try:
            weakref.finalize(model.pipeline, gone.set)
        except TypeError:  # a pipeline without weak references: do not wait for it
            gone.set()
        self._close(model)
        del model
        gone.wait(RELEASE_WAIT_SECONDS)  # the request answers, then drops its reference
        release_memory()

    # -- serving ---------------------------------------------------------------------

    @property
    def default_model(self) -> str:
        with self._lock:
            if self._default:
                return self._default
            return min(self._models, default="")

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def versions(self, name: str) -> list[int]:
        with self._lock:
            return sorted(self._models.get(name, {}), reverse=True)

    def served(self) -> list[LoadedModel]:
        """Every served version, by name, newest first."""
        with self._lock:
            return [
                versions[v]
                for _, versions in sorted(self._models.items())
                for v in sorted(versions, reverse=True)
            ]

    def get(self, name: str = "", version: int = 0) -> LoadedModel:
        """The model a request names; '' is the default model, 0 its newest version."""
        with self._lock:
            return self._find(name, version)

    def _find(self, name: str, version: int) -> LoadedModel:
        if self._draining:
            raise ModelUnavailable("the server is shutting down; send to another replica")
        if not self._models:
            raise ModelUnavailable("no model is loaded yet; retry shortly")
        name = name or self._default or min(self._models)
        if not MODEL_NAME.match(name):  # never a path: no request reaches the disk
            raise InvalidRequest(
                f"model name {name[:140]!r} is not a model name: use 1-128 letters, "
                "digits, '.', '_' or '-', starting with a letter or digit"
            )
        versions = self._models.get(name)
        if versions is None:
            known = ", ".join(sorted(self._models))
            raise ModelNotFound(f"model {name!r} is not loaded; loaded models: {known}")
        if version < 0:
            raise InvalidRequest(f"model version must be positive (0 = newest); got {version}")
        if version == 0:
            return versions[max(versions)]
        if version not in versions:
            loaded = ", ".join(str(v) for v in sorted(versions, reverse=True))
            raise ModelNotFound(
                f"version {version} of {name!r} is not loaded; loaded versions: {loaded}"
            )
        return versions[version]

    def start_draining(self) -> None:
        """From now on every request gets UNAVAILABLE and scans do nothing (stopping)."""
        with self._lock:
            self._draining = True

    def close(self) -> None:
        """After the server stopped: closes every version's runner (batch threads) and
        drops the models, so an embedding process gets its threads and memory back."""
        with self._lock:
            self._draining = True
            models = [m for versions in self._models.values() for m in versions.values()]
            models += list(self._retired.values())
            self._models, self._retired = {}, {}
        for model in models:
            self._close(model)

    @contextmanager
    def acquire(self, name: str = "", version: int = 0) -> Iterator[LoadedModel]:
        """The model a request names, held for the duration of the request: a version
        retired meanwhile is unloaded only when its last holder releases it."""
        with self._lock:
            model = self._find(name, version)
            key = id(model)  # stable: the model is referenced while it is held
            self._holds[key] = self._holds.get(key, 0) + 1
        try:
            yield model
        finally:
            with self._lock:
                left = self._holds.pop(key) - 1
                if left:
                    self._holds[key] = left
                retired = None if left else self._retired.pop(key, None)
            if retired is not None:
                # Not in this request's thread: the collection would delay its answer.
                threading.Thread(
                    target=self._unload_released, args=([retired],), name="unload", daemon=True
                ).start()
