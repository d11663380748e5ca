"""The model repository: ``<root>/<name>/<version>/``, the newest good version served."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recserve.artifact import MODEL_NAME, ArtifactError, list_versions, load_artifact
from recserve.errors import InvalidRequest, ModelNotFound, ModelUnavailable
from recserve.pipeline import CatalogPipeline, Limits, make_pipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """One served version. ``runner`` answers its requests: the pipeline itself, or a
    batcher in front of it (same ``rank``/``recommend`` signature)."""

    name: str
    version: int
    pipeline: CatalogPipeline
    runner: Any = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.runner is None:
            object.__setattr__(self, "runner", self.pipeline)


# Puts a runner (e.g. a batcher) in front of a freshly loaded pipeline.
RunnerFactory = Callable[[CatalogPipeline], Any]


class ModelRepository:
    """Loads every model under ``root`` and finds the one a request asks for.

    For each model the newest version that loads and verifies is served; a broken
    version is logged with its reason and skipped, so an older good one keeps serving.
    """

    def __init__(
        self,
        root: str | Path,
        limits: Limits,
        default_model: str = "",
        head_dtype: str = "float32",
        make_runner: RunnerFactory | None = None,
    ) -> None:
        self.root = Path(root)
        self._make_runner = make_runner
        self.limits = limits
        self.head_dtype = head_dtype  # of the rankers' crossing heads
        self._default = default_model
        self._models: dict[str, dict[int, LoadedModel]] = {}
        self._lock = threading.Lock()
        self._draining = False

    def load_all(self) -> list[LoadedModel]:
        """Load the newest good version of each model; returns what was loaded."""
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"model repository {self.root} does not exist; train a model first with "
                "`recserve train --model-repo " + str(self.root) + "`"
            )
        loaded = []
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            for version in reversed(list_versions(model_dir)):
                try:
                    artifact = load_artifact(model_dir / str(version))
                    pipeline = make_pipeline(artifact, self.limits, self.head_dtype)
                except Exception as exc:  # a version that cannot load never stops the others
                    log.warning(
                        "not serving %s/%d: %s",
                        model_dir.name,
                        version,
                        exc,
                        exc_info=not isinstance(exc, ArtifactError),
                    )
                    continue
                runner = self._make_runner(pipeline) if self._make_runner else None
                model = LoadedModel(artifact.name, artifact.version, pipeline, runner)
                with self._lock:
                    self._models.setdefault(model.name, {})[model.version] = model
                loaded.append(model)
                break
        if self._default and self._default not in self._models:
            raise ModelNotFound(
                f"--default-model {self._default!r} is not among the loaded models "
                f"({', '.join(sorted(self._models)) or 'none'})"
            )
        return loaded

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

    def get(self, name: str = "", version: int = 0) -> LoadedModel:
        """The model a request names; '' is the default model, 0 its newest version."""
        with self._lock:
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
        """From now on every request gets UNAVAILABLE (the server is stopping)."""
        with self._lock:
            self._draining = True

    @contextmanager
    def acquire(self, name: str = "", version: int = 0) -> Iterator[LoadedModel]:
        """The model a request names, held for the duration of the request."""
        yield self.get(name, version)
