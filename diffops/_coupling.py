"""Whether ``u`` couples the samples of its batch, found once per network by two backward passes.

The engines see ``fn: (N, d) -> (N, *out)`` and take its rows to be independent
samples (:mod:`.engines.base`).  A network whose output at one row depends on
the input at another breaks that: a mean, maximum or normalisation over the
batch dimension, ``BatchNorm`` in training mode, a roll along the batch.  Such
a network has no derivative per sample, and the engines disagree on it:

* nested autograd differentiates the summed output, ``d/dx_i sum_j u_j``, as
  ``torch.autograd.grad(u(x).sum(), x)`` does; that is the reference's
  convention, and the one users of nested autograd already get;
* Taylor mode moves every row along its direction at once, ``sum_j du_i/dx_j``;
* torch.func differentiates ``u`` on each row alone, a batch of one.

So the engines that read rows apart (``Engine.per_sample``) refuse such a
network and ``auto`` moves on to nested autograd, as for ``BatchNorm`` in
training mode.  The probe: with random output weights on the even rows only,
the gradient of the weighted output with respect to the input is exactly zero
on the odd rows of a network that keeps its rows apart (each odd row's
output is multiplied by an exact zero), and nonzero where an even row's output
reads an odd row's input; then the same with the roles swapped.  Random weights
keep a coupling from cancelling in the sum (a normalised output sums to zero).
Non-finite entries are not counted: ``0 * inf`` in a row that keeps to itself
is NaN, not a coupling.
"""

from __future__ import annotations

import weakref

import torch

from ._inputs import DEVICE_ERRORS, Rows, flatten_inputs
from ._state import UNDECIDED, remembered

PROBE_ROWS = 64  # a coupling over the batch shows on its first rows; more only costs time

# per network, per ``argnums``: the coupled input row found, or None; kept as long as the network lives
_FOUND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def coupled_row(rows: Rows, u: object) -> int | None:
    """An input row of ``rows.x`` whose value moves the output of another row of ``u``; None if there is none.

    Probed once per network (and ``argnums``) on its first ``PROBE_ROWS`` rows
    (under torch.compile, on inputs of its own: :func:`_probed_alone`); None too
    where it cannot be decided here (one row, a torch.func transform, a compiled
    ``u`` given an input that is not a tensor, an error of ``u``'s own, which the
    engine call raises).
    """
    # not peek_interpreter_stack(), which dynamo does not trace as None
    if rows.num_rows < 2 or torch._C._are_functorch_transforms_active():
        return None
    if torch.compiler.is_compiling():  # the inputs have no values here: probe on points of its own
        if not all(isinstance(a, torch.Tensor) for a in rows.args):
            return None
        described = tuple((tuple(_specialised(size) for size in a.shape[1:]), a.dtype) for a in rows.args)
        return _probed_alone(u, rows.argnums, described, rows.x.device)
    return _known(u, rows)


def _specialised(size: int) -> int:
    """``size`` as a Python int while dynamo traces, where ``dynamic=True`` makes every size symbolic.

    :func:`_probed_alone` takes constants only, and dynamo keeps ``int(size)``
    symbolic; a list of that length makes it guard on the value (the feature
    sizes, not the batch's: a graph is compiled again only if they change).
    """
    return len([0] * size)


def _known(u: object, rows: Rows) -> int | None:
    """:func:`coupled_row` from the cache, probing ``rows`` if ``u`` was not probed yet."""
    return remembered(_FOUND, u, rows.argnums, lambda: _probe(rows, u))


def _probed_alone(u: object, argnums: tuple[int, ...], described: tuple, device: torch.device) -> int | None:
    """:func:`coupled_row` on ``PROBE_ROWS`` inputs of its own: ``described`` holds each input's ``(shape, dtype)``.

    Floating inputs are drawn in ``[0, 1)``, others are zeros (an index, a label).
    Marked below as a constant result: torch.compile runs it at trace time, where
    the call's inputs have no values, so a step compiled before any eager call is
    checked too.  Whether ``u`` keeps its rows apart does not depend on the points.
    """
    generator = torch.Generator(device=device).manual_seed(0)
    inputs = tuple(
        torch.rand(PROBE_ROWS, *shape, generator=generator, dtype=dtype, device=device)
        if dtype.is_floating_point
        else torch.zeros(PROBE_ROWS, *shape, dtype=dtype, device=device)
        for shape, dtype in described
    )
    return _known(u, flatten_inputs("probe", inputs, argnums))


_probed_alone._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _probe(rows: Rows, u: object) -> int | None | object:
    """The coupled row, None for rows kept apart, :data:`UNDECIDED` where ``u`` raised."""
    n = min(rows.num_rows, PROBE_ROWS)
    probed = rows.probe(u, n, torch.enable_grad())
    if probed is UNDECIDED:
        return UNDECIDED
    x, out = probed
    if not (out.requires_grad and out.is_floating_point()):
        return None  # no path from the input to the output: nothing to couple
    flat = out.reshape(n, -1)
    even = (torch.arange(n, device=x.device) % 2 == 0)[:, None]
    generator = torch.Generator(device=x.device).manual_seed(0)
    weights = torch.randn(flat.shape, generator=generator, dtype=flat.dtype, device=flat.device)
    for weighted, other in ((even, ~even), (~even, even)):
        try:
            (grad,) = torch.autograd.grad(flat, x, weights * weighted, retain_graph=True, allow_unused=True)
        except DEVICE_ERRORS:
            raise
        except Exception:  # a backward that fails (u's own, or refused by torch): raised by the engine call
            return UNDECIDED
        if grad is None:
            return None
        moved = ((grad != 0) & grad.isfinite() & other).any(1).nonzero()
        if len(moved):
            return int(moved[0])
    return None


def coupling_message(engine: str, row: int) -> str:
    """Why ``engine`` refuses a network whose input row ``row`` moves other rows' outputs."""
    return (
        f"u couples the samples of its batch (the input of row {row} moves the output of another row, in the rows "
        "it was checked on: the first call's, or points of its own when compiled; a mean, maximum or "
        "normalisation over the batch dimension does this), so it has no derivative per sample; "
        f"method={engine!r} differentiates each sample alone, where nested autograd (method='autograd') differentiates "
        "the summed output as torch.autograd.grad(u(x).sum(), x) does"
    )
