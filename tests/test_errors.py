"""Each bad input of the contract raises the documented error, naming the operator and what it expected."""

from __future__ import annotations

import pytest
import torch

import diffops as do

from .nets import TwoInputs, mlp

X = torch.randn(4, 3, dtype=torch.float64)

CALL_ERRORS = {
    "rank one input": (lambda: do.Laplacian(mlp(3))(torch.randn(3, dtype=torch.float64)), ValueError,
                       r"Laplacian: input 0 must have shape \(\*batch, d\).*got shape \(3,\)"),
    "integer dtype": (lambda: do.Gradient(mlp(3))(torch.ones(4, 3, dtype=torch.long)), TypeError,
                      r"Gradient: input 0 must have a floating dtype.*torch.int64"),
    "not a tensor": (lambda: do.Hessian(mlp(3))([[0.0, 1.0, 2.0]]), TypeError,
                     r"Hessian: input 0 must be a tensor of shape \(\*batch, d\), got list"),
    "wrt out of range": (lambda: do.Derivative(mlp(3), wrt=3)(X), ValueError,
                         r"Derivative: coordinate index 3 is out of range for d=3"),
    "mixed wrt out of range": (lambda: do.Derivatives(mlp(3), u_xy=(0, 5))(X), ValueError,
                               r"Derivatives: coordinate index 5 is out of range for d=3"),
    "combination out of range": (lambda: do.Derivatives(mlp(3), r={(0, 5): 1.0})(X), ValueError,
                                 r"Derivatives: coordinate index 5 is out of range for d=3"),
    "vector-valued gradient": (lambda: do.Gradient(mlp(3, 2))(X), ValueError,
                               r"Gradient: u must be scalar-valued.*shape \(2,\); use Jacobian"),
    "non-square divergence": (lambda: do.Divergence(mlp(3, 2))(X), ValueError,
                              r"Divergence: u must be a square field, with per-sample output \(3,\).*\(2,\)"),
    "curl of a 2-D field": (lambda: do.Curl(mlp(2, 2))(torch.randn(4, 2, dtype=torch.float64)), ValueError,
                            r"Curl: u must be a 3-D field"),
    "output reduces the batch": (lambda: do.Laplacian(lambda x: (x**2).sum())(X), ValueError,
                                 r"Laplacian: u's output must keep the input's batch dimensions \(4,\); got an "
                                 r"output of shape \(\)"),
    "output of other batch": (lambda: do.Jacobian(lambda x: x.T)(X), ValueError,
                              r"Jacobian: u's output must keep the input's batch dimensions \(4,\).*\(3, 4\)"),
    "u returns a tuple": (lambda: do.Laplacian(lambda x: (x, x))(X), TypeError,
                          r"Laplacian: u must return a tensor, got tuple"),
    "argnums beyond the inputs": (lambda: do.Laplacian(TwoInputs(2, 1), argnums=(0, 1))(X), TypeError,
                                  r"Laplacian: argnums=\(0, 1\) selects input 1, but 1 input\(s\) were given"),
    "inputs of different batch": (lambda: do.Laplacian(TwoInputs(3, 1))(X, torch.randn(5, 1)), ValueError,
                                  r"Laplacian: every input must share the batch shape \(4,\).*input 1 has shape"),
    "coords of other length": (lambda: do.Laplacian(mlp(3), coords=("x", "y"))(X), ValueError,
                               r"Laplacian: coords names 2 coordinates.*d=3"),
    "no inputs": (lambda: do.Laplacian(mlp(3))(), TypeError, r"Laplacian: expected the inputs of u"),
    "sum of different shapes": (lambda: (do.Laplacian(mlp(3)) + (lambda x: x[:, 0]))(X), ValueError,
                                r"cannot compute Δu \+ f: shapes \(4, 1\) and \(4,\) differ"),
    "derivatives in a sum": (lambda: (do.Derivatives(mlp(3), u=()) + 1.0)(X), TypeError,
                             r"returns a dict and cannot stand in an expression"),
    "u's own shape error": (lambda: do.Hessian(mlp(2), method="taylor")(X), RuntimeError,
                            r"^Hessian: u itself raised RuntimeError on inputs of shape \(4, 3\) float64: mat1 and "
                            r"mat2 shapes cannot be multiplied \(4x3 and 2x16\)$"),
    "u's own dtype error": (lambda: do.Laplacian(mlp(3))(X.float()), RuntimeError,
                            r"^Laplacian: u itself raised RuntimeError on inputs of shape \(4, 3\) float32: mat1 and "
                            r"mat2 must have the same dtype"),
    "u's own error, second input": (lambda: do.Jacobian(TwoInputs(3, 1))(X, torch.randn(4, 2)), RuntimeError,
                                    r"Jacobian: u itself raised RuntimeError on inputs of shape \(4, 3\) float64, "
                                    r"\(4, 2\) float32"),
}

