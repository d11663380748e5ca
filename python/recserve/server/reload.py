"""The triggers of a repository rescan: the poller and the background reload (SIGHUP,
the ReloadModels RPC). What a load and an unload do to a version is in lifecycle.py."""

from __future__ import annotations

import logging
import threading

from .repository import ModelRepository
from .torch_threads import adopt_torch_threads

log = logging.getLogger("recserve.server")


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
