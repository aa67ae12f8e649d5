"""The Taylor-mode engine (``method="taylor"``): truncated Taylor series propagated forward.

* :mod:`.jet`: the ``Jet`` type and the dispatch of torch functions to rules;
* :mod:`.rules`: the jet rules, split by kind;
* :mod:`.interpolation`: mixed partials from univariate jets along shared directions;
* :mod:`.engine`: the engine itself, what each request reads off the jets.
"""

from .engine import TaylorEngine, propagate, requested_partials
from .interpolation import interpolate

__all__ = ["TaylorEngine", "interpolate", "propagate", "requested_partials"]
