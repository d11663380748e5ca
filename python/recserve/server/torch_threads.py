"""Every server thread that runs models uses the process's intra-op thread count.

``torch.set_num_threads`` in the main thread covers ATen's own parallel loops in every
thread, but not the matrix products: MKL's (and OpenMP's) count is per thread, so a
thread that never set it multiplies on a team of one thread per core and keeps that
team alive as long as it lives: with 64 handler threads, up to 64 threads more than
``--torch-threads`` allows.
"""

from __future__ import annotations

import torch


def adopt_torch_threads() -> None:
    """Applies the process-wide count (set once by ``build_server``) to this thread."""
    torch.set_num_threads(torch.get_num_threads())
