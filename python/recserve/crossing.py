"""DeepFM served through the fused feature-crossing kernel.

A DeepFM logit ``b + Σ_f w_f + ½Σ_d[(Σ_f v_fd)² − Σ_f v_fd²] + MLP([v_1..v_F])`` splits
exactly into a user part (once per request), an item part (once per catalog item, when
the model loads) and a per-candidate remainder:

    logit = (b + w_U + fm_UU) + (w_I + fm_II) + <s_U, s_I> + head(relu(h_U + h_I))

with ``w`` the first-order sums, ``s`` the sums of the field vectors, ``fm_XX`` the FM
term within one side, ``h_U = W1[:, U] v_U + b1`` and ``h_I = W1[:, I] v_I`` the first
MLP layer split by its user and item columns, and ``head`` the MLP after the first ReLU.
The C++ kernel (``_core.crossing_deepfm``) gathers the item rows and writes the linear
part and ``relu(h_U + h_I)``; the TorchScript head does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _core
from .artifact import Artifact, CrossingBlock


@dataclass(frozen=True)
class UserPart:
    """Per-request user side: ``scalar = b + w_U + fm_UU``, ``sum = s_U``, ``hidden = h_U``."""

    scalar: float
    sum: np.ndarray  # [d]
    hidden: np.ndarray  # [H1], b1 included


@dataclass(frozen=True)
class ItemTables:
    """Per-item side: ``scalar = w_I + fm_II`` [I], ``sum = s_I`` [I, d], ``hidden = h_I``
    [I, H1]."""

    scalar: np.ndarray
    sum: np.ndarray
    hidden: np.ndarray


def _field_vectors(
    block: CrossingBlock,
    table: np.ndarray,
    dtype: type,
    single: np.ndarray,
    single_offsets: np.ndarray,
    multi: np.ndarray,
) -> np.ndarray:
    """FieldEmbedding in numpy, in ``dtype``: [B, Fs + Fm, dim]; index 0 is a zero vector,
    a multi-valued field is the mean of its known values (zero when it has none)."""
    t = block.tables
    vectors = table[single + single_offsets].astype(dtype) * (single > 0)[..., None]  # [B, Fs, dim]
    known = multi > 0  # [B, M]
    multi_vec = table[multi + t["multi_offsets"]].astype(dtype) * known[..., None]  # [B, M, dim]
    pool = np.zeros((multi.shape[1], block.item_multi_fields), dtype=dtype)  # [M, Fm]
    pool[np.arange(multi.shape[1]), t["multi_fields"]] = 1.0
    pooled = np.einsum("bmd,mf->bfd", multi_vec, pool)  # [B, Fm, dim]
    counts = np.maximum(known.astype(dtype) @ pool, 1.0)[..., None]  # [B, Fm, 1]
    return np.concatenate([vectors, pooled / counts], axis=1)


class UserSide:
    """Computes the user part of a request; holds the user columns of W1 in ``dtype``."""

    def __init__(self, block: CrossingBlock, dtype: type = np.float64) -> None:
        t = block.tables
        n_user, d = block.user_fields, block.embedding_dim
        self.dtype = dtype
        self.offsets = np.ascontiguousarray(t["single_offsets"][:n_user])
        self.embedding = t["embedding"]
        self.first_order = t["first_order"]
        self.w1 = np.ascontiguousarray(t["w1"][:, : n_user * d], dtype=dtype)  # [H1, Fu d]
        self.b1 = t["b1"].astype(dtype)  # [H1]
        self.bias = float(t["bias"].reshape(-1)[0])

    def __call__(self, user_features: np.ndarray) -> UserPart:
        index = np.asarray(user_features, dtype=np.int64).reshape(self.offsets.shape)  # [Fu]
        known = (index > 0).astype(self.dtype)  # [Fu]
        rows = index + self.offsets
        v = self.embedding[rows].astype(self.dtype) * known[:, None]  # [Fu, d]
        w = float(self.first_order[rows].astype(self.dtype) @ known)
        s = v.sum(axis=0)  # [d]
        fm = 0.5 * (float(s @ s) - float(np.vdot(v, v)))
        hidden = self.w1 @ v.reshape(-1) + self.b1  # [H1]
        return UserPart(self.bias + w + fm, s, hidden)


def user_part(
    block: CrossingBlock, user_features: np.ndarray, dtype: type = np.float64
) -> UserPart:
    """The user side of one request from its encoded user row [Fu]."""
    return UserSide(block, dtype)(user_features)


def item_tables(
    block: CrossingBlock,
    item_features: np.ndarray,
    item_multi: np.ndarray,
    dtype: type = np.float64,
    chunk: int = 4096,
) -> ItemTables:
    """The item side of every item row (computed once, when the model loads)."""
    t = block.tables
    d, n_user = block.embedding_dim, block.user_fields
    n_item_fields = block.item_fields + block.item_multi_fields
    columns = (n_user * d, (n_user + n_item_fields) * d)
    offsets = t["single_offsets"][n_user:]
    embedding, first_order = t["embedding"], t["first_order"][:, None]
    w1 = t["w1"][:, columns[0] : columns[1]].astype(dtype)  # [H1, F_item d]
    parts = []
    for start in range(0, max(item_features.shape[0], 1), chunk):
        single = item_features[start : start + chunk]
        multi = item_multi[start : start + chunk]
        v = _field_vectors(block, embedding, dtype, single, offsets, multi)  # [B, F_item, d]
        w = _field_vectors(block, first_order, dtype, single, offsets, multi).sum(axis=(1, 2))
        s = v.sum(axis=1)  # [B, d]
        fm = 0.5 * ((s * s).sum(axis=1) - (v * v).sum(axis=(1, 2)))  # [B]
        parts.append((w, s, fm, v.reshape(v.shape[0], -1) @ w1.T))  # ..., [B, H1]
    w, s, fm, h = (np.concatenate(p) for p in zip(*parts, strict=True))
    return ItemTables(w + fm, s, h)


def check_block(block: CrossingBlock, item_widths: tuple[int, int]) -> None:
    """Checks the block's tables against its sizes and the item tables' widths."""
    t = block.tables
    d, h1 = block.embedding_dim, block.hidden
    n_fields = block.user_fields + block.item_fields + block.item_multi_fields
    rows = t["embedding"].shape[0]
    expected = {
        "embedding": (rows, d),
        "first_order": (rows,),
        "single_offsets": (block.user_fields + block.item_fields,),
        "multi_offsets": (item_widths[1],),
        "multi_fields": (item_widths[1],),
        "w1": (h1, n_fields * d),
        "b1": (h1,),
        "bias": (1,),
    }
    for role, shape in expected.items():
        if t[role].shape != shape:
            raise ValueError(f"crossing table {role!r} has shape {t[role].shape}, expected {shape}")
    if item_widths[0] != block.item_fields:
        raise ValueError(
            f"item_features has {item_widths[0]} columns, the crossing block {block.item_fields}"
        )
    for role in ("single_offsets", "multi_offsets", "multi_fields"):
        if t[role].size and (t[role].min() < 0 or t[role].max() >= rows):
            raise ValueError(f"crossing table {role!r} points outside the embedding table")
    if t["multi_fields"].size and t["multi_fields"].max() >= block.item_multi_fields:
        raise ValueError("crossing table 'multi_fields' names a field that does not exist")


class DeepFMCrossing:
    """Scores one user against catalog item rows through the fused crossing kernel.

    Built once per model load: the item tables (``(d + 1 + H1)`` float32 per item) are
    precomputed in float64 and stored in float32. Per request, :meth:`logits` computes
    the user part, calls the C++ kernel for the candidates and runs the head.
    """

    def __init__(
        self, block: CrossingBlock, item_features: np.ndarray, item_multi: np.ndarray
    ) -> None:
        if block.kind != "deepfm":
            raise ValueError(f"crossing kind {block.kind!r} is not DeepFM")
        check_block(block, (item_features.shape[1], item_multi.shape[1]))
        self.block = block
        self.head = block.head
        self._user_side = UserSide(block, np.float64)
        items = item_tables(block, item_features, item_multi, np.float64)
        self.items = ItemTables(
            *(
                np.ascontiguousarray(a, dtype=np.float32)
                for a in (items.scalar, items.sum, items.hidden)
            )
        )

    @staticmethod
    def from_artifact(artifact: Artifact) -> DeepFMCrossing | None:
        """The crossing path of an artifact, or None when it has no crossing block."""
        if artifact.crossing is None:
            return None
        t = artifact.tables
        return DeepFMCrossing(artifact.crossing, t["item_features"], t["item_multi"])

    @property
    def num_items(self) -> int:
        return int(self.items.scalar.shape[0])

    @property
    def bytes_per_item(self) -> int:
        """Memory of the precomputed item tables per item: (d + 1 + H1) float32."""
        return 4 * (self.block.embedding_dim + 1 + self.block.hidden)

    def user_part(self, user_features: np.ndarray) -> UserPart:
        """The float32 user part of one encoded user row (computed in float64)."""
        user = self._user_side(user_features)
        return UserPart(
            user.scalar,
            np.ascontiguousarray(user.sum, dtype=np.float32),
            np.ascontiguousarray(user.hidden, dtype=np.float32),
        )

    def cross(self, user: UserPart, item_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The kernel: (linear part [N], relu(h_U + h_I) [N, H1]) for item rows (None = all)."""
        rows = None if item_rows is None else np.ascontiguousarray(item_rows, dtype=np.int64)
        items = self.items
        return _core.crossing_deepfm(
            user.scalar, user.sum, user.hidden, items.scalar, items.sum, items.hidden, rows
        )

    def logits(self, user_features: np.ndarray, item_rows: np.ndarray | None) -> np.ndarray:
        """float32 logits [N] of one user's encoded row against item rows (None = all)."""
        linear, hidden = self.cross(self.user_part(user_features), item_rows)
        with torch.inference_mode():
            deep = self.head(torch.from_numpy(hidden)).reshape(-1)  # [N]
            return (deep + torch.from_numpy(linear)).numpy()
