"""The Recommender service: convert the request, call the pipeline, convert the answer."""

from __future__ import annotations

import grpc

from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

from . import converters
from .repository import ModelRepository


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        model = self.repository.get(request.model.name, request.model.version)
        ranking = model.pipeline.rank(
            request.user_id,
            request.candidate_item_ids,
            k=request.k,
            context=dict(request.user_features),
        )
        return converters.rank_response(ranking, model)

    def Recommend(
        self, request: pb.RecommendRequest, context: grpc.ServicerContext
    ) -> pb.RecommendResponse:
        model = self.repository.get(request.model.name, request.model.version)
        ranking = model.pipeline.recommend(
            request.user_id,
            k=request.k,
            recent_item_ids=request.recent_item_ids,
            include_seen=request.include_seen,
            context=dict(request.user_features),
        )
        return converters.recommend_response(ranking, model)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        model = self.repository.get(request.model.name, request.model.version)
        return converters.model_info(model, self.repository.versions(model.name))

    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        infos = []
        for name in self.repository.names():
            model = self.repository.get(name)
            infos.append(converters.model_info(model, self.repository.versions(name)))
        return pb.ListModelsResponse(models=infos, default_model=self.repository.default_model)
