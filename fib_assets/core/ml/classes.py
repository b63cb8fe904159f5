"""Segmentation classes: COSEM / CellMap label ids and the combined classes built from them.

A training class is a name and the set of label ids it covers (``mito = {3, 4, 5}``). Label id
0 means "not annotated" in ground-truth crops: such voxels carry no loss. Names resolve through
the project's one class map, :data:`fib_assets.core.labels.COSEM_CLASS_MAP` (what ground-truth
import validates against), so a model's ``nucleus`` is the curators' ``nucleus``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fib_assets.core.labels import COSEM_CLASS_MAP, ClassMap
from fib_assets.core.labels import UNANNOTATED as UNANNOTATED  # re-exported

#: Combined classes of the COSEM / CellMap convention (name -> label ids), from the class map.
COMBINED_CLASSES: dict[str, tuple[int, ...]] = {
    name: tuple(sorted(ids)) for name, ids in COSEM_CLASS_MAP.combined.items()
}


@dataclass(frozen=True)
class ClassSpec:
    """One output channel: ``name`` and the label ids (1..255) that are foreground for it."""

    name: str
    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"class name must be an identifier-like string, got {self.name!r}")
        ids = tuple(sorted({int(i) for i in self.ids}))
        if not ids:
            raise ValueError(f"class {self.name!r} has no label ids")
        bad = [i for i in ids if not 1 <= i <= 255]
        if bad:
            raise ValueError(f"class {self.name!r}: label ids must be in 1..255, got {bad}")
        object.__setattr__(self, "ids", ids)

    def mask(self, labels: npt.NDArray[Any]) -> npt.NDArray[np.bool_]:
        """Foreground voxels of this class in a label array (any shape)."""
        return np.isin(labels, self.ids)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ids": list(self.ids)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClassSpec:
        return cls(str(d["name"]), tuple(int(i) for i in d["ids"]))


def resolve_class(
    entry: str | Mapping[str, Any], class_map: ClassMap = COSEM_CLASS_MAP
) -> ClassSpec:
    """A class from a name of ``class_map`` (an atomic class like ``mito_mem`` or a combined
    one like ``mito``), or from a one-item mapping ``{name: [ids]}`` / ``{name: id}``."""
    if isinstance(entry, str):
        try:
            atomic = class_map.ids_of(entry)
        except KeyError:
            known = sorted(class_map.names())
            raise ValueError(f"unknown class {entry!r}; known names: {', '.join(known)}") from None
        return ClassSpec(entry, tuple(sorted(atomic)))
    if isinstance(entry, Mapping) and len(entry) == 1:
        ((name, ids),) = entry.items()
        if isinstance(ids, int):
            ids = [ids]
        if not isinstance(ids, Sequence) or isinstance(ids, str):
            raise ValueError(f"class {name!r}: ids must be an int or a list of ints, got {ids!r}")
        return ClassSpec(str(name), tuple(int(i) for i in ids))
    raise ValueError(f"a class is a name or a one-item mapping {{name: [ids]}}, got {entry!r}")


def resolve_classes(entries: Sequence[str | Mapping[str, Any]]) -> tuple[ClassSpec, ...]:
    """Resolve a list of class entries; names must be unique."""
    if isinstance(entries, str) or not entries:
        raise ValueError(f"classes must be a non-empty list, got {entries!r}")
    specs = tuple(resolve_class(e) for e in entries)
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"class names must be unique, repeated: {dup}")
    return specs


def disjoint(specs: Sequence[ClassSpec]) -> bool:
    """Whether no label id belongs to two classes (required for a softmax / cross-entropy)."""
    seen: set[int] = set()
    for s in specs:
        if seen & set(s.ids):
            return False
        seen |= set(s.ids)
    return True


def class_index_map(labels: npt.NDArray[Any], specs: Sequence[ClassSpec]) -> npt.NDArray[np.int64]:
    """Cross-entropy targets: 0 background, ``k + 1`` for class ``k``, -1 where unannotated."""
    if not disjoint(specs):
        raise ValueError(
            "cross-entropy needs disjoint classes; these share label ids: "
            f"{[s.to_dict() for s in specs]}"
        )
    out = np.zeros(labels.shape, dtype=np.int64)
    for k, s in enumerate(specs):
        out[s.mask(labels)] = k + 1
    out[labels == UNANNOTATED] = -1
    return out
