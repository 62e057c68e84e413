"""Shared test configuration.

The Hypothesis profiles come first, so that they are loaded before any test
module defines a property; fixtures follow in their own section.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# --- Hypothesis profiles ----------------------------------------------------
#
# Choose with HYPOTHESIS_PROFILE=ci|dev (or pytest --hypothesis-profile=...).
# The default is "ci", so the plain test command (./scripts/test) stays fast
# and gives the same verdict on every run; use "dev" to search harder locally.

settings.register_profile(
    "ci",
    # Same examples on every run: a CI failure is reproducible, and never
    # a fluke that the next run hides.
    derandomize=True,
    max_examples=100,
    # Shared CI machines stall at random; a slow example is not a bug here.
    deadline=None,
    # HealthCheck.too_slow causes more trouble than good on loaded CI
    # machines, where data generation time says nothing about the code.
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=1000,
    deadline=None,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# --- Fixtures -----------------------------------------------------------------

from executor_fixtures import make_executor, shared_executor, variant  # noqa: E402,F401
