"""The scoring service."""

import os

# Refits run L-BFGS-B, whose BLAS threads only contend on a busy 2-core service: one is faster.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
