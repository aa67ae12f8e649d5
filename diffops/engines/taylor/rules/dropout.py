"""Jet rules of the dropout layers: the identity when they are off (eval mode, or ``p = 0``).

Dropout that is on multiplies by a random mask, a different function at every
call, so it is refused rather than differentiated.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F

from ..jet import Jet, rule, unsupported

DROPOUTS = (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout)


@rule(*DROPOUTS)
def dropout(func: Callable, x: Jet, p: float = 0.5, training: bool = True, inplace: bool = False) -> Jet:
    if training and p > 0:
        raise unsupported(func, f" in training mode with p={p} (a random mask); use eval() or p=0")
    return x
