"""Hypothesis profile: no per-example deadline (first calls include jit), CI-sized budget.

Select another profile with ``HYPOTHESIS_PROFILE=thorough pytest ...``.
"""

import os

from hypothesis import settings

settings.register_profile("ci", deadline=None, max_examples=20, print_blob=True)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
