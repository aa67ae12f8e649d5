"""Jet rules of the recurrent cells (``nn.RNNCell``, ``nn.GRUCell``, ``nn.LSTMCell``), as the compositions
PyTorch documents for them: ``F.linear`` of the input and of the state, then the gates.

Either may be a jet: the input, and the state after a first step (the first step's zero state is a plain
tensor).  Shapes as torch's cells: ``input: (N, I)``, states ``(N, H)``, weights ``(G H, I)`` and ``(G H, H)``
for ``G`` gates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..jet import rule


def _gates(input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any, b_hh: Any) -> Any:
    return F.linear(input, w_ih, b_ih) + F.linear(hx, w_hh, b_hh)


@rule(torch.rnn_tanh_cell)
def rnn_tanh_cell(func: Callable, input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    return torch.tanh(_gates(input, hx, w_ih, w_hh, b_ih, b_hh))


@rule(torch.rnn_relu_cell)
def rnn_relu_cell(func: Callable, input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    return torch.relu(_gates(input, hx, w_ih, w_hh, b_ih, b_hh))


@rule(torch.gru_cell)
def gru_cell(func: Callable, input: Any, hx: Any, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None) -> Any:
    """``n + z (h - n)`` with ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``: the reset gate ``r`` scales the
    state's term alone, so the two products are kept apart."""
    reset_in, update_in, new_in = F.linear(input, w_ih, b_ih).chunk(3, -1)
    reset_h, update_h, new_h = F.linear(hx, w_hh, b_hh).chunk(3, -1)
    reset, update = torch.sigmoid(reset_in + reset_h), torch.sigmoid(update_in + update_h)
    new = torch.tanh(new_in + reset * new_h)
    return new + update * (hx - new)


@rule(torch.lstm_cell)
def lstm_cell(
    func: Callable, input: Any, hx: tuple, w_ih: Any, w_hh: Any, b_ih: Any = None, b_hh: Any = None
) -> tuple[Any, Any]:
    """``(o tanh(c'), c')`` with ``c' = f c + i g``, the gates ``i, f, g, o`` in torch's order."""
    h, c = hx
    in_gate, forget_gate, cell_gate, out_gate = _gates(input, h, w_ih, w_hh, b_ih, b_hh).chunk(4, -1)
    cell = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
    return torch.sigmoid(out_gate) * torch.tanh(cell), cell
