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

NOTE: the cap does not make training identical on every machine. Before the
calibration changes of the null mapping and the count law, the same code found 7 of
8 anomalies on one sample plant on an AVX-512 machine and 6 of 8 on an AMD EPYC
without AVX-512. The number of torch threads, which torch sets from the machine's
cores, also changes the trained weights.
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
