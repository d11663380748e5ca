"""The decompositions of recserve.engine.crossing (DeepFM, Wide&Deep, DCN-v2) against each
model's forward, in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recserve.engine.artifact import CROSSING_ROLES, CROSSING_TABLES, CrossingBlock
from recserve.engine.crossing import item_tables, user_part
from recserve.training.export import crossing_block, has_crossing
from recserve.training.models import DCNv2, DeepFM, WideDeep

MODELS = {"deepfm": DeepFM, "wide_deep": WideDeep, "dcnv2": DCNv2}


def in_memory_block(model: DeepFM | WideDeep | DCNv2, num_user_fields: int) -> CrossingBlock:
    """The block an artifact would carry, built in memory (tables in the model's dtype)."""
    block, tables, head = crossing_block(model, num_user_fields)
    sizes = {k: block[k] for k in ("embedding_dim", "hidden", "user_fields", "item_fields")}
    assert set(block["tables"]) == set(CROSSING_ROLES[block["kind"]])
    return CrossingBlock(
        kind=block["kind"],
        item_multi_fields=block["item_multi_fields"],
        tables={role: tables[CROSSING_TABLES[role]] for role in block["tables"]},
        head=head,  # an nn.Module here; a TorchScript program in an artifact
        **sizes,
    )


def decomposed_logits(block: CrossingBlock, user: np.ndarray, item, multi) -> np.ndarray:
    """DeepFM / Wide&Deep: logit = (b + w_U + fm_UU) + (w_I + fm_II) + <s_U, s_I>
    + head(relu(h_U + h_I)); DCN-v2: head(x0, x0 ⊙ (h_U + h_I) + x0), x0 = [x0_U, x0_I]."""
    u = user_part(block, user, np.float64)
    items = item_tables(block, item, multi, np.float64, chunk=5)  # several chunks
    if block.kind == "dcnv2":
        x0 = np.concatenate([np.broadcast_to(u.vectors, (item.shape[0], u.vectors.size)),
                             items.vectors], axis=1)  # fmt: skip
        x1 = x0 * (u.hidden + items.hidden) + x0
        with torch.no_grad():
            return block.head(torch.from_numpy(x0), torch.from_numpy(x1)).reshape(-1).numpy()
    hidden = torch.from_numpy(np.maximum(u.hidden + items.hidden, 0.0))
    with torch.no_grad():
        deep = block.head(hidden).reshape(-1).numpy()
    return u.scalar + items.scalar + items.sum @ u.sum + deep


@pytest.mark.parametrize(
    ("user_cards", "item_cards", "multi_cards", "widths", "dim", "hidden"),
    [
        ([6, 3], [9, 4], [7], [3], 5, [8, 4]),
        ([11], [13], [5, 4], [3, 2], 1, [1]),  # d = 1, H1 = 1, two multi-valued fields
        ([4, 2, 3], [17], [], [], 16, [32, 16, 8]),  # no multi-valued field
        ([5], [], [6], [4], 3, [7]),  # no single-valued item field
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(MODELS))
def test_decomposition_equals_forward_in_float64(
    name, user_cards, item_cards, multi_cards, widths, dim, hidden, seed
) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    args = (user_cards, item_cards, multi_cards, widths, dim, hidden)
    extra = {"cross_layers": 1 + seed * 2} if name == "dcnv2" else {}  # 1 and 3 layers
    model = MODELS[name](*args, **extra).double().eval()
    for p in model.parameters():  # spread the weights so every term matters
        torch.nn.init.normal_(p, std=0.5 if name != "dcnv2" else 0.2)
    n_items = 23
    item = np.zeros((n_items, len(item_cards)), dtype=np.int64)
    for f, c in enumerate(item_cards):
        item[:, f] = rng.integers(0, c, n_items)
    multi = np.concatenate(
        [rng.integers(0, c, (n_items, w)) for c, w in zip(multi_cards, widths, strict=True)]
        or [np.zeros((n_items, 0), dtype=np.int64)],
        axis=1,
    )
    if multi.shape[1]:
        multi[0] = 0  # an item with no multi values at all
        multi[1, : widths[0]] = rng.integers(1, multi_cards[0], widths[0])  # all known
    item[2] = 0  # an item whose single-valued fields are all unknown
    block = in_memory_block(model, len(user_cards))
    assert block.kind == name
    users = [np.array([rng.integers(0, c) for c in user_cards]) for _ in range(5)]
    users += [np.zeros(len(user_cards), dtype=np.int64)]  # a cold-start user
    users[0][0] = 0  # one unknown field
    for user in users:
        with torch.no_grad():
            expected = model(
                torch.from_numpy(user).reshape(1, -1).expand(n_items, -1),
                torch.from_numpy(item),
                torch.from_numpy(multi),
            ).numpy()
        got = decomposed_logits(block, user, item, multi)
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_split_mlp_head_matches_the_mlp() -> None:
    torch.manual_seed(0)
    model = DeepFM([5], [7], [4], [2], embedding_dim=3, hidden=[6, 4]).eval()
    first, head = model.split_mlp()
    x = torch.randn(9, 3 * 3)
    torch.testing.assert_close(head(torch.relu(first(x))), model.mlp(x))
    with pytest.raises(ValueError, match="without hidden layers"):
        DeepFM([5], [7], [4], [2], embedding_dim=3, hidden=[]).split_mlp()


def test_wide_deep_split_mlp_and_dcn_split_cross() -> None:
    torch.manual_seed(0)
    model = WideDeep([5], [7], [4], [2], embedding_dim=3, hidden=[6, 4]).eval()
    first, head = model.split_mlp()
    x = torch.randn(9, 3 * 3)
    torch.testing.assert_close(head(torch.relu(first(x))), model.mlp(x))
    dcn = DCNv2([5], [7], [4], [2], embedding_dim=3, hidden=[6], cross_layers=2).eval()
    w0, b0, cross_head = dcn.split_cross()
    torch.testing.assert_close(cross_head(x, x * (x @ w0.t() + b0) + x), dcn.mlp(dcn.cross(x)))
    assert not has_crossing(WideDeep([5], [7], [4], [2], embedding_dim=3, hidden=[]))
    flat = DCNv2([5], [7], [4], [2], embedding_dim=3, hidden=[6], cross_layers=0)
    assert not has_crossing(flat)
    with pytest.raises(ValueError, match="without cross layers"):
        flat.split_cross()
