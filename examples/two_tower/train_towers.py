"""A two-tower retriever written in plain PyTorch, trained on an interaction log, and
saved as the files `recserve package two-tower` takes.

Nothing here comes from recserve: the model, the training loop and the output files are
what a team with its own retriever would have. The user tower is an id embedding; the
item tower adds the mean of the item's genre embeddings to its id embedding, so items
with few interactions still land near similar ones. Training is the usual in-batch
softmax: each user's interacted item against the other items of the batch.

    python examples/two_tower/train_towers.py --log LOG.csv --items ITEMS.csv --out DIR

LOG.csv needs `user_id` and `item_id` columns; ITEMS.csv `item_id`, and optionally
`title` and `genres` (separated by `|`). `recserve evaluate --make-split` writes both
(DIR/train/interactions.csv and DIR/train/items.csv). Writes to --out: items.csv,
users.csv, items.npy, users.npy and interactions.csv.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


class TwoTower(nn.Module):
    def __init__(self, num_users: int, num_items: int, num_genres: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.genres = nn.EmbeddingBag(num_genres + 1, dim, mode="mean", padding_idx=0)
        for table in (self.users, self.items, self.genres):
            nn.init.normal_(table.weight, std=0.05)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.users(users), dim=-1)

    def item_vectors(self, items: torch.Tensor, genres: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.items(items) + self.genres(genres[items]), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--items", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    items = read_csv(args.items)
    item_ids = np.array([int(row["item_id"]) for row in items])
    genre_names = sorted({g for row in items for g in row.get("genres", "").split("|") if g})
    genre_index = {name: i + 1 for i, name in enumerate(genre_names)}  # 0: no genre
    width = max(1, max(len(row.get("genres", "").split("|")) for row in items))
    genres = torch.zeros(len(items), width, dtype=torch.int64)
    for row, item in enumerate(items):
        codes = [genre_index[g] for g in item.get("genres", "").split("|") if g]
        genres[row, : len(codes)] = torch.tensor(codes, dtype=torch.int64)

    log = read_csv(args.log)
    user_ids = np.unique([int(row["user_id"]) for row in log])
    user_rows = np.searchsorted(user_ids, [int(row["user_id"]) for row in log])
    item_order = np.argsort(item_ids)
    item_rows = item_order[np.searchsorted(item_ids[item_order], [int(r["item_id"]) for r in log])]
    users, positives = torch.from_numpy(user_rows), torch.from_numpy(item_rows)

    # In-batch negatives are drawn as often as items occur in the log, which would teach
    # the towers to push popular items down; the usual correction subtracts the log of
    # that frequency from each logit (the "logQ" correction).
    log_frequency = torch.log(torch.bincount(positives, minlength=item_ids.size).float() + 1)
    model = TwoTower(user_ids.size, item_ids.size, len(genre_names), args.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for epoch in range(1, args.epochs + 1):
        started, total = time.perf_counter(), 0.0
        for batch in torch.randperm(users.numel()).split(args.batch_size):
            u = model.user_vectors(users[batch])
            i = model.item_vectors(positives[batch], genres)
            # the batch's other items are the negatives
            logits = u @ i.T / args.temperature - log_frequency[positives[batch]][None, :]
            same = positives[batch][None, :] == positives[batch][:, None]
            logits = logits.masked_fill(same & ~torch.eye(batch.numel(), dtype=torch.bool), -1e9)
            loss = F.cross_entropy(logits, torch.arange(batch.numel()))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * batch.numel()
        seconds = time.perf_counter() - started
        print(f"epoch {epoch}: loss {total / users.numel():.4f} ({seconds:.1f}s)")

    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        np.save(args.out / "users.npy", model.user_vectors(torch.arange(user_ids.size)).numpy())
        np.save(
            args.out / "items.npy", model.item_vectors(torch.arange(item_ids.size), genres).numpy()
        )
    write_rows(args.out / "users.csv", ["id"], [[u] for u in user_ids])
    write_rows(
        args.out / "items.csv", ["id", "title"], [[r["item_id"], r.get("title", "")] for r in items]
    )
    write_rows(
        args.out / "interactions.csv",
        ["user_id", "item_id"],
        [[r["user_id"], r["item_id"]] for r in log],
    )
    print(f"wrote {args.out}: {user_ids.size} users, {item_ids.size} items, d {args.dim}")


def write_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


if __name__ == "__main__":
    main()
