"""The Taylor-mode engine (``method="taylor"``): truncated Taylor series propagated forward.

* :mod:`.jet`: the ``Jet`` type and the dispatch of torch functions to rules;
* :mod:`.rules`: the jet rules, split by kind;
* :mod:`.interpolation`: mixed partials from univariate jets along shared directions;
* :mod:`.folding`: a combination's terms folded into top coefficients, or one collapsed jet;
* :mod:`.stacked`: jets in one tensor, each direction to its own order (the fused layers' input);
* :mod:`.collapsed`: the collapsed jet under ``torch.compile``, stored features first;
* :mod:`.workspace`: memory the eager layers keep from one call to the next;
* :mod:`.engine`: the engine itself, what each request reads off the jets.
"""

from .engine import TaylorEngine, propagate, requested_partials
from .interpolation import interpolate

__all__ = ["TaylorEngine", "interpolate", "propagate", "requested_partials"]
