"""Hypothesis profile: no per-example deadline (first calls include jit), CI-sized budget.

Select another profile with ``HYPOTHESIS_PROFILE=thorough pytest ...``.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=20, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _share_compiled_programs() -> None:
    """One persistent XLA compilation cache per test run, shared by the xdist workers and
    the CLI subprocesses they start (which inherit the environment): many tests compile
    the same program (same HLO, same devices) in different processes, and compiling is
    most of the suite's time. A fresh directory per run, so no result depends on an earlier
    run; set ``DICP_TEST_XLA_CACHE=0`` to compile everything afresh."""
    if (os.environ.get("DICP_TEST_XLA_CACHE", "1") == "0"
            or "JAX_COMPILATION_CACHE_DIR" in os.environ):
        return
    import tempfile

    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                           f"dicp-test-xla-{run}")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"


_share_compiled_programs()
