"""GPU timing table for docs/gpu.md (run by tests/gpu/run.sh): recserve's CUDA top-k over a
10M x 64 catalog (float32 and bfloat16; B = 1 and 256) against torch.topk(q @ items.T) on
the same GPU, as a fraction of the measured device-to-device copy bandwidth; and the fused
DeepFM crossing for 10k candidates against the TorchScript forward of the same DeepFM.
Medians of CUDA-event timings after a warm-up. Exits 1 if the fused crossing disagrees with
the forward (a correctness check), never because a speed target is missed."""

from __future__ import annotations

import itertools
import statistics
import sys

import numpy as np
import torch
from torch import nn

from recserve.core.kernels import DeviceItemMatrix, topk_inner_product
from recserve.engine.crossing import DeviceItemTables, ItemTables, crossing_deepfm_cuda

N, D, K = 10_000_000, 64, 100


def time_ms(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a device-to-device copy of 4 GiB."""
    src = torch.empty(2**30, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src))
    return 2 * 4 * 2**30 / (ms / 1e3)


def topk_table(bandwidth: float) -> list[tuple]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    items32 = torch.randn((N, D), device="cuda", generator=gen)
    rows = []
    for dtype in ("float32", "bfloat16"):
        matrix = DeviceItemMatrix(items32, dtype=dtype)
        items_t = matrix.data
        for B in (1, 256):
            q = torch.randn((B, D), device="cuda", generator=gen)
            q_t = q.to(items_t.dtype)
            ours = time_ms(lambda q=q, m=matrix: topk_inner_product(q, m, K))
            theirs = time_ms(lambda q=q_t, x=items_t: torch.topk(q @ x.T, K), reps=5)
            a = topk_inner_product(q, matrix, K)[1]
            b = torch.topk(q_t @ items_t.T, K)[1]
            same = sum(
                len(np.intersect1d(x, y))
                for x, y in zip(a.cpu().numpy(), b.cpu().numpy(), strict=True)
            )
            scan = N * D * items_t.element_size() / (ours / 1e3)
            rows.append((dtype, B, ours, theirs, scan / bandwidth, theirs / ours, same / (B * K)))
            torch.cuda.empty_cache()
        del matrix, items_t
    del items32
    torch.cuda.empty_cache()
    return rows


class DeepFM(nn.Module):
    """logit = b + Σ w_f + ½Σ_d[(Σ_f v_fd)² − Σ_f v_fd²] + MLP([v_1..v_F]) (user fields first)."""

    def __init__(self, rows: int, fields: int, dim: int, hidden: list[int]) -> None:
        super().__init__()
        self.embedding = nn.Embedding(rows, dim)
        self.first_order = nn.Embedding(rows, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        sizes = [fields * dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], 1))

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        index = torch.cat([user, item], dim=1)  # [B, F]
        v = self.embedding(index)  # [B, F, d]
        s = v.sum(dim=1)  # [B, d]
        fm = 0.5 * ((s * s).sum(dim=1) - (v * v).sum(dim=(1, 2)))  # [B]
        first = self.first_order(index).sum(dim=(1, 2)) + self.bias  # [B]
        return first + fm + self.mlp(v.flatten(1)).squeeze(1)  # [B]


def crossing_table() -> tuple[float, float, float, float]:
    torch.manual_seed(0)
    fu, fi, dim, hidden, items, candidates = 3, 5, 16, [256, 128], 100_000, 10_000
    table_rows = 200_000
    model = DeepFM(table_rows, fu + fi, dim, hidden).cuda().eval()
    scripted = torch.jit.script(model)
    item_features = torch.randint(0, table_rows, (items, fi), device="cuda")
    user = torch.randint(0, table_rows, (1, fu), device="cuda")
    w1, b1 = model.mlp[0].weight, model.mlp[0].bias  # [H1, F d], [H1]
    head = torch.jit.script(nn.Sequential(*list(model.mlp)[2:]))  # after the first ReLU
    with torch.no_grad():  # the item side, once at load; the user side, once per request
        vi = model.embedding(item_features)  # [I, Fi, d]
        si = vi.sum(dim=1)
        item_scalar = model.first_order(item_features).sum(dim=(1, 2)) + 0.5 * (
            (si * si).sum(dim=1) - (vi * vi).sum(dim=(1, 2))
        )
        item_hidden = vi.flatten(1) @ w1[:, fu * dim :].T
        vu = model.embedding(user)[0]  # [Fu, d]
        su = vu.sum(dim=0)
        user_scalar = float(
            model.bias + model.first_order(user).sum() + 0.5 * ((su * su).sum() - (vu * vu).sum())
        )
        user_hidden = vu.flatten() @ w1[:, : fu * dim].T + b1
    tables = DeviceItemTables.upload(
        ItemTables(*(t.cpu().numpy() for t in (item_scalar, si, item_hidden, si[:, :0])))
    )
    us, uh = su.cpu().numpy(), user_hidden.cpu().numpy()
    rows = np.random.default_rng(0).integers(0, items, candidates)

    def fused() -> torch.Tensor:
        linear, h = crossing_deepfm_cuda(user_scalar, us, uh, tables, rows)
        return linear + head(h).squeeze(1)

    def forward() -> torch.Tensor:
        r = torch.from_numpy(rows).cuda()
        return scripted(user.expand(candidates, fu), item_features[r])

    with torch.inference_mode():
        error = float((fused() - forward()).abs().max())
        kernel = time_ms(lambda: crossing_deepfm_cuda(user_scalar, us, uh, tables, rows), 50)
        return kernel, time_ms(fused, 50), time_ms(forward, 50), error


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = False  # torch's default: float32 really
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}, {props.multi_processor_count} SMs, "
          f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}")  # fmt: skip
    bandwidth = copy_bandwidth()
    print(f"device-to-device copy: {bandwidth / 1e12:.2f} TB/s (read + written, 4 GiB)")
    print(f"\ntop-k, N={N:,} x D={D}, k={K}: recserve CUDA vs torch.topk(q @ items.T, k)")
    print("| items | B | recserve ms | torch ms | scan / copy bandwidth | x torch | same ids |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for dtype, B, ours, theirs, fraction, speedup, same in topk_table(bandwidth):
        print(f"| {dtype} | {B} | {ours:.3f} | {theirs:.3f} | {fraction:.0%} | "
              f"{speedup:.2f} | {same:.1%} |")  # fmt: skip
    kernel, fused, forward, error = crossing_table()
    print("\nDeepFM crossing, 10k candidates of 100k items (8 fields, d=16, MLP 256-128)")
    print("| path | ms |")
    print("| --- | --- |")
    print(f"| fused crossing kernel alone | {kernel:.3f} |")
    print(f"| fused crossing + TorchScript head | {fused:.3f} |")
    print(f"| TorchScript forward of the whole DeepFM | {forward:.3f} |")
    print(f"max |fused - forward| logit: {error:.2e}")
    print("targets: B=1 scan >= 80% of copy bandwidth; B=256 >= 3x torch (see above)")
    if not error <= 1e-3:
        print("FAILED: the fused crossing disagrees with the TorchScript forward", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
