#!/bin/sh
# test_threads_avx2.sh: the kernel tests again with OpenBLAS held to its AVX2
# (Haswell) kernels, which sum a product in another order when it is cut
# narrower: the engine's results must still be the same at every thread count
# (engine/ops.c cuts products by their shape alone). Ends with the binary's
# "N passed, N failed" line.
OPENBLAS_CORETYPE=Haswell exec "${BUILD:-build}/tests/test_ops"
