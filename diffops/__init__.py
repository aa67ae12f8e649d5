"""diffops: derivatives of a network with respect to its inputs, as trainable modules.

    import diffops as do
    lap = do.Laplacian(u)                 # u: any nn.Module, x: (B, d)
    loss = ((lap(x) + f(x)) ** 2).mean()  # differentiable w.r.t. u's parameters
"""

from .operator import DifferentialOperator
from .operators import (
    Biharmonic,
    Curl,
    Derivative,
    Derivatives,
    DirectionalDerivative,
    Divergence,
    Gradient,
    Hessian,
    Jacobian,
    Laplacian,
)
from .parameter_jacobian import parameter_jacobian

__version__ = "0.2.0"

__all__ = [
    "Biharmonic",
    "Curl",
    "Derivative",
    "Derivatives",
    "DifferentialOperator",
    "DirectionalDerivative",
    "Divergence",
    "Gradient",
    "Hessian",
    "Jacobian",
    "Laplacian",
    "parameter_jacobian",
]
