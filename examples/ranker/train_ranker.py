"""A ranker written in plain PyTorch, trained on an interaction log with user and item
tables, and saved as the files `recserve package ranker` takes.

Nothing here comes from recserve: the model, the training loop and the output files are
what a team with its own ranker would have. The model embeds every feature (user id,
age, gender, occupation; item id, release year, genres), and scores a (user, item) pair
with a dot product of the two sides plus an MLP on both, as a two-part "deep and
factorised" ranker does. It learns to tell each user's next interactions from items
drawn at random from the catalog (by default a softmax over each positive and its
negatives; binary cross-entropy with --loss bce), which is what a ranker behind a
retriever is asked: which of these items will the user take?

    python examples/ranker/train_ranker.py --log LOG.csv --users USERS.csv \
        --items ITEMS.csv --out DIR [--format torchscript|export]

LOG.csv needs `user_id` and `item_id`; USERS.csv `user_id`, `age`, `gender`,
`occupation`; ITEMS.csv `item_id`, `title`, `release_year`, `genres` (separated by `|`).
`recserve evaluate --make-split` writes all three (DIR/train/*.csv). Writes to --out:
ranker.pt (or ranker.pt2), features.toml, items.csv, users.csv and interactions.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

AGE_BOUNDS = [18, 25, 35, 45, 50, 56]
YEAR_BOUNDS = [1950, 1970, 1980, 1990, 1995, 1997]
MAX_GENRES = 6


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


def bucket(values: list[str], bounds: list[int]) -> np.ndarray:
    """0 for an unknown (empty or <= 0) number, else its bucket + 1."""
    numbers = np.array([float(v) if v.strip() else 0.0 for v in values])
    return np.where(numbers > 0, np.searchsorted(bounds, numbers, side="right") + 1, 0)


def tokens(values: list[str]) -> tuple[list[str], np.ndarray]:
    """The sorted vocabulary and each value's index in it + 1 (0: empty)."""
    vocabulary = sorted({v for v in values if v})
    index = {v: i + 1 for i, v in enumerate(vocabulary)}
    return vocabulary, np.array([index.get(v, 0) for v in values])


