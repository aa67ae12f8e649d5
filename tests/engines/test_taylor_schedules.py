"""The eager series and its backward (schedules of kernels) against the plain ops the compiler and torch.func run."""

from __future__ import annotations

import pytest
import torch

from diffops.engines.taylor.rules import fused
from diffops.engines.taylor.rules.schedules import Builder
from diffops.engines.taylor.rules.traced import series_grad
from diffops.engines.taylor.stacked import split_slots

# counts R_1 >= R_2 >= ..; more than eight directions in all: ga_0 through a buffer and a sum
REQUESTS = [(1,), (3,), (1, 1), (2, 1), (3, 3), (3, 2, 1), (1, 1, 1, 1), (2, 2, 1, 1), (5, 5), (1,) * 10, (4, 3, 2)]


def _stack(counts: tuple, degree: int, features: int = 5, samples: int = 6) -> torch.Tensor:
    return torch.randn(1 + sum(counts[:degree]), samples, features, dtype=torch.float64)


@pytest.mark.parametrize("name", list(fused.ACTIVATIONS))
@pytest.mark.parametrize("counts", REQUESTS)
def test_the_eager_series_is_the_plain_series(name: str, counts: tuple) -> None:
    activation, order = fused.ACTIVATIONS[name], len(counts)
    for degree in range(1, order + 1):
        mapped = _stack(counts, degree)
        y, z = fused.series(activation, split_slots(mapped, counts, degree), counts, degree)
        shape = (1 + sum(counts), *mapped.shape[1:])
        out, z_out = mapped.new_empty(shape), mapped.new_empty(shape)
        fused.series_into(activation, mapped.clone(), mapped[0].clone(), counts, degree, out, z_out)
        for expected, actual in zip(y + z, split_slots(out, counts, order) + split_slots(z_out, counts, order)):
            torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("counts", REQUESTS)
def test_the_eager_series_backward_is_its_functional_form(counts: tuple) -> None:
    order = len(counts)
    for degree in range(order + 1):
        g, z = _stack(counts, order), _stack(counts, order)
        grad_mapped = g.new_full((1 + sum(counts[:degree]), *g.shape[1:]), float("nan"))
        ga0 = fused._series_backward(g, z, counts, (degree, order, order), grad_mapped)
        expected = series_grad(split_slots(g, counts, order), split_slots(z, counts, order), counts, degree)
        assert ga0.data_ptr() == grad_mapped.data_ptr()
        for actual, wanted in zip(split_slots(grad_mapped, counts, degree), expected, strict=True):
            torch.testing.assert_close(actual, wanted, rtol=1e-12, atol=1e-12)


def test_a_single_slot_is_read_sample_shaped_and_a_sum_needs_two() -> None:
    build = Builder(("a",), (1, 1))
    assert build.coefficient(("a", 2, 1)) == (0, 2, 0)
    assert build.slots("a", 1, 2) == (0, 1, 2)
    with pytest.raises(AssertionError):
        build.sum_directions(build.coefficient(("a", 0, 0)), build.slots("a", 1, 1))
