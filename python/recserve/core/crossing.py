"""The fused crossing kernels' facade: the item tables they read and one call per kernel,
on the host (numpy) or on a CUDA device (torch tensors).

recserve.engine.crossing decides what the tables hold (from a model's crossing block)
and runs the head on what these return; this module only hands arrays to the C++ core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _core
from . import kernels


@dataclass(frozen=True)
class ItemTables:
    """Per-item side: ``scalar = w_I + fm_II`` [I], ``sum = s_I`` [I, d] ([I, 0] without
    FM), ``hidden = h_I`` [I, H1] and, for DCN-v2 only, ``vectors = x0_I`` [I, F_item d]
    ([I, 0] otherwise)."""

    scalar: np.ndarray
    sum: np.ndarray
    hidden: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class DeviceItemTables:
    """:class:`ItemTables` resident on a CUDA device (float32, contiguous): uploaded once,
    when a model loads."""

    scalar: torch.Tensor
    sum: torch.Tensor
    hidden: torch.Tensor
    vectors: torch.Tensor

    @classmethod
    def upload(
        cls, items: ItemTables, device: torch.device | str | None = None
    ) -> DeviceItemTables:
        """Copy the tables to ``device`` (default: the current CUDA device); raises
        ``RuntimeError`` where CUDA is not usable (recserve.core.kernels.require_cuda)."""
        kernels.require_cuda()
        dev = torch.device("cuda", torch.cuda.current_device()) if device is None else device
        dev = torch.device(dev)
        if dev.type != "cuda":
            raise ValueError(f"device tables live on a CUDA device, got {dev}")
        scalar, sums, hidden, vectors = (
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)
            for a in (items.scalar, items.sum, items.hidden, items.vectors)
        )
        num_items = scalar.shape[0]
        for name, table in (("sum", sums), ("hidden", hidden), ("vectors", vectors)):
            if table.ndim != 2 or table.shape[0] != num_items:
                raise ValueError(
                    f"item table {name!r} has shape {tuple(table.shape)}, expected "
                    f"({num_items}, ...) like 'scalar'"
                )
        return cls(scalar, sums, hidden, vectors)

    @property
    def device(self) -> torch.device:
        return self.hidden.device

    @property
    def num_items(self) -> int:
        return int(self.hidden.shape[0])


def _user_on(device: torch.device, vector: np.ndarray, size: int, name: str) -> torch.Tensor:
    array = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    if array.size != size:
        raise ValueError(f"{name} has {array.size} values, the item tables expect {size}")
    return torch.from_numpy(array).to(device)


def _rows(item_rows: np.ndarray | None) -> np.ndarray | None:
    return None if item_rows is None else np.ascontiguousarray(item_rows, dtype=np.int64)


def crossing_deepfm_cuda(
    user_scalar: float,
    user_sum: np.ndarray,
    user_hidden: np.ndarray,
    tables: DeviceItemTables,
    item_rows: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_core.crossing_deepfm`` on the GPU: (linear [N], relu(h_U + h_I) [N, H1]) as CUDA
    tensors on the tables' device and torch's current stream. ``item_rows`` (host, None =
    all) outside ``[0, I)`` raise ``IndexError`` before anything runs."""
    dev = tables.device
    D, H1 = tables.sum.shape[1], tables.hidden.shape[1]
    usum = _user_on(dev, user_sum, D, "user_sum")
    uhid = _user_on(dev, user_hidden, H1, "user_hidden")
    rows = _rows(item_rows)
    N = tables.num_items if rows is None else rows.shape[0]
    linear = torch.empty(N, dtype=torch.float32, device=dev)
    hidden = torch.empty((N, H1), dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        _core.cuda_crossing_deepfm(
            float(user_scalar), usum.data_ptr(), uhid.data_ptr(), tables.scalar.data_ptr(),
            tables.sum.data_ptr(), tables.hidden.data_ptr(), tables.num_items, D, H1, rows,
            linear.data_ptr(), hidden.data_ptr(), torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return linear, hidden


def crossing_dcn_first_cuda(
    user_x0: np.ndarray,
    user_hidden: np.ndarray,
    tables: DeviceItemTables,
    item_rows: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_core.crossing_dcn_first`` on the GPU: (x0 [N, D], x1 [N, D]) as CUDA tensors;
    rows as for :func:`crossing_deepfm_cuda`."""
    dev = tables.device
    DI = tables.vectors.shape[1]
    D = tables.hidden.shape[1]
    ux0 = _user_on(dev, user_x0, D - DI, "user_x0")
    uhid = _user_on(dev, user_hidden, D, "user_hidden")
    rows = _rows(item_rows)
    N = tables.num_items if rows is None else rows.shape[0]
    x0 = torch.empty((N, D), dtype=torch.float32, device=dev)
    x1 = torch.empty((N, D), dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        _core.cuda_crossing_dcn_first(
            ux0.data_ptr(), uhid.data_ptr(), tables.vectors.data_ptr(), tables.hidden.data_ptr(),
            tables.num_items, D - DI, DI, rows, x0.data_ptr(), x1.data_ptr(),
            torch.cuda.current_stream().cuda_stream,
        )  # fmt: skip
    return x0, x1


def crossing_deepfm(
    user_scalar: float,
    user_sum: np.ndarray,
    user_hidden: np.ndarray,
    tables: ItemTables,
    item_rows: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``_core.crossing_deepfm`` on the host: (linear [N], relu(h_U + h_I) [N, H1]) for
    item rows (None = all)."""
    return _core.crossing_deepfm(
        user_scalar, user_sum, user_hidden, tables.scalar, tables.sum, tables.hidden,
        _rows(item_rows),
    )  # fmt: skip


def crossing_dcn_first(
    user_x0: np.ndarray,
    user_hidden: np.ndarray,
    tables: ItemTables,
    item_rows: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """``_core.crossing_dcn_first`` on the host: (x0 [N, D], x1 [N, D]) for item rows
    (None = all)."""
    return _core.crossing_dcn_first(
        user_x0, user_hidden, tables.vectors, tables.hidden, _rows(item_rows)
    )
