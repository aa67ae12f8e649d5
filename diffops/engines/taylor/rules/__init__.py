"""The jet rules, one module a kind; importing this package registers them all in ``jet.RULES``.

* :mod:`.linear`: functions linear in their jet arguments (``F.linear``, reshapes,
  indexing, concatenation, sums);
* :mod:`.products`: products, quotients, powers and matrix products of jets;
* :mod:`.elementwise`: activations and other elementwise functions, from the ODEs they satisfy.
"""

from . import elementwise, linear, products  # noqa: F401

__all__ = ["elementwise", "linear", "products"]
