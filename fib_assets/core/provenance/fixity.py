"""Fixity: sha256 manifests of source files, hashed in bounded memory whatever their size.

Manifests and the files they list may be local paths or ``s3://`` objects
(:mod:`fib_assets.core.storage`): objects are hashed from a stream of their bytes, never loaded
whole and never downloaded to disk.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fib_assets.core import storage
from fib_assets.core.provenance.audit import FixityProblem, FixityResult

_BUF = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_BUF):
            h.update(chunk)
    return h.hexdigest()


def sha256_of(location: str | os.PathLike[str]) -> str:
    """sha256 of a local file or of one object's bytes (streamed)."""
    if not storage.is_remote(location):
        return sha256_file(Path(location))
    return storage.hash_location(location)["sha256"]


def manifest_lines(entries: Iterable[tuple[str, str]]) -> str:
    """BagIt/sha256sum-style manifest text: ``<sha256>  <relative path>`` per line, sorted."""
    return "".join(f"{digest}  {name}\n" for name, digest in sorted(entries))


def manifest_digest(entries: Iterable[tuple[str, str]]) -> str:
    """Content-derived identity of a set of files: sha256 of the sorted manifest text."""
    return hashlib.sha256(manifest_lines(entries).encode()).hexdigest()


def parse_manifest(text: str) -> list[tuple[str, str]]:
    """``[(relative name, digest)]`` of manifest text (``<digest>  <name>`` per line)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split("  ", 1)
            out.append((name, digest))
    return out


@dataclass(frozen=True)
class FixityMismatch:
    name: str
    expected: str
    actual: str | None  # None when the file is missing


def verify_manifest(root: str | os.PathLike[str], manifest_text: str) -> list[FixityMismatch]:
    """Re-hash every file listed in a manifest under ``root`` (a folder or an ``s3://``
    prefix); return the mismatches."""
    problems: list[FixityMismatch] = []
    for name, digest in parse_manifest(manifest_text):
        location = storage.join(root, name)
        try:
            actual: str | None = sha256_of(location)
        except FileNotFoundError:
            actual = None
        if actual != digest:
            problems.append(FixityMismatch(name, digest, actual))
    return problems


def verify_sources(
    manifest: str, source: str, *, expected_manifest_sha256: str | None, verify: bool = True
) -> FixityResult:
    """Re-verify source files against their sha256 manifest: the manifest (a file or an
    object, e.g. raw_acquisition's on an ``s3://`` root) against the sha256 recorded for it,
    and — when ``verify`` — every file it lists under ``source`` (re-hashed, streamed)."""
    expected = expected_manifest_sha256 or None
    try:
        data = storage.read_bytes(manifest)
    except FileNotFoundError:
        return FixityResult(
            str(source),
            str(manifest),
            0,
            error=f"manifest {manifest} is missing",
            manifest_expected_sha256=expected,
        )
    text = data.decode()
    n = len(parse_manifest(text))
    problems: tuple[FixityProblem, ...] = ()
    if verify:
        problems = tuple(
            FixityProblem(m.name, storage.join(source, m.name), m.expected, m.actual)
            for m in verify_manifest(source, text)
        )
    return FixityResult(
        str(source),
        str(manifest),
        n,
        problems,
        manifest_expected_sha256=expected,
        manifest_actual_sha256=hashlib.sha256(data).hexdigest(),
    )
