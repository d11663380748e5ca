"""DNN rankers served through the fused feature-crossing kernels.

A DeepFM logit ``b + Σ_f w_f + ½Σ_d[(Σ_f v_fd)² − Σ_f v_fd²] + MLP([v_1..v_F])`` splits
exactly into a user part (once per request), an item part (once per catalog item, when
the model loads) and a per-candidate remainder:

    logit = (b + w_U + fm_UU) + (w_I + fm_II) + <s_U, s_I> + head(relu(h_U + h_I))

with ``w`` the first-order sums, ``s`` the sums of the field vectors, ``fm_XX`` the FM
term within one side, ``h_U = W1[:, U] v_U + b1`` and ``h_I = W1[:, I] v_I`` the first
MLP layer split by its user and item columns, and ``head`` the MLP after the first ReLU.
A Wide&Deep is the same without the FM terms (``fm = 0``, no sums). The C++ kernel
(``_core.crossing_deepfm``) gathers the item rows and writes the linear part and
``relu(h_U + h_I)``; the TorchScript head does the rest (:class:`FieldCrossing`).
:meth:`_Crossing.head_inputs` (per request) and :meth:`_Crossing.head_logits` (on the
rows of one or several requests, recserve.engine.batch_plan) are the two halves.

A stacked DCN-v2 (:class:`DCNCrossing`) has ``x0 = [x0_U, x0_I]`` (the field vectors
concatenated) and a first cross layer ``x1 = x0 ⊙ (W0 x0 + b0) + x0`` whose linear map
splits the same way, ``W0 x0 + b0 = h_U + h_I``; ``_core.crossing_dcn_first`` writes
``x0`` and ``x1`` and the head runs the other cross layers and the MLP on them.

The block's kind (``recserve.engine.artifact.CROSSING_ROLES``) says which terms exist. The head
runs in float32, or opt-in in bfloat16 (``head_dtype="bfloat16"``, faster where the CPU
has AVX512-BF16/AMX, at the cost of about 3 significant digits in the deep part) or with
int8 Linear layers (``head_dtype="int8"``, recserve.engine.int8_head: CPU only, faster where
the CPU has VNNI; each row quantized on its own, so batching still changes nothing).

On a GPU (recserve built with CUDA): :meth:`_Crossing.to_device` uploads the item tables
once (:class:`DeviceItemTables`), and :meth:`FieldCrossing.cross_on_device` /
:meth:`DCNCrossing.cross_on_device` run the CUDA twin of the kernel on them, returning torch
CUDA tensors the head (moved to the same device) consumes directly. Candidate rows stay host
data from the request; they are checked on the host (``IndexError``) before any launch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..core.crossing import (
    DeviceItemTables,
    ItemTables,
    crossing_dcn_first,
    crossing_dcn_first_cuda,
    crossing_deepfm,
    crossing_deepfm_cuda,
)
from .artifact import CROSSING_ROLES, Artifact, CrossingBlock
from .batch_plan import HeadRows, run_head_rows
from .int8_head import quantize_head
from .programs import copy_program

# Head precision -> the dtype its inputs are converted to; the int8 head takes float32
# and quantizes each row itself (recserve.engine.int8_head).
HEAD_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}


@dataclass(frozen=True)
class UserPart:
    """Per-request user side: ``scalar = b + w_U + fm_UU`` (0 for DCN-v2), ``sum = s_U``
    ([d], [0] without an FM term), ``hidden = h_U`` ([H1], b1 included) and ``vectors =
    x0_U`` ([Fu d], the user's field vectors concatenated)."""

    scalar: float
    sum: np.ndarray
    hidden: np.ndarray
    vectors: np.ndarray


def _terms(block: CrossingBlock) -> tuple[bool, bool, bool]:
    """(first-order term, FM term, keep x0) of the block's kind."""
    return "first_order" in block.tables, block.kind == "deepfm", block.kind == "dcnv2"


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
        self.first_order, self.fm, _ = _terms(block)
        self.offsets = np.ascontiguousarray(t["single_offsets"][:n_user])
        self.embedding = t["embedding"]
        self.w1 = np.ascontiguousarray(t["w1"][:, : n_user * d], dtype=dtype)  # [H1, Fu d]
        self.b1 = t["b1"].astype(dtype)  # [H1]
        self.bias = float(t["bias"].reshape(-1)[0]) if self.first_order else 0.0
        self.weights = t["first_order"] if self.first_order else None

    def __call__(self, user_features: np.ndarray) -> UserPart:
        index = np.asarray(user_features, dtype=np.int64).reshape(self.offsets.shape)  # [Fu]
        known = (index > 0).astype(self.dtype)  # [Fu]
        rows = index + self.offsets
        v = self.embedding[rows].astype(self.dtype) * known[:, None]  # [Fu, d]
        scalar = self.bias
        if self.weights is not None:
            scalar += float(self.weights[rows].astype(self.dtype) @ known)
        s = v.sum(axis=0)  # [d]
        if self.fm:
            scalar += 0.5 * (float(s @ s) - float(np.vdot(v, v)))
        hidden = self.w1 @ v.reshape(-1) + self.b1  # [H1]
        return UserPart(scalar, s if self.fm else s[:0], hidden, v.reshape(-1))


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
    has_first_order, has_fm, keep_vectors = _terms(block)
    n_item_fields = block.item_fields + block.item_multi_fields
    columns = (n_user * d, (n_user + n_item_fields) * d)
    offsets = t["single_offsets"][n_user:]
    embedding = t["embedding"]
    w1 = t["w1"][:, columns[0] : columns[1]].astype(dtype)  # [H1, F_item d]
    parts = []
    for start in range(0, max(item_features.shape[0], 1), chunk):
        single = item_features[start : start + chunk]
        multi = item_multi[start : start + chunk]
        v = _field_vectors(block, embedding, dtype, single, offsets, multi)  # [B, F_item, d]
        scalar = np.zeros(v.shape[0], dtype=dtype)  # [B]
        if has_first_order:
            weights = t["first_order"][:, None]
            w = _field_vectors(block, weights, dtype, single, offsets, multi)  # [B, F_item, 1]
            scalar += w.sum(axis=(1, 2))
        s = v.sum(axis=1)  # [B, d]
        if has_fm:
            scalar += 0.5 * ((s * s).sum(axis=1) - (v * v).sum(axis=(1, 2)))
        flat = v.reshape(v.shape[0], -1)  # [B, F_item d]
        parts.append(
            (
                scalar,
                s if has_fm else s[:, :0],
                flat @ w1.T,  # [B, H1]
                flat if keep_vectors else flat[:, :0],
            )
        )
    return ItemTables(*(np.concatenate(p) for p in zip(*parts, strict=True)))


def check_block(block: CrossingBlock, item_widths: tuple[int, int]) -> None:
    """Checks the block's tables against its sizes and the item tables' widths."""
    t = block.tables
    d, h1 = block.embedding_dim, block.hidden
    n_fields = block.user_fields + block.item_fields + block.item_multi_fields
    rows = t["embedding"].shape[0]
    shapes = {
        "embedding": (rows, d),
        "first_order": (rows,),
        "single_offsets": (block.user_fields + block.item_fields,),
        "multi_offsets": (item_widths[1],),
        "multi_fields": (item_widths[1],),
        "w1": (h1, n_fields * d),
        "b1": (h1,),
        "bias": (1,),
    }
    if block.kind == "dcnv2" and h1 != n_fields * d:
        raise ValueError(f"a DCN-v2 cross layer maps {n_fields * d} inputs to as many, not {h1}")
    for role in CROSSING_ROLES[block.kind]:
        if t[role].shape != shapes[role]:
            raise ValueError(
                f"crossing table {role!r} has shape {t[role].shape}, expected {shapes[role]}"
            )
    if item_widths[0] != block.item_fields:
        raise ValueError(
            f"item_features has {item_widths[0]} columns, the crossing block {block.item_fields}"
        )
    for role in ("single_offsets", "multi_offsets", "multi_fields"):
        if t[role].size and (t[role].min() < 0 or t[role].max() >= rows):
            raise ValueError(f"crossing table {role!r} points outside the embedding table")
    if t["multi_fields"].size and t["multi_fields"].max() >= block.item_multi_fields:
        raise ValueError("crossing table 'multi_fields' names a field that does not exist")


class _Crossing:
    """What both crossing paths share: the checked block, the item tables (computed in
    float64 when the model loads, stored in float32) and the head in its dtype."""

    def __init__(
        self,
        block: CrossingBlock,
        item_features: np.ndarray,
        item_multi: np.ndarray,
        head_dtype: str = "float32",
    ) -> None:
        if head_dtype not in HEAD_DTYPES:
            raise ValueError(
                f"head dtype {head_dtype!r} is not supported (supported: {', '.join(HEAD_DTYPES)})"
            )
        check_block(block, (item_features.shape[1], item_multi.shape[1]))
        self.block = block
        self.head_dtype = HEAD_DTYPES[head_dtype]
        self.head = block.head
        if head_dtype == "int8":  # a new program: the artifact's head stays float32
            relu_input = block.kind in ("deepfm", "wide_deep")  # the kernel's relu(h_U + h_I)
            self.head = quantize_head(block.head, nonnegative_input=relu_input)
        elif self.head_dtype != torch.float32:  # a converted copy: the artifact stays float32
            with torch.no_grad():  # copies without autograd history, converted in place
                self.head = copy_program(block.head).to(self.head_dtype)
        self._user_side = UserSide(block, np.float64)
        items = item_tables(block, item_features, item_multi, np.float64)
        self.items = ItemTables(
            *(
                np.ascontiguousarray(a, dtype=np.float32)
                for a in (items.scalar, items.sum, items.hidden, items.vectors)
            )
        )

    device_items: DeviceItemTables | None = None

    def to_device(self, device: torch.device | str | None = None) -> _Crossing:
        """Upload the item tables to a CUDA device once (for :meth:`cross_on_device`);
        raises ``RuntimeError`` where CUDA is not usable. The head is not moved."""
        self.device_items = DeviceItemTables.upload(self.items, device)
        return self

    def _device_tables(self) -> DeviceItemTables:
        if self.device_items is None:
            raise RuntimeError("the item tables are not on a device; call to_device() first")
        return self.device_items

    @property
    def num_items(self) -> int:
        return int(self.items.scalar.shape[0])

    @property
    def bytes_per_item(self) -> int:
        """Memory of the precomputed item tables per item (float32)."""
        i = self.items
        widths = i.sum.shape[1] + i.hidden.shape[1] + i.vectors.shape[1]
        return 4 * (widths + (self.block.kind != "dcnv2"))  # + the scalar, when it exists

    def user_part(self, user_features: np.ndarray) -> UserPart:
        """The float32 user part of one encoded user row (computed in float64)."""
        user = self._user_side(user_features)
        return UserPart(
            user.scalar,
            *(
                np.ascontiguousarray(a, dtype=np.float32)
                for a in (user.sum, user.hidden, user.vectors)
            ),
        )

    def head_logits(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The head program: float32 logits [N] of its inputs (each [N, ...], float32,
        converted to the head's dtype)."""
        with torch.inference_mode():
            args = [a.to(self.head_dtype) for a in inputs]
            return self.head(*args).reshape(-1).to(torch.float32)  # [N]

    def head_inputs(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        """The kernel's part for one user's encoded row and item rows (None = all): the
        head's input rows, and the linear part [N] its logits add up with (None: none)."""
        raise NotImplementedError

    def head_inputs_on_device(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        """:meth:`head_inputs` from the device tables (:meth:`to_device`): CUDA tensors."""
        raise NotImplementedError

    def logits(self, user_features: np.ndarray, item_rows: np.ndarray | None) -> np.ndarray:
        """float32 logits [N] of one user's encoded row against item rows (None = all)."""
        rows, linear = self.head_inputs(user_features, item_rows)
        if rows.rows == 0:
            return np.empty(0, dtype=np.float32)
        logits = run_head_rows(self.head_logits, [rows])[0]
        return (logits if linear is None else logits + linear).numpy()


class FieldCrossing(_Crossing):
    """Scores one user against catalog item rows of a DeepFM or Wide&Deep (block kinds
    ``deepfm``, ``wide_deep``) through ``_core.crossing_deepfm`` and the head.

    Per item ``(d + 1 + H1)`` float32 for DeepFM, ``(1 + H1)`` for Wide&Deep. Per
    request, :meth:`logits` computes the user part, calls the C++ kernel for the
    candidates and runs the head.
    """

    def __init__(
        self,
        block: CrossingBlock,
        item_features: np.ndarray,
        item_multi: np.ndarray,
        head_dtype: str = "float32",
    ) -> None:
        if block.kind not in ("deepfm", "wide_deep"):
            raise ValueError(f"crossing kind {block.kind!r} is not DeepFM or Wide&Deep")
        super().__init__(block, item_features, item_multi, head_dtype)

    def cross(self, user: UserPart, item_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The kernel: (linear part [N], relu(h_U + h_I) [N, H1]) for item rows (None = all)."""
        return crossing_deepfm(user.scalar, user.sum, user.hidden, self.items, item_rows)

    def cross_on_device(
        self, user: UserPart, item_rows: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`cross` on the device tables (:meth:`to_device`): CUDA tensors."""
        return crossing_deepfm_cuda(
            user.scalar, user.sum, user.hidden, self._device_tables(), item_rows
        )

    def head_inputs(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        linear, hidden = self.cross(self.user_part(user_features), item_rows)
        return HeadRows((torch.from_numpy(hidden),)), torch.from_numpy(linear)

    def head_inputs_on_device(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        """:meth:`head_inputs` from the device tables: CUDA tensors."""
        linear, hidden = self.cross_on_device(self.user_part(user_features), item_rows)
        return HeadRows((hidden,)), linear


class DCNCrossing(_Crossing):
    """Scores one user against catalog item rows of a stacked DCN-v2 (block kind
    ``dcnv2``) through ``_core.crossing_dcn_first`` and the head (the other cross layers
    and the MLP). Per item ``(F_item d + F d)`` float32: ``x0_I`` and ``W0[:, I] x0_I``.
    """

    def __init__(
        self,
        block: CrossingBlock,
        item_features: np.ndarray,
        item_multi: np.ndarray,
        head_dtype: str = "float32",
    ) -> None:
        if block.kind != "dcnv2":
            raise ValueError(f"crossing kind {block.kind!r} is not DCN-v2")
        super().__init__(block, item_features, item_multi, head_dtype)

    def cross(self, user: UserPart, item_rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The kernel: (x0 [N, D], x1 [N, D]) for item rows (None = all)."""
        return crossing_dcn_first(user.vectors, user.hidden, self.items, item_rows)

    def cross_on_device(
        self, user: UserPart, item_rows: np.ndarray | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`cross` on the device tables (:meth:`to_device`): CUDA tensors."""
        return crossing_dcn_first_cuda(user.vectors, user.hidden, self._device_tables(), item_rows)

    def head_inputs(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        x0, x1 = self.cross(self.user_part(user_features), item_rows)
        return HeadRows((torch.from_numpy(x0), torch.from_numpy(x1))), None

    def head_inputs_on_device(
        self, user_features: np.ndarray, item_rows: np.ndarray | None
    ) -> tuple[HeadRows, torch.Tensor | None]:
        """:meth:`head_inputs` from the device tables: CUDA tensors."""
        x0, x1 = self.cross_on_device(self.user_part(user_features), item_rows)
        return HeadRows((x0, x1)), None


def crossing_from_artifact(
    artifact: Artifact, head_dtype: str = "float32"
) -> FieldCrossing | DCNCrossing | None:
    """The crossing path of an artifact, or None when it has no crossing block."""
    block = artifact.crossing
    if block is None:
        return None
    t = artifact.tables
    if t["user_features"].shape[1] != block.user_fields:
        raise ValueError(
            f"user_features has {t['user_features'].shape[1]} columns, the crossing block "
            f"{block.user_fields}"
        )
    kind = DCNCrossing if block.kind == "dcnv2" else FieldCrossing
    return kind(block, t["item_features"], t["item_multi"], head_dtype)
