"""The baseline of bench/serving.py: a plain grpcio server running the exported TorchScript model.

What a competent engineer would write to serve a recserve artifact without recserve's
runtime: the same gRPC contract (``recserve.v1.Recommender``: Rank, and GetModelInfo so
the load generator can draw ids), the same artifact loaded with ``load_artifact``, and
per request: the user's feature row and the candidates' item feature rows gathered from
the artifact's tables with numpy/torch indexing, the whole TorchScript ``model`` program
on the N candidates, ``torch.sigmoid`` and ``torch.topk``. No C++ core, no fused
crossing, no batching across requests.

Its best honest configuration: a handler thread pool (``--workers``, recserve's default
64), ``torch.inference_mode``, a warm-up at load, and ``--torch-threads`` (intra-op
threads; 0 keeps torch's default, one per core). bench/serving.py measures 1 against
the default under load and keeps the faster one.

    python bench/baseline_server.py --model-repo model-repo --port 50061

Unknown candidate ids are skipped (returned in ``unknown_item_ids``); an unknown user is
served with an all-unknown feature row. Validation is minimal: an empty candidate list,
a negative k or more than ``--max-candidates`` ids is INVALID_ARGUMENT.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import torch

from recserve.engine.artifact import Artifact, list_versions, load_artifact
from recserve.v1 import recserve_pb2 as pb
from recserve.v1 import recserve_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # recserve's default --max-message-bytes
WARMUP_CALLS = 5  # TorchScript's profiling executor optimises after the first calls


def newest_artifact_dir(model_repo: Path, name: str = "") -> Path:
    """``<repo>/<name>/<newest version>``; without ``name`` the first model by name."""
    names = [name] if name else sorted(p.name for p in model_repo.iterdir() if p.is_dir())
    for model in names:
        versions = list_versions(model_repo / model)
        if versions:
            return model_repo / model / str(versions[-1])
    raise FileNotFoundError(f"no model version in {model_repo}")


class TorchScriptRanker:
    """One ranker artifact served by its whole TorchScript ``model`` program."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.model = artifact.modules["model"]
        t = artifact.tables
        self.user_ids = np.ascontiguousarray(t["user_ids"], dtype=np.int64)
        self.item_ids = np.ascontiguousarray(t["item_ids"], dtype=np.int64)
        self.user_features = torch.from_numpy(np.ascontiguousarray(t["user_features"]))
        self.item_features = torch.from_numpy(np.ascontiguousarray(t["item_features"]))
        self.item_multi = torch.from_numpy(np.ascontiguousarray(t["item_multi"]))
        titles = t.get("item_titles")
        self.titles = [""] * self.item_ids.size if titles is None else [str(x) for x in titles]
        self.unknown_user = torch.zeros(self.user_features.shape[1], dtype=torch.int64)

    @staticmethod
    def _rows(table: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row of each known id, mask of the known ids) in a sorted id table."""
        if table.size == 0:
            return np.empty(0, np.int64), np.zeros(ids.shape, bool)
        pos = np.minimum(np.searchsorted(table, ids), table.size - 1)
        known = table[pos] == ids
        return pos[known], known

    def rank(
        self, user_id: int, candidate_ids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """(item rows best first, their scores, unknown candidate ids, cold-start user)."""
        rows, known = self._rows(self.item_ids, candidate_ids)
        user_rows, _ = self._rows(self.user_ids, np.asarray([user_id], np.int64))
        cold = user_rows.size == 0
        user = self.unknown_user if cold else self.user_features[int(user_rows[0])]
        n = rows.size
        if n == 0:
            return rows, np.empty(0, np.float32), candidate_ids[~known], cold
        k = n if k == 0 else min(k, n)
        with torch.inference_mode():
            index = torch.from_numpy(rows)
            logits = self.model(
                user.unsqueeze(0).expand(n, -1), self.item_features[index], self.item_multi[index]
            ).reshape(-1)
            values, order = torch.topk(torch.sigmoid(logits), k)
        return rows[order.numpy()], values.numpy(), candidate_ids[~known], cold

    def warm_up(self, n: int = 1000) -> None:
        candidates = self.item_ids[: min(n, self.item_ids.size)]
        user = int(self.user_ids[0]) if self.user_ids.size else 0
        for _ in range(WARMUP_CALLS):
            self.rank(user, candidates, 10)


class BaselineServicer(pb_grpc.RecommenderServicer):
    def __init__(self, ranker: TorchScriptRanker, max_candidates: int) -> None:
        self.ranker = ranker
        self.max_candidates = max_candidates
        a = ranker.artifact
        self.model_ref = pb.ModelRef(name=a.name, version=a.version)

    def _check_model(self, spec: pb.ModelSpec, context: grpc.ServicerContext) -> None:
        if spec.name and spec.name != self.model_ref.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {spec.name!r}")

    def Rank(self, request: pb.RankRequest, context: grpc.ServicerContext) -> pb.RankResponse:
        self._check_model(request.model, context)
        candidates = np.asarray(request.candidate_item_ids, dtype=np.int64)
        if candidates.size == 0 or candidates.size > self.max_candidates or request.k < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send 1 to {self.max_candidates} candidate ids and k >= 0",
            )
        rows, scores, unknown, cold = self.ranker.rank(request.user_id, candidates, request.k)
        ids, titles = self.ranker.item_ids, self.ranker.titles
        return pb.RankResponse(
            items=[
                pb.ScoredItem(item_id=int(ids[r]), score=s, title=titles[r])
                for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
            ],
            unknown_item_ids=unknown.tolist(),
            cold_start_user=cold,
            model=self.model_ref,
            request_id=request.request_id,
        )

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfo:
        self._check_model(request.model, context)
        a, r = self.ranker.artifact, self.ranker
        ids = dict(user_ids=r.user_ids, item_ids=r.item_ids) if request.include_ids else {}
        return pb.ModelInfo(
            model=self.model_ref,
            family=a.family,
            program_format=a.program_format,
            num_users=int(r.user_ids.size),
            num_items=int(r.item_ids.size),
            loaded_versions=[a.version],
            **ids,
        )


def build_baseline_server(
    artifact_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    workers: int = 64,
    max_candidates: int = 10_000,
) -> tuple[grpc.Server, int]:
    """Loads the artifact, warms it up, binds and starts; returns (server, port)."""
    ranker = TorchScriptRanker(load_artifact(artifact_dir))
    ranker.warm_up()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    pb_grpc.add_RecommenderServicer_to_server(BaselineServicer(ranker, max_candidates), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    parser.add_argument("--model", default="", help="model name (default: the first by name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50061, help="0: a free one")
    parser.add_argument("--workers", type=int, default=64, help="handler threads (default 64)")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="intra-op threads of torch (0: torch's default, one per core)",
    )
    parser.add_argument("--max-candidates", type=int, default=10_000)
    args = parser.parse_args(argv)
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    try:
        artifact_dir = newest_artifact_dir(args.model_repo, args.model)
        server, port = build_baseline_server(
            artifact_dir, args.host, args.port, args.workers, args.max_candidates
        )
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"baseline serving {artifact_dir} on {args.host}:{port} "
        f"({args.workers} workers, torch threads {torch.get_num_threads()})",
        file=sys.stderr,
        flush=True,
    )
    stopped = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stopped.set()
        server.stop(0)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
