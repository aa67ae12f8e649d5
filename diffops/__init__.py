"""diffops: derivatives of a network with respect to its inputs, as trainable modules.

    import diffops as do
    lap = do.Laplacian(u)                 # u: any nn.Module, x: (B, d)
    loss = ((lap(x) + f(x)) ** 2).mean()  # differentiable w.r.t. u's parameters
"""

from .operator import DifferentialOperator
from .operators import Curl, Derivative, Derivatives, Divergence, Gradient, Hessian, Jacobian, Laplacian

__version__ = "0.1.0"

__all__ = [
    "Curl",
    "Derivative",
    "Derivatives",
    "DifferentialOperator",
    "Divergence",
    "Gradient",
    "Hessian",
    "Jacobian",
    "Laplacian",
]