CONSTRUCTION_ERRORS = {
    "negative order": (lambda: do.Derivative(mlp(3), wrt=0, order=-1), ValueError,
                       r"Derivative: order must be a non-negative int, got -1"),
    "non-integer order": (lambda: do.Derivative(mlp(3), wrt=0, order=1.5), TypeError,
                          r"Derivative: order must be a non-negative int, got 1.5"),
    "order disagrees with mixed wrt": (lambda: do.Derivative(mlp(3), wrt=(0, 1), order=3), ValueError,
                                       r"Derivative: order=3 disagrees with the mixed partial wrt=\(0, 1\)"),
    "negative wrt": (lambda: do.Derivative(mlp(3), wrt=-1), ValueError, r"Derivative: coordinate index must be >= 0"),
    "float wrt": (lambda: do.Derivative(mlp(3), wrt=1.0), TypeError, r"Derivative: a coordinate must be an int"),
    "unknown coordinate name": (lambda: do.Derivative(mlp(3), wrt="z", coords=("x", "y", "t")), ValueError,
                                r"Derivative: unknown coordinate 'z'; expected one of \('x', 'y', 't'\)"),
    "name without coords": (lambda: do.Derivative(mlp(3), wrt="t"), ValueError,
                            r"Derivative: coordinate 't' is a name, but no coords"),
    "duplicate coords": (lambda: do.Laplacian(mlp(3), coords=("x", "x", "y")), ValueError,
                         r"Laplacian: coords must be distinct"),
    "bad method": (lambda: do.Hessian(mlp(3), method="fast"), ValueError, r"Hessian: method must be one of"),
    "bad chunk size": (lambda: do.Hessian(mlp(3), chunk_size=0), ValueError, r"Hessian: chunk_size must be a positive"),
    "bad argnums": (lambda: do.Jacobian(mlp(3), argnums=(0, 0)), ValueError, r"Jacobian: argnums must be distinct"),
    "argnums not int": (lambda: do.Jacobian(mlp(3), argnums="x"), TypeError, r"Jacobian: argnums must be an int"),
    "u not callable": (lambda: do.Laplacian(3.0), TypeError, r"Laplacian: u must be an nn.Module or a callable"),
    "empty Derivatives": (lambda: do.Derivatives(mlp(3)), ValueError, r"Derivatives: name at least one derivative"),
    "empty combination": (lambda: do.Derivatives(mlp(3), r={}), ValueError,
                          r"Derivatives: a linear combination needs at least one term"),
    "tensor weight": (lambda: do.Derivatives(mlp(3), r={0: torch.tensor(1.0)}), TypeError,
                      r"Derivatives: the weight of 0 in a linear combination must be a finite real number.*learnable"),
    "infinite weight": (lambda: do.Derivatives(mlp(3), r={(0, 0): float("inf")}), TypeError,
                        r"Derivatives: the weight of \(0, 0\) in a linear combination must be a finite real"),
    "unnamed coordinate in a combination": (lambda: do.Derivatives(mlp(3), r={"t": 1.0}), ValueError,
                                            r"Derivatives: coordinate 't' is a name, but no coords"),
    "add a string": (lambda: do.Laplacian(mlp(3)) + "f", TypeError, r"cannot combine a DifferentialOperator with str"),
    "divide by a string": (lambda: do.Laplacian(mlp(3)) / "f", TypeError,
                           r"cannot combine a DifferentialOperator with str by '/'"),
    "divide by zero": (lambda: do.Laplacian(mlp(3)) / 0, ZeroDivisionError, r"cannot divide Δu by zero"),
}


@pytest.mark.parametrize("case", sorted(CALL_ERRORS))
def test_bad_call_raises(case):
    call, error, message = CALL_ERRORS[case]
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("case", sorted(CONSTRUCTION_ERRORS))
def test_bad_construction_raises(case):
    make, error, message = CONSTRUCTION_ERRORS[case]
    with pytest.raises(error, match=message):
        make()


def test_inference_mode_explains_the_fix():
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"Laplacian: derivatives need autograd.*"
                                               r"inference_mode=False"):
        do.Laplacian(mlp(3))(torch.randn(4, 3, dtype=torch.float64))


def test_custom_operator_without_forward_explains():
    class Residual(do.DifferentialOperator):
        pass

    with pytest.raises(NotImplementedError, match="Residual: a custom operator defines forward"):
        Residual(mlp(3))(X)
