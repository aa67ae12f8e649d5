"""Warnings as errors around compiled code, but for the one dynamo raises itself."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

# torch 2.13's dynamo instantiates every autograd.Function it traces (for its ctx), which torch itself deprecates;
# the warning is hidden by default, and says nothing about the code traced
DYNAMO_INSTANTIATES_FUNCTIONS = "<class 'torch.autograd.function.Function'> should not be instantiated"


@contextlib.contextmanager
def warnings_as_errors() -> Iterator[None]:
    """Every warning raised inside an error, but dynamo's own :data:`DYNAMO_INSTANTIATES_FUNCTIONS`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", DYNAMO_INSTANTIATES_FUNCTIONS, DeprecationWarning)
        yield
