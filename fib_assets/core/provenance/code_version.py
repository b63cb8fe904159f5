"""Code versions derived from source text, so an asset's ``code_version`` changes with its code.

Dagster marks a partition stale (cause CODE) when the ``code_version`` of its definition differs
from the one recorded on its materialization. Hand-bumped version strings are forgotten; hashing
the source of the functions, classes and modules that produce an asset is not.
"""

from __future__ import annotations

import hashlib
import inspect

# 12 hex digits = 48 bits: collisions between two revisions of one asset are not a concern, and
# the string stays readable in the Dagster UI.
_LENGTH = 12


class CodeVersionError(TypeError):
    """An object whose source text cannot be read (a builtin, a C extension, a lambda in a REPL)."""


def _source(obj: object) -> str:
    target = inspect.unwrap(obj) if callable(obj) else obj
    try:
        return inspect.getsource(target)  # type: ignore[arg-type]
    except (OSError, TypeError) as exc:
        name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)
        raise CodeVersionError(
            f"code_version_of: cannot read the source of {name!r} ({type(obj).__name__}): {exc}"
        ) from exc


def _normalise(text: str) -> str:
    # trailing whitespace and line endings do not change behaviour; everything else (comments
    # included) does count, so a reviewer sees every version change as a source diff
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").splitlines()).strip()


def code_version_of(*objs: object) -> str:
    """A short (12 hex) sha256 of the source text of ``objs`` (functions, methods, classes or
    modules, in the order given). Decorated functions are unwrapped (``__wrapped__``) first.

    Raises CodeVersionError naming the object when its source is unavailable.
    """
    if not objs:
        raise CodeVersionError("code_version_of: give at least one function, class or module")
    h = hashlib.sha256()
    for obj in objs:
        h.update(_normalise(_source(obj)).encode())
        h.update(b"\0")
    return h.hexdigest()[:_LENGTH]
