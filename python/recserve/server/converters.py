"""Engine results -> Recommender messages: every answer's content (scored items, model
info, version events) is built here. The servicer only wraps these (a stream's envelope,
the list of models), and the KServe service converts its own tensors (kserve.py)."""

from __future__ import annotations

from recserve.engine.schema import FeatureSpec
from recserve.results import Ranking
from recserve.v1 import recserve_pb2 as pb

from .repository import LOADED, REFUSED, UNLOADED, LoadedModel, RepositoryEvent

_SIDES = {"user": pb.Feature.USER, "item": pb.Feature.ITEM}


def model_ref(model: LoadedModel) -> pb.ModelRef:
    return pb.ModelRef(name=model.name, version=model.version)


def scored_items(ranking: Ranking) -> list[pb.ScoredItem]:
    items = []
    for i in ranking.items:
        item = pb.ScoredItem(item_id=i.item_id, score=i.score, title=i.title)
        if i.explanation is not None:
            item.explanation.baseline = i.explanation.baseline
            item.explanation.fields.extend(
                pb.FieldContribution(feature=f.feature, contribution=f.contribution)
                for f in i.explanation.fields
            )
        items.append(item)
    return items


def rank_response(ranking: Ranking, model: LoadedModel, request_id: str) -> pb.RankResponse:
    return pb.RankResponse(
        items=scored_items(ranking),
        unknown_item_ids=ranking.unknown_item_ids,
        cold_start_user=ranking.cold_start_user,
        model=model_ref(model),
        request_id=request_id,
    )


def recommend_response(
    ranking: Ranking, model: LoadedModel, request_id: str
) -> pb.RecommendResponse:
    return pb.RecommendResponse(
        items=scored_items(ranking),
        unknown_item_ids=ranking.unknown_item_ids,
        cold_start_user=ranking.cold_start_user,
        model=model_ref(model),
        request_id=request_id,
    )


def cascade_response(
    retrieved: Ranking,
    ranked: Ranking,
    retriever: LoadedModel,
    ranker: LoadedModel,
    request_id: str,
) -> pb.RecommendResponse:
    """The ranker's order of what the retriever found; unknown ids are the request's."""
    return pb.RecommendResponse(
        items=scored_items(ranked),
        unknown_item_ids=retrieved.unknown_item_ids,
        cold_start_user=retrieved.cold_start_user or ranked.cold_start_user,
        model=model_ref(retriever),
        ranked_by=model_ref(ranker),
        request_id=request_id,
    )


def feature(spec: FeatureSpec) -> pb.Feature:
    return pb.Feature(
        name=spec.name,
        side=_SIDES[spec.side],
        cardinality=spec.cardinality,
        multi_valued=spec.multi_valued,
        vocabulary=list(spec.vocabulary),
        boundaries=list(spec.boundaries),
    )


def model_info(
    model: LoadedModel, loaded_versions: list[int], include_ids: bool = False
) -> pb.ModelInfo:
    artifact = model.pipeline.artifact
    ids = {}
    if include_ids:
        ids = dict(user_ids=model.pipeline.user_ids, item_ids=model.pipeline.item_ids)
    return pb.ModelInfo(
        model=model_ref(model),
        family=artifact.family,
        program_format=artifact.program_format,
        features=[feature(f) for f in artifact.schema.features],
        metrics=artifact.metrics,
        num_users=model.pipeline.num_users,
        num_items=model.pipeline.num_items,
        loaded_versions=loaded_versions,
        created_at=artifact.created_at,
        **ids,
    )


_ACTIONS = {
    LOADED: pb.VersionEvent.LOADED,
    REFUSED: pb.VersionEvent.REFUSED,
    UNLOADED: pb.VersionEvent.UNLOADED,
}


def version_event(event: RepositoryEvent) -> pb.VersionEvent:
    return pb.VersionEvent(
        model=pb.ModelRef(name=event.name, version=event.version),
        action=_ACTIONS[event.action],
        reason=event.reason,
    )


def reload_response(
    events: list[RepositoryEvent], serving: list[LoadedModel]
) -> pb.ReloadModelsResponse:
    return pb.ReloadModelsResponse(
        events=[version_event(e) for e in events], serving=[model_ref(m) for m in serving]
    )
