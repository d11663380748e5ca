"""Hot reload around the model repository: warm a new version up before it serves,
give a retired version's memory back, and the triggers of a rescan (poller, SIGHUP).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from recserve.engine.pipeline import CatalogPipeline

from .torch_threads import adopt_torch_threads

if TYPE_CHECKING:
    from .repository import ModelRepository

log = logging.getLogger("recserve.server")

WARM_UP_CALLS = 2  # TorchScript profiles its first call and optimises on the second


class WarmUpError(RuntimeError):
    """A freshly loaded version failed on a real request: it must not serve."""


def warm_up(pipeline: CatalogPipeline) -> None:
    """Runs a few real Rank and Recommend calls with ids from the model's own tables, so a
    client never pays for the first call's lazy set-up, and a version that loads but
    crashes on use is refused. Raises WarmUpError with the call that failed."""
    limits = pipeline.limits
    user_id = int(pipeline.user_ids[0]) if pipeline.num_users else 0
    items = pipeline.item_ids[: min(16, pipeline.num_items, limits.max_candidates)].tolist()
    k = min(5, len(items), limits.max_k)
    for _ in range(WARM_UP_CALLS):
        try:
            if items:  # an empty catalog has nothing to rank
                pipeline.rank(user_id, items, k=k)
            pipeline.recommend(user_id, k=k, recent_item_ids=items[:2])  # type: ignore[attr-defined]
        except Exception as exc:
            raise WarmUpError(f"a warm-up request failed: {type(exc).__name__}: {exc}") from exc


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Frees what an unloaded version left: cycles first, then glibc's free lists, which
    otherwise keep the freed tables' pages resident."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def reload_logged(repository: ModelRepository) -> None:
    """One scan; a failure is logged, never raised (triggers run in their own threads)."""
    adopt_torch_threads()  # the scan warms new versions up with real requests
    try:
        repository.reload()
    except Exception:
        log.exception("rescanning the model repository %s failed", repository.root)


def reload_in_background(repository: ModelRepository, why: str) -> threading.Thread:
    """Starts one scan in a daemon thread (what SIGHUP does); ``why`` goes to the log."""
    log.info("%s: rescanning the model repository %s", why, repository.root)
    thread = threading.Thread(target=reload_logged, args=(repository,), name="reload", daemon=True)
    thread.start()
    return thread


class RepositoryPoller:
    """Rescans a repository every ``seconds`` (0: never) in a daemon thread until stopped."""

    def __init__(self, repository: ModelRepository, seconds: float) -> None:
        self.repository = repository
        self.seconds = seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="repository-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        """Stops polling; a scan in progress is not waited for beyond ``timeout``."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.seconds):
            reload_logged(self.repository)
