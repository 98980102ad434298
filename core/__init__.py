"""tgloc: localize anomalies in industrial IoT data as abnormal sub-temporal-graphs.

`core` is importable without Streamlit: the command line and the dashboard are two thin
front ends over the same calls.

Importing `core` caps the vector instructions of the numeric libraries at AVX2.
They choose their code paths at run time, and AVX-512 paths can differ from AVX2 paths
in the last bits of a sum. Training amplifies such differences: on one AVX-512 machine
the same sample plant gave 7 of 8 anomalies found without the cap and 8 with it. With
the cap, every x86-64 machine with AVX2 runs the same code paths. The variables take
effect only when set before numpy and torch load, so `core` is imported first (the
`tgloc` command does so). A value already in the environment is kept.

NOTE: identical results across machines are expected from the cap but were checked
on one machine only. The number of torch threads, which torch sets from the
machine's cores, also changes the trained weights. On the five sample plants of
`tests/test_acceptance.py`, one thread instead of two found 38 of 40 anomalies too,
but missed other ones: 6 of 8 on one plant.
"""

import os

VECTOR_CODE_LIMITS = {
    # torch's own kernels
    "ATEN_CPU_CAPABILITY": "avx2",
    # torch's matrix products (Intel MKL) and convolutions (oneDNN)
    "MKL_CBWR": "AVX2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    # numpy's and scipy's OpenBLAS
    "OPENBLAS_CORETYPE": "Haswell",
    # numpy's dispatched loops beyond AVX2
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
}
for name, value in VECTOR_CODE_LIMITS.items():
    os.environ.setdefault(name, value)
del name, value

__version__ = "0.1.0"
