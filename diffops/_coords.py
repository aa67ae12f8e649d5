"""Coordinate names and multi-indices: ``wrt="t"`` or ``(0, 0, 1)`` -> sorted index tuples."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from .engines.base import Combination

MultiIndexSpec = Any  # int | str | tuple of int/str


def check_coords(name: str, coords: Any) -> tuple[str, ...] | None:
    if coords is None:
        return None
    if isinstance(coords, str) or not isinstance(coords, Sequence):
        raise TypeError(f"{name}: coords must be a tuple of coordinate names such as ('x', 't'), got {coords!r}")
    coords = tuple(coords)
    if not all(isinstance(c, str) and c for c in coords) or len(set(coords)) != len(coords):
        raise ValueError(f"{name}: coords must be distinct non-empty strings, got {coords!r}")
    return coords


def coordinate(name: str, item: Any, coords: tuple[str, ...] | None) -> int:
    """One coordinate as an index >= 0 (upper bound checked later, when d is known)."""
    if isinstance(item, str):
        if coords is None:
            raise ValueError(f"{name}: coordinate {item!r} is a name, but no coords=(...) were given to name them")
        if item not in coords:
            raise ValueError(f"{name}: unknown coordinate {item!r}; expected one of {coords}")
        return coords.index(item)
    if isinstance(item, bool) or not isinstance(item, int):
        raise TypeError(f"{name}: a coordinate must be an int index or a name, got {item!r}")
    if item < 0:
        raise ValueError(f"{name}: coordinate index must be >= 0, got {item}")
    return item


def multi_index(name: str, spec: MultiIndexSpec, coords: tuple[str, ...] | None) -> tuple[int, ...]:
    """``(0, 0, 1)``, ``("x", "x", "t")``, ``1`` or ``"t"`` -> sorted tuple of indices."""
    items = spec if isinstance(spec, (tuple, list)) else (spec,)
    return tuple(sorted(coordinate(name, item, coords) for item in items))


def linear_combination(name: str, spec: Mapping[Any, Any], coords: tuple[str, ...] | None) -> Combination:
    """``{multi-index: weight}`` -> a :class:`Combination`, e.g. ``{"t": 1.0, ("x", "x"): -0.01}``.

    Weights are real Python numbers (constants: a learnable coefficient multiplies
    a partial outside); multi-indices naming the same partial add their weights.
    """
    if isinstance(spec, Combination):  # validated before
        return spec
    if not spec:
        raise ValueError(f"{name}: a linear combination needs at least one term, e.g. {{'t': 1.0, ('x', 'x'): -0.1}}")
    weights: dict[tuple[int, ...], float] = {}
    for key, weight in spec.items():
        # Compiled with dynamic=True, a float read from an attribute arrives symbolic, which neither
        # math.isfinite nor the plan's cache can read; __float__ (not float()) specialises the graph on it.
        value = weight.__float__() if isinstance(weight, numbers.Real) and not isinstance(weight, bool) else None
        if value is None or not math.isfinite(value):
            raise TypeError(
                f"{name}: the weight of {key!r} in a linear combination must be a finite real number, got {weight!r} "
                "(for a learnable coefficient, ask for the partial and multiply it)"
            )
        index = multi_index(name, key, coords)
        weights[index] = weights.get(index, 0.0) + value
    return Combination.of(weights)


def derivative_spec(
    name: str, spec: Mapping[str, Any] | None, named: Mapping[str, Any], coords: tuple[str, ...] | None
) -> dict[str, tuple[int, ...] | Combination]:
    """``{name: multi-index or combination}`` from a dict and keywords.

    ``u_xt=("x", "t")`` -> ``{"u_xt": (0, 1)}``; a mapping of multi-indices to
    weights, ``r={"t": 1.0, ("x", "x"): -0.01}``, names their linear combination.
    """
    if spec is not None and not isinstance(spec, Mapping):
        raise TypeError(f"{name}: the derivatives must be given as a dict name -> multi-index, got {spec!r}")
    wanted = dict(spec or {})
    clash = set(wanted) & set(named)
    if clash:
        raise ValueError(f"{name}: derivative names {sorted(clash)} are given twice")
    wanted.update(named)
    if not wanted:
        raise ValueError(f"{name}: name at least one derivative, e.g. u_x=(0,)")
    return {
        key: linear_combination(name, value, coords) if isinstance(value, (Mapping, Combination))
        else multi_index(name, value, coords)
        for key, value in wanted.items()
    }  # fmt: skip


def check_range(name: str, index: tuple[int, ...], d: int, coords: tuple[str, ...] | None) -> None:
    if coords is not None and len(coords) != d:
        raise ValueError(f"{name}: coords names {len(coords)} coordinates {coords}, but the input has d={d}")
    if index and max(index) >= d:
        raise ValueError(f"{name}: coordinate index {max(index)} is out of range for d={d} coordinates (0..{d - 1})")


_SUBSCRIPTS = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def coordinate_name(index: int, coords: tuple[str, ...] | None) -> str:
    return coords[index] if coords is not None and index < len(coords) else f"x{index}".translate(_SUBSCRIPTS)


def combination_symbol(combination: Combination, coords: tuple[str, ...] | None) -> str:
    """``((1,), 1.0), ((0, 0), -0.5)`` -> ``∂u/∂t - 0.5·∂²u/∂x²``."""
    parts = []
    for index, weight in combination.terms:
        symbol = partial_symbol(index, coords)
        magnitude = "" if abs(weight) == 1 else f"{abs(weight):g}·"
        sign = ("-" if weight < 0 else "") if not parts else (" - " if weight < 0 else " + ")
        parts.append(f"{sign}{magnitude}{symbol}")
    return "".join(parts) or "0"


def partial_symbol(index: tuple[int, ...], coords: tuple[str, ...] | None, target: str = "u") -> str:
    """``(0, 0, 1)`` -> ``∂³u/∂x₀²∂x₁``."""
    if not index:
        return target
    power = lambda k: str(k).translate(_SUPERSCRIPTS) if k > 1 else ""  # noqa: E731
    denominator = "".join(
        f"∂{coordinate_name(i, coords)}{power(index.count(i))}" for i in sorted(set(index))
    )
    return f"∂{power(len(index))}{target}/{denominator}"
