"""Fixity: sha256 manifests of source files, hashed in bounded memory whatever their size."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_BUF = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def manifest_lines(entries: Iterable[tuple[str, str]]) -> str:
    """BagIt/sha256sum-style manifest text: ``<sha256>  <relative path>`` per line, sorted."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries))


def manifest_digest(entries: Iterable[tuple[str, str]]) -> str:
    """Content-derived identity of a set of files: sha256 of the sorted manifest text."""
    return hashlib.sha256(manifest_lines(entries).encode()).hexdigest()


@dataclass(frozen=True)
class FixityMismatch:
    name: str
    expected: str
    actual: str | None  # None when the file is missing


def verify_manifest(root: Path, manifest_text: str) -> list[FixityMismatch]:
    """Re-hash every file listed in a manifest under ``root``; return the mismatches."""
    problems: list[FixityMismatch] = []
    for line in manifest_text.splitlines():
        if not line.strip():
            continue
        digest, name = line.split("  ", 1)
        path = root / name
        actual = sha256_file(path) if path.exists() else None
        if actual != digest:
            problems.append(FixityMismatch(name, digest, actual))
    return problems