class Ranker(nn.Module):
    """Field embeddings -> <user side, item side> + MLP(all fields) -> one logit."""

    def __init__(self, cardinalities: list[int], n_user: int, dim: int, hidden: int) -> None:
        super().__init__()
        offsets = np.concatenate([[0], np.cumsum(cardinalities)[:-1]])
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64))
        self.embedding = nn.Embedding(int(sum(cardinalities)), dim)
        nn.init.normal_(self.embedding.weight, std=0.05)
        self.n_user = n_user
        n_item = len(cardinalities) - n_user - 1  # single-valued item fields; genres pooled
        self.mlp = nn.Sequential(
            nn.Linear((n_user + n_item + 1) * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(
        self, user: torch.Tensor, item: torch.Tensor, item_multi: torch.Tensor
    ) -> torch.Tensor:
        # user [B, Fu], item [B, Fi], item_multi [B, G]: indices, 0 = unknown / no genre
        single = torch.cat([user, item], dim=1) + self.offsets[: user.shape[1] + item.shape[1]]
        fields = self.embedding(single)  # [B, Fu + Fi, d]
        genre_rows = item_multi + self.offsets[-1]
        present = (item_multi > 0).unsqueeze(-1).to(fields.dtype)
        genres = (self.embedding(genre_rows) * present).sum(1) / present.sum(1).clamp(min=1.0)
        user_side = fields[:, : self.n_user].sum(1)
        item_side = fields[:, self.n_user :].sum(1) + genres
        deep = self.mlp(torch.cat([fields.flatten(1), genres], dim=1)).squeeze(1)
        return (user_side * item_side).sum(1) + deep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--users", type=Path, required=True)
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--format", choices=("torchscript", "export"), default="torchscript")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=20, help="random items per positive")
    parser.add_argument("--loss", choices=("softmax", "bce"), default="softmax")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)

    # -- the tables, encoded as the feature schema will declare them ----------------
    users = sorted(read_csv(args.users), key=lambda r: int(r["user_id"]))
    items = sorted(read_csv(args.items), key=lambda r: int(r["item_id"]))
    user_ids = np.array([int(r["user_id"]) for r in users])
    item_ids = np.array([int(r["item_id"]) for r in items])
    genders, gender_codes = tokens([r["gender"] for r in users])
    jobs, job_codes = tokens([r["occupation"] for r in users])
    user_table = np.stack(
        [
            np.arange(1, len(users) + 1),  # an id's index: its rank among sorted ids + 1
            bucket([r["age"] for r in users], AGE_BOUNDS),
            gender_codes,
            job_codes,
        ],
        axis=1,
    )
    item_table = np.stack(
        [np.arange(1, len(items) + 1), bucket([r["release_year"] for r in items], YEAR_BOUNDS)],
        axis=1,
    )
    item_genres = [[g for g in r["genres"].split("|") if g] for r in items]
    genre_names = sorted({g for row in item_genres for g in row})
    genre_multi = np.zeros((len(items), MAX_GENRES), dtype=np.int64)
    for row, names in enumerate(item_genres):
        codes = [genre_names.index(g) + 1 for g in names[:MAX_GENRES]]
        genre_multi[row, : len(codes)] = codes
    for row in items:  # the package reads at most MAX_GENRES genres per item
        row["genres"] = "|".join(row["genres"].split("|")[:MAX_GENRES])

    log = read_csv(args.log)
    log_users = np.searchsorted(user_ids, [int(r["user_id"]) for r in log])
    log_items = np.searchsorted(item_ids, [int(r["item_id"]) for r in log])

    cards = [
        len(users) + 1, len(AGE_BOUNDS) + 2, len(genders) + 1, len(jobs) + 1,
        len(items) + 1, len(YEAR_BOUNDS) + 2, len(genre_names) + 1,
    ]  # fmt: skip
    model = Ranker(cards, n_user=4, dim=args.dim, hidden=args.hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    user_t, item_t = torch.from_numpy(user_table), torch.from_numpy(item_table)
    multi_t = torch.from_numpy(genre_multi)

    # -- training: each interaction against random catalog items --------------------
    started = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(log_users.size)
        total = 0.0
        for start in range(0, order.size, args.batch_size):
            batch = order[start : start + args.batch_size]
            u = np.repeat(log_users[batch], 1 + args.negatives)
            i = np.stack(
                [log_items[batch], *rng.integers(0, len(items), (args.negatives, batch.size))],
                axis=1,
            ).reshape(-1)
            logits = model(user_t[u], item_t[i], multi_t[i]).reshape(batch.size, -1)
            if args.loss == "softmax":  # the interaction among its negatives
                loss = F.cross_entropy(logits, torch.zeros(batch.size, dtype=torch.int64))
            else:
                labels = torch.zeros_like(logits)
                labels[:, 0] = 1.0
                loss = F.binary_cross_entropy_with_logits(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.size
        print(f"epoch {epoch + 1}: loss {total / order.size:.4f}", flush=True)
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)

    # -- the files recserve package ranker takes ------------------------------------
    args.out.mkdir(parents=True, exist_ok=True)
    model.eval()
    if args.format == "export":
        batch = torch.export.Dim("batch", min=1)
        example = (user_t[:4], item_t[:4], multi_t[:4])
        program = torch.export.export(model, example, dynamic_shapes=({0: batch},) * 3)
        torch.export.save(program, str(args.out / "ranker.pt2"))
    else:
        torch.jit.save(torch.jit.script(model), str(args.out / "ranker.pt"))
    schema = {
        "user": [
            {"name": "user_id", "kind": "id"},
            {"name": "age", "kind": "bucket", "boundaries": AGE_BOUNDS},
            {"name": "gender", "kind": "token", "vocabulary": genders},
            {"name": "occupation", "kind": "token", "vocabulary": jobs},
        ],
        "item": [
            {"name": "item_id", "kind": "id"},
            {"name": "release_year", "kind": "bucket", "boundaries": YEAR_BOUNDS},
            {"name": "genres", "kind": "token", "vocabulary": genre_names,
             "max_values": MAX_GENRES},
        ],
    }  # fmt: skip
    (args.out / "features.toml").write_text(to_toml(schema))
    write_csv(
        args.out / "users.csv",
        ["id", "age", "gender", "occupation"],
        [[r["user_id"], r["age"], r["gender"], r["occupation"]] for r in users],
    )
    write_csv(
        args.out / "items.csv",
        ["id", "title", "release_year", "genres"],
        [[r["item_id"], r["title"], r["release_year"], r["genres"]] for r in items],
    )
    write_csv(
        args.out / "interactions.csv",
        ["user_id", "item_id"],
        [[r["user_id"], r["item_id"]] for r in log],
    )
    print(f"wrote {args.out}")


def to_toml(schema: dict[str, list[dict]]) -> str:
    """The schema as TOML arrays of tables (values are strings, numbers and lists)."""
    lines = []
    for side, features in schema.items():
        for feature in features:
            lines.append(f"[[{side}]]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in feature.items()]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
