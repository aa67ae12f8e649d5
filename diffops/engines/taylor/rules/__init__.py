"""The jet rules, one module a kind; importing this package registers them all in ``jet.RULES``.

* :mod:`.linear`: functions linear in their jet arguments (``F.linear``, reshapes,
  indexing, concatenation, sums);
* :mod:`.products`: products, quotients, powers and matrix products of jets;
* :mod:`.elementwise`: activations and other elementwise functions, from the ODEs they satisfy;
* :mod:`.binary`: elementwise functions of two tensors (atan2, hypot, maximum, logaddexp, lerp);
* :mod:`.piecewise`: piecewise-linear and piecewise-quadratic activations, clamp;
* :mod:`.reductions`: moments, norms, softmax, log-sum-exp and extrema along dimensions;
* :mod:`.linalg`: inverse, solve, determinant and its logarithms of square matrices;
* :mod:`.normalization`: layer, RMS, group and instance norm, batch norm in eval mode;
* :mod:`.attention`: scaled dot-product and multi-head attention;
* :mod:`.dropout`: dropout layers, the identity when off;
* :mod:`.recurrent`: the recurrent cells (RNN, GRU, LSTM) as compositions of the rules above.

The engine then imports the rules for stacked jets, which take over some of
these and hand every other case back: :mod:`.fused` (``Linear`` + activation
layers run as chains, their kernels replayed from :mod:`.schedules`) and
:mod:`.sums` (sums and products kept as a polynomial, products that share a
factor run as one).
"""

from . import (  # noqa: F401
    attention,
    binary,
    dropout,
    elementwise,
    linalg,
    linear,
    normalization,
    piecewise,
    products,
    recurrent,
    reductions,
)

__all__ = [
    "attention",
    "binary",
    "dropout",
    "elementwise",
    "linalg",
    "linear",
    "normalization",
    "piecewise",
    "products",
    "recurrent",
    "reductions",
]
