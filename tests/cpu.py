"""What this CPU computes natively, for tests whose meaning depends on it.

Tests assert what is right for the CPU they run on: a reduced precision (bf16, FP16 compute)
is exercised where the CPU has it and asserted to be refused where it does not. The
``plain_cpu`` fixture (conftest.py) simulates a CPU without native bf16/FP16 (an AVX2-only
AMD EPYC), so the refusal paths run on every machine; ``CVDEPLOY_TEST_PLAIN_CPU=1`` applies it
to the whole session.
"""

from __future__ import annotations

from cvdeploy.precision import NATIVE_FLAGS, cpu_flags, native_precisions

REDUCED_FLAGS = frozenset().union(*NATIVE_FLAGS.values())
"""The flags that give native bf16/FP16 arithmetic (dropped by ``plain_cpu``)."""


def native() -> set[str]:
    """Inference precisions this CPU (as cvdeploy sees it now) computes natively."""
    return native_precisions(cpu_flags())
