"""Shared test fixtures. Precision-sensitive tests request ``x64``."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def x64():
    """Run the test body with 64-bit floats enabled (and restore the default afterwards)."""
    with jax.enable_x64(True):
        yield
