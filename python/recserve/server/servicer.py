"""The Recommender service: convert the request, call the model's runner, convert the answer.

Each RPC runs in a :class:`RequestContext` (id, the client's deadline, stage timings)
and is observed once by :class:`Metrics`; the answer's trailing metadata carries the
model version and the server-side timings.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc

from recserve.engine import explain
from recserve.engine.artifact import CASCADE_RANKER_FAMILIES
from recserve.engine.errors import InvalidRequest
from recserve.engine.pipeline import DEFAULT_RECOMMEND_K
from recserve.engine.request_context import RequestContext
from recserve.engine.validation import check_k
from recserve.results import Ranking
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

from . import converters
from .interceptors import accepted_at, status_for
from .metrics import Metrics
from .repository import LoadedModel, ModelRepository
from .stream_watch import StreamWatch

log = logging.getLogger("recserve.server")

MAX_REQUEST_ID_CHARS = 128
CASCADE_MIN_RETRIEVE = 100
CASCADE_RETRIEVE_FACTOR = 10
# gRPC metadata values are printable ASCII: a client's request_id with anything else
# (a control character, non-ASCII text) is percent-encoded in the trailing metadata,
# else gRPC fails the whole call with INTERNAL "Invalid metadata".
_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def metadata_value(text: str) -> str:
    """``text`` as a valid gRPC metadata value: unchanged when printable ASCII without
    '%', else percent-encoded (UTF-8)."""
    return urllib.parse.quote(text, safe=_METADATA_SAFE)


class _Call:
    """What one RPC learns on its way: its context and the model(s) that answered."""

    def __init__(self, request_id: str, timeout: float | None) -> None:
        self.request = RequestContext.with_timeout(request_id, timeout, accepted_at())
        self.models: list[LoadedModel] = []
        self.started = time.perf_counter()

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        timings = dict(self.request.timings)
        timings["total"] = time.perf_counter() - self.started
        timing = ",".join(f"{stage}={seconds * 1000:.3f}" for stage, seconds in timings.items())
        metadata = [
            ("recserve-request-id", metadata_value(self.request.request_id)),
            ("recserve-timing-ms", timing),
        ]
        if self.models:
            metadata.append(("recserve-model", self.models[0].name))
            metadata.append(("recserve-model-version", str(self.models[0].version)))
        return tuple(metadata)


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(
        self,
        repository: ModelRepository,
        metrics: Metrics | None = None,
        max_explain_k: int = 100,
        stream_idle_seconds: float = 0.0,
    ) -> None:
        self.repository = repository
        self.metrics = metrics or Metrics()
        self.max_explain_k = max_explain_k
        self.stream_watch = StreamWatch(
            stream_idle_seconds, self.metrics.idle_streams_cancelled.inc
        )
        self._active = 0  # requests being handled, for a graceful stop
        self._idle = threading.Condition()
        # Called once a ReloadModels scan ends: with --processes N it asks the supervisor
        # to have the other processes rescan too (server/supervisor.py).
        self.after_reload: Callable[[], None] | None = None

    def wait_until_idle(self, timeout: float) -> bool:
        """Waits until no request is being handled; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._active == 0, timeout)

    def _track(self, delta: int) -> None:
        with self._idle:
            self._active += delta
            if self._active == 0:
                self._idle.notify_all()

    @contextmanager
    def call_scope(
        self, rpc: str, request_id: str, context: grpc.ServicerContext, trailing: bool = True
    ) -> Iterator[_Call]:
        """One RPC's bookkeeping: its request context, in-flight count, metrics, the log
        line of a failure, and (``trailing``) the trailing metadata. Other services on
        the same models (server/kserve.py) use it too."""
        too_long = len(request_id) > MAX_REQUEST_ID_CHARS
        call = _Call("" if too_long else request_id, context.time_remaining())
        code = grpc.StatusCode.OK
        self.metrics.in_flight.inc()
        self._track(+1)
        try:
            if too_long:  # it would be echoed in metadata and logs
                raise InvalidRequest(
                    f"request_id has {len(request_id)} characters; at most "
                    f"{MAX_REQUEST_ID_CHARS} are allowed"
                )
            yield call
        except Exception as exc:
            code, message = status_for(exc)
            extra = {"request_id": call.request.request_id, "rpc": rpc, "code": code.name}
            if code is grpc.StatusCode.INTERNAL:
                log.error("%s failed", rpc, exc_info=exc, extra=extra)
            else:
                log.debug("%s refused: %s", rpc, message, extra=extra)
            raise
        finally:
            self._track(-1)
            self.metrics.in_flight.dec()
            self.metrics.observe_request(rpc, call.models, code, call.request, call.started)
            if trailing:
                context.set_trailing_metadata(call.trailing_metadata())

    # -- ranking ---------------------------------------------------------------------

    def _rank(self, request: pb.RankRequest, call: _Call) -> pb.RankResponse:
        with self.repository.acquire(request.model.name, request.model.version) as model:
            call.models.append(model)
            if request.explain:
                explain.check_explainable(model.pipeline)
                if request.k > self.max_explain_k:
                    raise InvalidRequest(
                        f"explain = true takes k up to the server's --max-explain-k "
                        f"({self.max_explain_k}); got k = {request.k}"
                    )
            ranking = model.runner.rank(
                request.user_id,
                request.candidate_item_ids,
                k=request.k,
                context=dict(request.user_features),
                request_context=call.request,
            )
            if request.explain:
                if len(ranking.items) > self.max_explain_k:  # k = 0: every known candidate
                    raise InvalidRequest(
                        f"explain = true with k = 0 would explain all {len(ranking.items)} "
                        f"known candidates, more than the server's --max-explain-k "
                        f"({self.max_explain_k}); set k to at most {self.max_explain_k}"
                    )
                with call.request.stage("explain"):
                    ranking = explain.explain_ranking(
                        model.pipeline, request.user_id, dict(request.user_features), ranking
                    )
            return converters.rank_response(ranking, model, call.request.request_id)

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        with self.call_scope("Rank", request.request_id, context) as call:
            return self._rank(request, call)

    def RankStream(
        self, requests: Iterator[pb.RankRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.RankStreamResponse]:
        # One request at a time per stream; concurrent streams share the batches. The
        # watch cancels the stream if it waits on its client for too long.
        with self.stream_watch.watch(context) as watched:
            for request in requests:
                watched.working()
                call = None  # stays None if the call scope refuses the request at once
                try:
                    with self.call_scope(
                        "RankStream", request.request_id, context, trailing=False
                    ) as call:
                        response = self._rank(request, call)
                    answer = pb.RankStreamResponse(
                        request_id=response.request_id, response=response
                    )
                except Exception as exc:  # noqa: BLE001 - one bad request never ends the stream
                    code, message = status_for(exc)
                    answer = pb.RankStreamResponse(
                        request_id=call.request.request_id if call is not None else "",
                        error_code=code.value[0],
                        error_message=message,
                    )
                watched.waiting()  # until the client has read it and sent the next request
                yield answer

    # -- recommending ----------------------------------------------------------------

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        with self.call_scope("Recommend", request.request_id, context) as call:
            default_ranker = self.repository.default_rank_with
            if not request.model.name and not request.rank_with.name and default_ranker:
                # The server's default Recommend is a cascade (--default-rank-with).
                request = _with_ranker(request, default_ranker)
            if request.rank_with.name:
                return self._cascade(request, call)
            with self.repository.acquire(request.model.name, request.model.version) as model:
                call.models.append(model)
                ranking = model.runner.recommend(
                    request.user_id,
                    k=request.k,
                    recent_item_ids=request.recent_item_ids,
                    include_seen=request.include_seen,
                    context=dict(request.user_features),
                    request_context=call.request,
                )
                return converters.recommend_response(ranking, model, call.request.request_id)

    def _retrieve_n(self, request: pb.RecommendRequest) -> int:
        limits = self.repository.limits
        k = request.k or DEFAULT_RECOMMEND_K
        if request.retrieve_n == 0:
            return min(max(CASCADE_MIN_RETRIEVE, CASCADE_RETRIEVE_FACTOR * k), limits.max_k)
        if not k <= request.retrieve_n <= limits.max_k:
            raise InvalidRequest(
                f"retrieve_n must be between k ({k}) and the server's --max-k "
                f"({limits.max_k}); got {request.retrieve_n}"
            )
        return request.retrieve_n

    def _cascade(self, request: pb.RecommendRequest, call: _Call) -> pb.RecommendResponse:
        """Retrieve with ``model`` (no user features), rank with ``rank_with``."""
        check_k(request.k, self.repository.limits)  # before any retrieval work
        retrieve_n = self._retrieve_n(request)
        with (
            self.repository.acquire(request.model.name, request.model.version) as retriever,
            self.repository.acquire(request.rank_with.name, request.rank_with.version) as ranker,
        ):
            call.models += [retriever, ranker]
            family = ranker.pipeline.artifact.family
            if family not in CASCADE_RANKER_FAMILIES:
                raise InvalidRequest(
                    f"rank_with model {ranker.name!r} is a {family!r} model, not a ranker "
                    f"({', '.join(CASCADE_RANKER_FAMILIES)})"
                )
            ranker.pipeline.check_retriever(retriever.name)
            retrieved = retriever.runner.recommend(
                request.user_id,
                k=retrieve_n,
                recent_item_ids=request.recent_item_ids,
                include_seen=request.include_seen,
                request_context=call.request,
            )
            if retrieved.items:
                ranking = ranker.runner.rank_retrieved(
                    request.user_id,
                    [item.item_id for item in retrieved.items],
                    [item.score for item in retrieved.items],
                    k=request.k or DEFAULT_RECOMMEND_K,
                    recent_item_ids=request.recent_item_ids,
                    context=dict(request.user_features),
                    request_context=call.request,
                )
            else:  # nothing left to rank (e.g. the user has seen the whole catalog)
                ranking = Ranking(items=[], cold_start_user=retrieved.cold_start_user)
            return converters.cascade_response(
                retrieved, ranking, retriever, ranker, call.request.request_id
            )

    # -- models ----------------------------------------------------------------------

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        with self.call_scope("GetModelInfo", "", context) as call:
            model = self.repository.get(request.model.name, request.model.version)
            call.models.append(model)
            return converters.model_info(
                model, self.repository.versions(model.name), request.include_ids
            )

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        with self.call_scope("ListModels", "", context):
            served = self.repository.served()  # one snapshot: a reload may run meanwhile
            versions: dict[str, list[int]] = {}
            for m in served:
                versions.setdefault(m.name, []).append(m.version)
            newest = {m.name: m for m in reversed(served)}  # newest first within a name
            infos = [converters.model_info(newest[name], versions[name]) for name in sorted(newest)]
            return pb.ListModelsResponse(
                models=infos,
                default_model=self.repository.default_model,
                default_rank_with=self.repository.default_rank_with,
            )

    def ReloadModels(
        self, request: pb.ReloadModelsRequest, context: grpc.ServicerContext
    ) -> pb.ReloadModelsResponse:
        """Rescans the repository now; answers when the new versions serve."""
        with self.call_scope("ReloadModels", "", context):
            try:
                events = self.repository.reload()
            finally:
                if self.after_reload is not None:
                    self.after_reload()
            return converters.reload_response(events, self.repository.served())


def _with_ranker(request: pb.RecommendRequest, ranker: str) -> pb.RecommendRequest:
    """A copy of ``request`` whose ``rank_with`` names ``ranker`` (newest version)."""
    cascade = pb.RecommendRequest()
    cascade.CopyFrom(request)
    cascade.rank_with.name = ranker
    return cascade
