"""The `recserve` command: serve, train, data, client calls to a running server, and the
load generator and the evaluation that measure one."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from .client import DEFAULT_TARGET, MAX_MESSAGE_BYTES, Answer, Client, RecserveError


def _id_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integer ids like 1,50,100; got {text!r}"
        ) from None


def _context(pairs: list[str]) -> dict[str, str]:
    context = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--feature takes NAME=VALUE, e.g. --feature age=25; got {pair!r}")
        context[name] = value
    return context


def _print_answer(answer: Answer, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(answer), indent=2))
        return
    note = " (cold-start user)" if answer.cold_start_user else ""
    ranked_by = f", ranked by {answer.ranked_by_name}" if answer.ranked_by_name else ""
    print(f"model {answer.model_name} v{answer.model_version}{ranked_by}{note}")
    print(f"{'#':>3}  {'item':>7}  {'score':>6}  title")
    for rank, item in enumerate(answer.items, 1):
        print(f"{rank:>3}  {item.item_id:>7}  {item.score:>6.3f}  {item.title}")
        if item.explanation is not None:  # the 3 largest field contributions to the logit
            top = sorted(item.explanation.fields, key=lambda f: -abs(f.contribution))[:3]
            why = ", ".join(f"{f.feature} {f.contribution:+.3f}" for f in top)
            print(f"{'':>14}baseline {item.explanation.baseline:+.3f}; largest: {why}")
    if answer.unknown_item_ids:
        print("unknown items: " + ", ".join(str(i) for i in answer.unknown_item_ids))


def _open_client(args: argparse.Namespace) -> Client:
    """The client the flags ask for; --token-file beats RECSERVE_TOKEN."""
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together: pass both or neither")
    token = os.environ.get("RECSERVE_TOKEN", "").strip()
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise OSError(
                f"--token-file {args.token_file}: cannot read it ({exc.strerror})"
            ) from None
        if not token or len(token.split()) > 1:
            raise ValueError(f"--token-file {args.token_file}: expected one token and nothing else")
    return Client(
        args.target,
        args.timeout,
        args.max_message_bytes,
        tls=args.tls,
        root_ca=args.tls_ca,
        client_cert=args.tls_cert,
        client_key=args.tls_key,
        token=token or None,
        server_name=args.tls_server_name,
    )


def _client_call(args: argparse.Namespace) -> int:
    try:
        client = _open_client(args)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            if args.command == "recommend":
                answer = client.recommend(
                    args.user,
                    args.k,
                    recent_item_ids=args.recent or (),
                    include_seen=args.include_seen,
                    user_features=_context(args.feature),
                    model=args.model,
                    version=args.version,
                )
                _print_answer(answer, args.json)
            elif args.command == "rank":
                answer = client.rank(
                    args.user,
                    args.items,
                    args.k,
                    user_features=_context(args.feature),
                    model=args.model,
                    version=args.version,
                    explain=args.explain,
                )
                _print_answer(answer, args.json)
            else:
                models, default = client.list_models()
                if args.json:
                    print(json.dumps([asdict(m) for m in models], indent=2))
                for m in [] if args.json else models:
                    mark = "*" if m.name == default else " "
                    metrics = "  ".join(
                        f"{k}={v:.4f}"
                        for k, v in sorted(m.metrics.items())
                        if k.startswith("test_")
                    )
                    print(
                        f"{mark} {m.name} v{m.version} ({m.family}, {m.num_users} users, "
                        f"{m.num_items} items)  {metrics}"
                    )
                if not args.json:
                    retriever, ranker = client.default_recommend()
                    cascade = f"{retriever} -> {ranker} (cascade)" if ranker else retriever
                    print(f"Recommend with no model: {cascade}")
        except RecserveError as exc:
            hint = ""
            if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                hint = (
                    f"\nis `recserve serve` running at {args.target}? If it uses TLS, pass "
                    "--tls-ca (or --tls), and for mutual TLS --tls-cert and --tls-key"
                )
            elif exc.code.name == "UNAUTHENTICATED":
                hint = "\nthe server needs a token: pass --token-file FILE or set RECSERVE_TOKEN"
            print(f"error: {exc}{hint}", file=sys.stderr)
            return 1
    return 0


def _serve(args: argparse.Namespace) -> int:
    from recserve.engine.errors import ModelNotFound
    from recserve.server.logs import configure_logging
    from recserve.server.options import options_from

    try:
        options = options_from(args)
    except (OSError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure_logging(options.log_format, logging.DEBUG if args.verbose else logging.INFO)
    from recserve.server import serve  # the supervisor of --processes N never loads torch

    try:
        serve(options)
    except (OSError, ValueError, ModelNotFound) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from recserve.training.commands import train_command

    return train_command(args)


def _package(args: argparse.Namespace) -> int:
    from recserve.engine.artifact import ArtifactError
    from recserve.packaging import (
        PackageError,
        RankerFiles,
        TwoTowerFiles,
        package_ranker,
        package_two_tower,
    )

    try:
        if args.kind == "ranker":
            files = RankerFiles(
                args.program, args.features, args.items, args.users, args.interactions
            )
            path = package_ranker(files, args.model_repo, args.name, args.aoti_target)
        else:
            towers = TwoTowerFiles(
                args.items,
                args.item_embeddings,
                args.users,
                args.user_embeddings,
                args.interactions,
                args.user_tower,
                args.user_features,
            )
            path = package_two_tower(towers, args.model_repo, args.name)
    except (PackageError, ArtifactError) as exc:
        print(f"error: {exc}; nothing was written", file=sys.stderr)
        return 2
    print(f"packaged {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from recserve.training.commands import export_command

    return export_command(args)


def _data(args: argparse.Namespace) -> int:
    from recserve.training.commands import data_command

    return data_command(args)


def _bench(args: argparse.Namespace) -> int:
    from recserve.loadtest import options_from, run

    try:
        options = options_from(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run(options)


def _evaluate(args: argparse.Namespace) -> int:
    from recserve import evaluate

    if args.make_split:
        from recserve.training.commands import load_data

        held = evaluate.hold_out_last(load_data(args.data, args.data_dir))
        schema = evaluate.write_split(held, args.make_split)
        print(
            f"wrote {schema.parent} ({held.train.user_id.size} training interactions) and "
            f"{Path(args.make_split) / evaluate.HOLDOUT_FILE} ({held.user_ids.size} held-out "
            f"users). Train on the first, serve, then: recserve evaluate --split "
            f"{args.make_split} --target HOST:PORT"
        )
        return 0
    try:
        held = evaluate.read_split(args.split)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.users:
        held = evaluate.HeldOut(
            held.train, held.user_ids[: args.users], held.item_ids[: args.users]
        )
    request = evaluate.Request(args.k, args.model, args.rank_with, args.retrieve_n)

    def bar(answers, total):  # type: ignore[no-untyped-def]
        if args.no_progress:
            return answers
        try:
            from tqdm import tqdm
        except ImportError:  # a client-only install: no bar
            return answers
        return tqdm(answers, total=total, desc="Recommend", unit="user", leave=False)

    with _open_client(args) as client:
        result = evaluate.evaluate_server(
            client, held, request, concurrency=args.concurrency,
            rare_below=args.rare_below, progress=bar,
        )  # fmt: skip
    print(json.dumps(result, indent=2) if args.json else evaluate.format_result(result))
    if args.output:
        evaluate.write_json(result, args.output)
    return 1 if result["served"]["errors"] else 0


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=DEFAULT_TARGET,
        help="server host:port; or replicas, balanced round robin with health checks and "
        "retries: several ip:port separated by commas, or dns:///NAME:PORT (docs/deploy.md)",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline in seconds")
    parser.add_argument(
        "--max-message-bytes", type=int, default=MAX_MESSAGE_BYTES, help="largest reply accepted"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    tls = parser.add_argument_group("security (a server run with --tls-* or --auth-tokens-file)")
    tls.add_argument("--tls", action="store_true", help="TLS, trusting the system's CAs")
    tls.add_argument("--tls-ca", metavar="FILE", help="TLS, trusting this PEM CA bundle instead")
    tls.add_argument(
        "--tls-cert", metavar="FILE", help="PEM client certificate chain, for mutual TLS"
    )
    tls.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    tls.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="name to check the servers' certificates against (default: the target's host; "
        "needed for a list of several addresses)",
    )
    tls.add_argument(
        "--token-file",
        metavar="FILE",
        help="file holding the bearer token to send (default: env RECSERVE_TOKEN)",
    )


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--user", type=int, required=True, help="external user id")
    parser.add_argument("--model", default="", help="model name (default: server's default)")
    parser.add_argument("--version", type=int, default=0, help="model version (0 = newest)")
    parser.add_argument(
        "--feature",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="user context feature, e.g. --feature age=25 (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recserve", description="Recommender models from interaction logs to a gRPC service."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="serve the models of a repository over gRPC",
        description="Serve the models of a repository over gRPC. Every option is also read "
        "from the environment (RECSERVE_<OPTION>) and from --config; a flag beats the "
        "environment, which beats the file. docs/serving.md explains each.",
    )
    from recserve.server.options import add_serve_arguments

    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    train = sub.add_parser("train", help="train a model and export it into a repository")
    from recserve.training.arguments import (
        add_aoti_target_argument,
        add_program_format_argument,
        add_train_arguments,
    )

    add_train_arguments(train)
    train.set_defaults(handler=_train)

    export = sub.add_parser("export", help="export the best state of a training run")
    export.add_argument("--run-dir", type=Path, required=True, help="a run of `recserve train`")
    export.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    export.add_argument(
        "--name", default="", help="model name in the repository (default: the model)"
    )
    export.add_argument(
        "--data-dir", type=Path, help="where the run's data set is (default: the run's --data-dir)"
    )
    add_program_format_argument(export)
    export.set_defaults(handler=_export)

    package = sub.add_parser(
        "package", help="package a model trained elsewhere into a model repository"
    )
    package_sub = package.add_subparsers(dest="kind", required=True)
    two_tower = package_sub.add_parser(
        "two-tower",
        help="a two-tower retriever: item embeddings, and user embeddings or a user tower",
        description="Checks the files, then writes a new version of --name (score = <user "
        "vector, item vector>) that `recserve serve` answers Recommend and Rank with. Row r "
        "of each .npy is the vector of the r-th id of its id table; an embeddings table "
        "(CSV or Parquet: id, vector) is matched by id. The user side is "
        "either stored vectors (family embedding) or a user-tower program with its "
        "feature schema (family user_tower: the vector is computed per request, from the "
        "stored features and the request's user_features). Exit status 2, with the file and field named, when a file is wrong; "
        "nothing is written then. See docs/packaging.md.",
    )
    two_tower.add_argument("--items", type=Path, required=True, help="CSV: id[, title]")
    two_tower.add_argument(
        "--item-embeddings",
        type=Path,
        required=True,
        help=".npy float [items, d], or a CSV/Parquet table: id, vector",
    )
    two_tower.add_argument(
        "--users", type=Path, required=True, help="CSV: id (and the user tower's feature columns)"
    )
    user_side = two_tower.add_mutually_exclusive_group(required=True)
    user_side.add_argument(
        "--user-embeddings", type=Path, help=".npy float [users, d], or a table: id, vector"
    )
    user_side.add_argument(
        "--user-tower",
        type=Path,
        help="a user-tower program instead of user embeddings: TorchScript (.pt) or "
        "torch.export (.pt2), forward(user int64[B, Fu]) -> float[B, d]",
    )
    two_tower.add_argument(
        "--user-features", type=Path, help="with --user-tower: its feature schema ([[user]])"
    )
    two_tower.add_argument(
        "--interactions",
        type=Path,
        help="CSV: user_id, item_id; excluded from each user's answers, and the "
        "cold-start order (most interacted first)",
    )
    two_tower.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    two_tower.add_argument("--name", required=True, help="model name in the repository")
    two_tower.set_defaults(handler=_package)
    ranker = package_sub.add_parser(
        "ranker",
        help="a ranker: a TorchScript or torch.export program, its features and tables",
        description="Checks the files, runs the program on sample rows, then writes a new "
        "version of --name (family packaged_ranker) that `recserve serve` answers Rank "
        "with, and Recommend as a cascade's rank_with. The program takes (user int64[B, Fu], "
        "item int64[B, Fi], item_multi int64[B, M]) encoded as the feature schema says and "
        "returns one logit per candidate. Exit status 2, with the file and field named, "
        "when a file is wrong; nothing is written then. See docs/packaging.md.",
    )
    ranker.add_argument(
        "--program", type=Path, required=True, help="TorchScript (.pt) or torch.export (.pt2)"
    )
    ranker.add_argument("--features", type=Path, required=True, help="feature schema: TOML or JSON")
    ranker.add_argument(
        "--items", type=Path, required=True, help="CSV: id[, title], a column per item feature"
    )
    ranker.add_argument("--users", type=Path, help="CSV: id, a column per user feature")
    ranker.add_argument(
        "--interactions",
        type=Path,
        help="CSV: user_id, item_id; left out of each user's Recommend answers",
    )
    add_aoti_target_argument(ranker, "the .pt2 program is")
    ranker.add_argument("--model-repo", type=Path, default=Path("model-repo"))
    ranker.add_argument("--name", required=True, help="model name in the repository")
    ranker.set_defaults(handler=_package)

    data = sub.add_parser("data", help="obtain data sets")
    data_sub = data.add_subparsers(dest="action", required=True)
    fetch = data_sub.add_parser("fetch", help="download a data set into --data-dir")
    fetch.add_argument("dataset", choices=("ml-100k",))
    fetch.add_argument("--data-dir", type=Path, default=Path("data"))
    fetch.set_defaults(handler=_data)

    recommend = sub.add_parser("recommend", help="top-k of the catalog for a user")
    _add_request_options(recommend)
    recommend.add_argument("-k", type=int, default=10, help="number of items")
    recommend.add_argument("--recent", type=_id_list, help="recent item ids, e.g. 1,50")
    recommend.add_argument(
        "--include-seen", action="store_true", help="allow items the user already rated"
    )
    _add_client_options(recommend)
    recommend.set_defaults(handler=_client_call)

    rank = sub.add_parser("rank", help="order candidate items for a user")
    _add_request_options(rank)
    rank.add_argument("--items", type=_id_list, required=True, help="e.g. 1,50,100")
    rank.add_argument("-k", type=int, default=0, help="number of items (0 = all)")
    rank.add_argument(
        "--explain",
        action="store_true",
        help="show each item's largest field contributions to its logit (Shapley values)",
    )
    _add_client_options(rank)
    rank.set_defaults(handler=_client_call)

    models = sub.add_parser("models", help="list the models a server has loaded")
    _add_client_options(models)
    models.set_defaults(handler=_client_call)

    bench = sub.add_parser(
        "bench",
        help="load-test a server: throughput, latency percentiles, errors",
        description="A load generator for the recserve contract. Closed loop (--concurrency) "
        "or open loop (--rate; latency counted from each request's intended send time, so "
        "queueing in a stalled server shows). Users and items come from the model's own ids "
        "with Zipf-like popularity. Exit status 1 when a --slo target is missed.",
    )
    from recserve.loadtest import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(handler=_bench)

    evaluate = sub.add_parser(
        "evaluate",
        help="measure a running server's Recommend answers on held-out interactions",
        description="Holds out each user's last interaction (--make-split writes the split: "
        "train the served model on its training part), then asks the server one Recommend "
        "per held-out user and reports HR/NDCG/MRR@k, catalog coverage and the share of "
        "rarely interacted items, next to most-popular computed in the same run. Exit "
        "status 1 when a request failed.",
    )
    where = evaluate.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", type=Path, help="a split written by --make-split")
    where.add_argument(
        "--make-split", type=Path, metavar="DIR", help="write the split of --data here and exit"
    )
    evaluate.add_argument("--data", default="ml-100k", help="data set, as for recserve train")
    evaluate.add_argument("--data-dir", type=Path, default=Path("data"))
    evaluate.add_argument("-k", type=int, default=10, help="items per answer")
    evaluate.add_argument("--model", default="", help="model (default: server's default)")
    evaluate.add_argument("--rank-with", default="", help="ranker of a cascade")
    evaluate.add_argument("--retrieve-n", type=int, default=0, help="cascade's retrieved items")
    evaluate.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    evaluate.add_argument(
        "--rare-below", type=int, default=20, help="rare item: fewer training interactions"
    )
    evaluate.add_argument("--users", type=int, default=0, help="only the first N users (0: all)")
    evaluate.add_argument("--output", type=Path, help="also write the JSON result here")
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_client_options(evaluate)
    evaluate.set_defaults(handler=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
