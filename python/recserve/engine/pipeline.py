"""Request pipelines: a loaded artifact plus request fields in, ranked items out.

Nothing here knows about gRPC; the server converts messages to these calls. The item
side of the model's input is gathered once when the model loads; a request only
encodes its user once and indexes the item tables.

Each call is prepare -> batch compute -> finish (recserve.engine.batch_plan), so the server can
run the middle part for several requests at once; ``rank``/``recommend`` run it for one.
With a ``request_context`` the stages are timed: ``feature`` (validation, user encoding),
``crossing`` (the C++ crossing kernel), ``head`` (the TorchScript head, or the whole
``model`` program without a crossing block) and ``topk`` (selection).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from ..core import kernels
from ..results import Ranking, ScoredItem
from . import aoti
from .aoti import COMPILE_MODES, Compilation
from .artifact import RANKER_PROGRAM_FAMILIES, Artifact
from .batch_plan import (
    DEVICES,
    SCORES_BACKEND,
    HeadRows,
    Prepared,
    run_head_rows,
    stage,
    timed_batch,
)
from .crossing import HEAD_DTYPES, crossing_from_artifact
from .programs import first_line
from .request_context import RequestContext
from .schema import FeatureSchema, encode_ids
from .user_features import UserFeatures
from .validation import Limits, check_candidates, check_k, check_recent

DEFAULT_RECOMMEND_K = 10
# What prepare_scores returns: the request's batch work (None: none) and the function of
# that work's output (None without work) that gives the candidates' scores.
ScoresPlan = tuple[Any, Callable[[Any], np.ndarray]]


class Runner(Protocol):
    """What answers a served model's requests: a pipeline itself (each request on its
    caller's thread), or the server's batcher in front of one (recserve.server.batching).
    Both raise InvalidRequest for a bad request, with nothing computed."""

    def rank(
        self,
        user_id: int,
        candidate_item_ids: Sequence[int],
        k: int = 0,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking: ...

    def recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking: ...

    def rank_retrieved(
        self,
        user_id: int,
        item_ids: Sequence[int],
        retriever_scores: Sequence[float],
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking: ...


def check_csr(indptr: np.ndarray, items: np.ndarray, n_rows: int, n_items: int, what: str) -> None:
    """Refuses a per-user item list (CSR) that does not fit the catalog."""
    if indptr.shape != (n_rows + 1,) or indptr[-1] != items.size:
        raise ValueError(f"{what} table is inconsistent")
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"{what} table refers to items outside the catalog")


def _row_items(indptr: np.ndarray, items: np.ndarray, row: int) -> np.ndarray:
    """Row ``row`` of a CSR table (empty for row -1, an unknown user)."""
    if row < 0:
        return np.empty(0, dtype=np.int64)
    return items[indptr[row] : indptr[row + 1]]


class CatalogPipeline:
    """What every pipeline shares: the catalog's id tables, seen items, and Rank.

    A subclass loads the catalog with :meth:`load_catalog` (``user_ids``, ``item_ids``,
    ``item_titles``, ``seen_indptr``, ``seen_items``), sets ``limits``, and defines
    ``encode_user(user_id, context) -> (user state, user row or -1)``,
    ``score_rows(user state, item rows or None) -> scores``, ``prepare_recommend`` and,
    when it has batch work, ``prepare_scores`` and ``compute_batch``. Rank is the same
    for every family: score the known candidates, select with the C++ ``topk_scores``.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    item_titles: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray
    limits: Limits

    device = "cpu"
    # True when concurrent requests' batch work runs as one call (server/batching.py
    # merges them); False when it would only run one after another on the batch thread.
    shares_batch_work = True

    def place_on(self, device: str) -> CatalogPipeline:
        """Moves what the catalog scan and the head read to ``device`` ("cpu" or "cuda"),
        once, when the model loads; a subclass uploads its tables. Requests and answers
        stay on the host."""
        if device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
        self.device = device
        return self

    def load_catalog(self, tables: Mapping[str, np.ndarray]) -> None:
        """The id, title and seen-item tables every family's artifact carries, checked
        (raises ValueError for an inconsistent artifact)."""
        self.user_ids = tables["user_ids"]
        self.item_ids = tables["item_ids"]
        self.item_titles = tables.get("item_titles", np.full(self.item_ids.shape, "", dtype="<U1"))
        self.seen_indptr = tables["seen_indptr"]
        self.seen_items = tables["seen_items"]
        if not (np.all(np.diff(self.item_ids) > 0) and np.all(np.diff(self.user_ids) > 0)):
            raise ValueError("id tables must be sorted and unique")
        check_csr(self.seen_indptr, self.seen_items, self.num_users, self.num_items, "seen-items")

    @property
    def num_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def num_users(self) -> int:
        return int(self.user_ids.size)

    def seen_rows(self, user_row: int) -> np.ndarray:
        return _row_items(self.seen_indptr, self.seen_items, user_row)

    def load_history(self, artifact: Artifact) -> None:
        """The stored history of a family that reads it (``sequence``, ``din``): each
        user's item rows in time order, and how many of the newest items the program
        reads (manifest ``max_history``); raises ValueError for an inconsistent one."""
        self.history_indptr = artifact.tables["history_indptr"]
        self.history_items = artifact.tables["history_items"]
        check_csr(
            self.history_indptr, self.history_items, self.num_users, self.num_items, "history"
        )
        self.max_history = int(artifact.manifest.get("max_history", 50))
        if self.max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {self.max_history}")

    def history_rows(self, user_row: int) -> np.ndarray:
        """The user's stored items, oldest first (empty for an unknown user)."""
        return _row_items(self.history_indptr, self.history_items, user_row)

    def _to_items(self, rows: np.ndarray, scores: np.ndarray) -> list[ScoredItem]:
        return [
            ScoredItem(int(self.item_ids[r]), float(s), str(self.item_titles[r]))
            for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
        ]

    def answer(
        self, rows: np.ndarray, values: np.ndarray, user_row: int, unknown_ids: list[int]
    ) -> Ranking:
        """The Ranking of a top-k selection (rows -1 are slots nothing filled: NaN scores,
        fewer candidates than k)."""
        keep = rows >= 0
        return Ranking(
            items=self._to_items(rows[keep], self.answer_scores(values[keep])),
            cold_start_user=user_row < 0,
            unknown_item_ids=unknown_ids,
        )

    def answer_scores(self, values: np.ndarray) -> np.ndarray:
        """The scores an answer reports for the values its items were selected by (a
        ranker selects by logit, which never saturates, and reports the probability)."""
        return values

    def recommend_inputs(
        self, k: int, recent_item_ids: Sequence[int], request_context: RequestContext | None
    ) -> tuple[int, np.ndarray, list[int]]:
        """Recommend's checked inputs besides the user: the number of items to answer,
        the catalog rows of the recent items, and the recent ids the catalog lacks."""
        with stage(request_context, "feature"):
            check_k(k, self.limits)
            recent = check_recent(recent_item_ids, self.limits)
            codes = encode_ids(self.item_ids, recent)
        k = min(k or DEFAULT_RECOMMEND_K, self.num_items)
        return k, codes[codes > 0] - 1, recent[codes == 0].tolist()

    # -- the three parts of a request (recserve.engine.batch_plan) ---------------------------

    def encode_user_timed(
        self, user_id: int, context: Mapping[str, str], request_context: RequestContext | None
    ) -> tuple[Any, int]:
        """``encode_user`` timed as its stage(s)."""
        with stage(request_context, "feature"):
            return self.encode_user(user_id, context)

    def prepare_scores(
        self, user_state: Any, item_rows: np.ndarray, request_context: RequestContext | None
    ) -> ScoresPlan:
        """Per-request work before the scores of ``item_rows`` (default: scores at once)."""
        return None, lambda _: self.score_rows(user_state, item_rows)

    def compute_batch(self, batch: Sequence[Prepared]) -> list[Any]:
        """The shared part of several prepared requests: one output per request."""
        raise NotImplementedError(f"{type(self).__name__} has no batch work")

    def run_one(self, prepared: Prepared) -> Ranking:
        """A prepared request, unbatched: its batch computation on a batch of one."""
        if prepared.work is None:
            return prepared.finish(None)
        if prepared.request_context is not None:
            prepared.request_context.check_deadline("head")
        return prepared.finish(self.compute_batch([prepared])[0])

    def prepare_rank(
        self,
        user_id: int,
        candidate_item_ids: Sequence[int],
        k: int = 0,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        """The per-request part of :meth:`rank` (raises InvalidRequest for a bad one)."""
        rc = request_context
        with stage(rc, "feature"):
            candidates = check_candidates(candidate_item_ids, self.limits)
            check_k(k, self.limits)
            codes = encode_ids(self.item_ids, candidates)
            known = codes > 0
            rows = codes[known] - 1
        user_state, user_row = self.encode_user_timed(user_id, context or {}, rc)
        work, to_scores = self.prepare_scores(user_state, rows, rc)
        k = rows.size if k == 0 else min(k, rows.size)

        def finish(output: Any) -> Ranking:
            with stage(rc, "head"):
                scores = to_scores(output)
            with stage(rc, "topk"):
                values, order = kernels.topk_scores(scores, k, backend=SCORES_BACKEND)
                selected = np.where(order >= 0, rows[order], -1)  # NaN scores: never selected
                return self.answer(selected, values, user_row, candidates[~known].tolist())

        return Prepared(work, finish, rc)

    def rank(
        self,
        user_id: int,
        candidate_item_ids: Sequence[int],
        k: int = 0,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        return self.run_one(
            self.prepare_rank(user_id, candidate_item_ids, k, context, request_context)
        )

    # -- a cascade's second stage -------------------------------------------------------

    # False: the model ranks only a retriever's items, in a cascade (family din)
    answers_alone = True

    def check_retriever(self, name: str) -> None:
        """Raises InvalidRequest when this ranker cannot rank retriever ``name``'s items."""

    def prepare_rank_retrieved(
        self,
        user_id: int,
        item_ids: Sequence[int],
        retriever_scores: Sequence[float],
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        """The per-request part of ranking a retriever's items: for a ranker that reads
        neither the retriever's scores nor the recent items, exactly a Rank of them."""
        return self.prepare_rank(user_id, item_ids, k, context, request_context)

    def rank_retrieved(
        self,
        user_id: int,
        item_ids: Sequence[int],
        retriever_scores: Sequence[float],
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        return self.run_one(
            self.prepare_rank_retrieved(
                user_id, item_ids, retriever_scores, k, recent_item_ids, context, request_context
            )
        )

    def prepare_recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        """The per-request part of ``recommend`` (raises InvalidRequest for a bad one)."""
        raise NotImplementedError

    def recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Ranking:
        return self.run_one(
            self.prepare_recommend(
                user_id, k, recent_item_ids, include_seen, context, request_context
            )
        )


class RankerPipeline(CatalogPipeline):
    """Serves a ranker artifact (user fields x item fields -> logit) for Rank and Recommend.

    The TorchScript module's signature is
    ``forward(user: int64[B, Fu], item: int64[B, Fi], item_multi: int64[B, M]) -> float[B]``
    (logits), with columns in the schema's order.

    When the artifact has a crossing block (and ``use_crossing``), scores come from the
    fused C++ crossing kernel plus the ``head`` program (recserve.engine.crossing), with the
    item side precomputed here; otherwise from the whole ``model`` program. Both give
    the same scores within float32 rounding. ``head_dtype="bfloat16"`` (opt-in) runs the
    crossing path's head in bfloat16: faster, scores to about 3 significant digits;
    ``head_dtype="int8"`` (opt-in, CPU only) runs its Linear layers in int8
    (recserve.engine.int8_head). Both need a crossing block. ``compile_programs`` (opt-in,
    a mode of recserve.engine.aoti.COMPILE_MODES) serves the float32 program of an
    ``export``-format artifact compiled by AOTInductor (:meth:`compile_served_program`).
    """

    def __init__(
        self,
        artifact: Artifact,
        limits: Limits | None = None,
        use_crossing: bool = True,
        head_dtype: str = "float32",
        compile_programs: str = "none",
    ) -> None:
        if artifact.family not in RANKER_PROGRAM_FAMILIES:
            raise ValueError(f"family {artifact.family!r} is not a ranker")
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(
                f"head dtype {head_dtype!r} is not supported (supported: {', '.join(HEAD_DTYPES)})"
            )
        self.artifact = artifact
        self.limits = limits or Limits()
        self.schema: FeatureSchema = artifact.schema
        self.module = artifact.modules["model"]
        t = artifact.tables
        self.load_catalog(t)
        self.users = UserFeatures(self.schema, self.user_ids, t["user_features"])
        self.user_features = self.users.table
        self._item_features = torch.from_numpy(np.ascontiguousarray(t["item_features"]))
        self._item_multi = torch.from_numpy(np.ascontiguousarray(t["item_multi"]))
        self._check_tables()
        self.crossing = crossing_from_artifact(artifact, head_dtype) if use_crossing else None
        self.head_dtype = head_dtype if self.crossing is not None else "float32"
        # served program -> how it was compiled, and whether that is what serves
        self.compiled: dict[str, Compilation] = {}
        if compile_programs not in COMPILE_MODES:
            raise ValueError(
                f"compile mode {compile_programs!r} is not supported "
                f"(supported: {', '.join(COMPILE_MODES)})"
            )
        if compile_programs != "none":
            self.compile_served_program(use_stored=compile_programs == "aoti-stored")

    def compile_served_program(self, use_stored: bool = False) -> None:
        """Replaces the served program (the crossing head, or the whole ``model``) by its
        AOTInductor compilation, when the artifact holds it as a ``torch.export`` program
        and it runs in float32. With ``use_stored``, the artifact's stored compilation
        is loaded when it fits this machine (recserve.engine.aoti.unfit_reason); otherwise
        the program is compiled here. The served scores of the first user against up to
        256 items are compared with the exported program's: a compilation that moves them
        by more than aoti.SCORE_TOLERANCE relative, or that fails to compile, load or
        run, is not served: the exported program is. ``compiled`` records what happened.
        A stored compilation whose bytes fail their checksum refuses the version."""
        key = "head" if self.crossing is not None else "model"
        program = self.artifact.exported.get(key)
        if program is None or self.head_dtype != "float32" or self.num_items == 0:
            return
        rows = np.arange(min(256, self.num_items))
        user = (
            self.user_features[0] if self.num_users else np.zeros(len(self.users.columns), np.int64)
        )
        before = torch.from_numpy(self.score_rows(user, rows).astype(np.float64))
        started = time.perf_counter()
        exported = self.crossing.head if self.crossing is not None else self.module
        how, make = self._compilation(key, program, use_stored)
        try:
            self._set_served_program(make())
            after = torch.from_numpy(self.score_rows(user, rows).astype(np.float64))
            difference = aoti.score_difference(after, before)
        except Exception as exc:  # noqa: BLE001 - the compiler, the loader and the kernels raise many kinds
            how, difference = f"{how}, failed: {first_line(exc)}", float("nan")
        served = difference <= aoti.SCORE_TOLERANCE  # False for nan
        if not served:
            self._set_served_program(exported)
        self.compiled[key] = Compilation(how, time.perf_counter() - started, difference, served)

    def _compilation(
        self, key: str, program: torch.export.ExportedProgram, use_stored: bool
    ) -> tuple[str, Callable[[], aoti.CompiledProgram]]:
        """How the compiled program is had, and the call that has it. A stored
        compilation's bytes are read (and their checksum checked) here: a mismatch
        refuses the version."""
        stored = self.artifact.compiled.get(key) if use_stored else None
        if stored is None:
            reason = "" if not use_stored else "; the artifact stores no compilation of it"
            return f"compiled at load{reason}", functools.partial(aoti.compile_aoti, program)
        unfit = aoti.unfit_reason(stored.target, stored.torch)
        if unfit is not None:
            how = f"compiled at load; its stored compilation does not fit: {unfit}"
            return how, functools.partial(aoti.compile_aoti, program)
        data = stored.read_verified()
        return f"stored compilation for {stored.target}", functools.partial(aoti.load_package, data)

    def _set_served_program(self, program: torch.nn.Module) -> torch.nn.Module:
        """Serves ``program`` in place of the head or whole program; returns the one replaced."""
        if self.crossing is not None:
            replaced, self.crossing.head = self.crossing.head, program
        else:
            replaced, self.module = self.module, program
        return replaced

    def _check_tables(self) -> None:
        n_items = self.num_items
        if self._item_features.shape[0] != n_items or self._item_multi.shape[0] != n_items:
            raise ValueError("item tables disagree on the number of items")

    # -- user side -------------------------------------------------------------------

    def encode_user(self, user_id: int, context: Mapping[str, str]) -> tuple[np.ndarray, int]:
        """The user's encoded feature row and table row (-1 for a cold-start user)."""
        return self.users.encode(user_id, context)

    def place_on(self, device: str) -> RankerPipeline:
        """On "cuda": the crossing item tables and the head (or the whole program and the
        item feature tables, without a crossing block) move to the device once; each
        request then crosses and runs the head there and brings back only its logits."""
        if device == "cuda" and self.head_dtype == "int8":  # built for oneDNN on the CPU
            raise ValueError(
                "the int8 head runs on the CPU only; use --device cpu, or --head-precision "
                "fp32 or bf16 on the GPU"
            )
        super().place_on(device)
        if device == "cuda":
            kernels.require_cuda()
            if self.crossing is not None:
                self.crossing.to_device()
                self.crossing.head = self.crossing.head.to("cuda")
            else:
                self.module = self.module.to("cuda")
                self._item_features = self._item_features.to("cuda")
                self._item_multi = self._item_multi.to("cuda")
        return self

    # -- scoring and recommending -------------------------------------------------------

    def head(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The head program on rows of one or several requests: logits [M]."""
        if self.crossing is not None:
            return self.crossing.head_logits(*inputs)
        return self.module(*inputs).reshape(-1)

    def prepare_scores(
        self,
        user_features: np.ndarray,
        item_rows: np.ndarray | None,
        request_context: RequestContext | None = None,
    ) -> ScoresPlan:
        """The head's input rows for one user against item rows (None = all items), and
        the float32 logits from the head's output: Rank and Recommend select by logit,
        and :meth:`answer_scores` reports the selected ones as probabilities."""
        n = self.num_items if item_rows is None else item_rows.size
        if n == 0:
            return None, lambda _: np.empty(0, dtype=np.float32)
        linear = None
        on_device = self.device == "cuda"
        if self.crossing is not None:
            with stage(request_context, "crossing"):
                if on_device:
                    rows, linear = self.crossing.head_inputs_on_device(user_features, item_rows)
                else:
                    rows, linear = self.crossing.head_inputs(user_features, item_rows)
        else:
            with stage(request_context, "feature"):
                if item_rows is None:
                    items, multi = self._item_features, self._item_multi
                else:
                    index = torch.from_numpy(item_rows).to(self._item_features.device)
                    items, multi = self._item_features[index], self._item_multi[index]
                user = torch.from_numpy(user_features).to(items.device).unsqueeze(0).expand(n, -1)
                rows = HeadRows((user, items, multi))

        def to_logits(logits: torch.Tensor) -> np.ndarray:
            if linear is not None:
                logits = logits + linear
            return logits.to(torch.float32).cpu().numpy()

        return rows, to_logits

    def answer_scores(self, values: np.ndarray) -> np.ndarray:
        """Probabilities of the selected logits, computed in float64 so that a logit gets
        the same float32 score however many are converted at once."""
        x = values.astype(np.float64)
        e = np.exp(-np.abs(x))  # never overflows; 1 / (1 + e^-x) for x >= 0, else e^x / (1 + e^x)
        return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)

    @property
    def shares_batch_work(self) -> bool:  # type: ignore[override]
        """Only the crossing head runs batched; a whole program runs per request."""
        return self.crossing is not None

    def run_head(self, works: Sequence[HeadRows]) -> list[torch.Tensor]:
        """Logits [N_i] of each request's rows: the crossing head in one call on all of
        them, the whole program per request (recserve.engine.batch_plan says why)."""
        return run_head_rows(self.head, works, shared=self.crossing is not None)

    def compute_batch(self, batch: Sequence[Prepared]) -> list[torch.Tensor]:
        """The head on the rows of every request of the batch."""
        with timed_batch(batch, "head"):
            return self.run_head([p.work for p in batch])

    def score_logits(self, user_features: np.ndarray, item_rows: np.ndarray | None) -> np.ndarray:
        """float32 logits of one user against item table rows (None = all items)."""
        rows, to_logits = self.prepare_scores(user_features, item_rows)
        return to_logits(None if rows is None else self.run_head([rows])[0])

    def score_rows(self, user_features: np.ndarray, item_rows: np.ndarray | None) -> np.ndarray:
        """Scores (probabilities) of one user against item table rows (None = all items)."""
        return self.answer_scores(self.score_logits(user_features, item_rows))

    def prepare_recommend(
        self,
        user_id: int,
        k: int = 0,
        recent_item_ids: Sequence[int] = (),
        include_seen: bool = False,
        context: Mapping[str, str] | None = None,
        request_context: RequestContext | None = None,
    ) -> Prepared:
        rc = request_context
        k, recent_rows, unknown_ids = self.recommend_inputs(k, recent_item_ids, rc)
        user_features, user_row = self.encode_user_timed(user_id, context or {}, rc)
        work, to_scores = self.prepare_scores(user_features, None, rc)

        def finish(output: Any) -> Ranking:
            with stage(rc, "head"):
                scores = to_scores(output)
            with stage(rc, "topk"):
                exclude = None
                if not include_seen:
                    exclude = [np.concatenate([self.seen_rows(user_row), recent_rows])]
                values, rows = kernels.topk_scores(scores, k, exclude, backend=SCORES_BACKEND)
                return self.answer(rows, values, user_row, unknown_ids)

        return Prepared(work, finish, rc)
