"""Plain runner of the GPU checks (tests/csrc/cuda_checks.py) for machines without pytest:
runs every case, prints each failure, exits 1 if any failed. Seed: RECSERVE_TEST_SEED."""

from __future__ import annotations

import os
import sys
import traceback

import cuda_checks as checks
import numpy as np


def main() -> int:
    import recserve.core.kernels

    recserve.core.kernels.require_cuda()  # says why when CUDA is not usable here
    seed = int(os.environ.get("RECSERVE_TEST_SEED", np.random.SeedSequence().entropy))
    print(f"random seed: RECSERVE_TEST_SEED={seed}")
    rng = np.random.default_rng(seed)
    runs = [(checks.check_inner_product, c) for c in checks.INNER_PRODUCT_CASES]
    runs += [(checks.check_scores, c) for c in checks.SCORES_CASES]
    runs += [(checks.check_crossing_deepfm, c) for c in checks.CROSSING_CASES]
    runs += [(checks.check_crossing_dcn, c) for c in checks.DCN_CASES]
    failed = 0
    for check, case in runs:
        try:
            check(case, rng, f"seed={seed}")
        except Exception:  # noqa: BLE001 - report every failing case, then fail
            failed += 1
            print(f"FAILED {check.__name__}{case}\n{traceback.format_exc()}")
    for check in (checks.check_crossing_rows_are_checked_on_the_host,
                  checks.check_streams_and_dlpack):  # fmt: skip
        try:
            check(rng)
        except Exception:  # noqa: BLE001
            failed += 1
            print(f"FAILED {check.__name__}\n{traceback.format_exc()}")
    try:
        checks.check_k_limit()
    except Exception:  # noqa: BLE001
        failed += 1
        print(f"FAILED check_k_limit\n{traceback.format_exc()}")
    total = len(runs) + 3
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
