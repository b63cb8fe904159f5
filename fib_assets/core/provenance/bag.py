"""BagIt packages for deposit: plan the payload, write it, bag it (sha256 + sha512), validate it.

Volumes of tens of TB cannot be bagged. :func:`plan_payload` describes which files go into the
payload and which stay where they are: a group (one asset partition) that fits the byte budget is
included whole; a group that does not is included as a *documented subset* (its small metadata
files: ``zarr.json``, ``attributes.json``, ``*.json``/``*.yaml``/``*.txt``/``*.parquet`` up to
``subset_file_max_bytes`` each) and every other file of it is listed with its size, sha256 and
location in ``external-locations-sha256.tsv`` inside the payload. BagIt's ``fetch.txt`` is not
used for those files: BagIt requires fetched files in the payload manifests, so a bag that
deliberately leaves them out could never validate.

Sources may be local files or ``s3://`` objects (:mod:`fib_assets.core.storage`): a bag is
always built in a local folder (on an object-store root, bounded scratch that is then
published), and :func:`validate_bag_at` re-verifies a published bag where it is — every object
streamed once through sha256 and sha512, nothing downloaded.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bagit

from fib_assets.core import storage
from fib_assets.core.blockwise import atomic_write_bytes
from fib_assets.core.provenance.fixity import sha256_file, sha256_of

CHECKSUMS = ("sha256", "sha512")
EXTERNAL_MANIFEST = "external-locations-sha256.tsv"
PAYLOAD_README = "README.md"
METADATA_NAMES = frozenset(
    {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata", "attributes.json"}
)
METADATA_SUFFIXES = frozenset(
    {".json", ".txt", ".yaml", ".yml", ".md", ".csv", ".tsv", ".xml", ".parquet"}
)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same bag always zips to the same bytes


class BagInvalid(ValueError):
    """A bag failed validation; the message names the bag and every offending file."""


@dataclass(frozen=True)
class PayloadFile:
    """One file of a deposit: where it is now and where it goes in the payload (posix path)."""

    source: str
    dest: str
    size: int
    sha256: str | None = None  # already known (e.g. from a fixity manifest)

    def __post_init__(self) -> None:
        parts = Path(self.dest).parts
        if Path(self.dest).is_absolute() or ".." in parts or not parts:
            raise ValueError(f"payload path {self.dest!r} must be relative and inside the payload")


@dataclass(frozen=True)
class PayloadGroup:
    """The files of one asset partition (or its source files), bagged together or not at all."""

    name: str
    files: tuple[PayloadFile, ...]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def collect_group(
    name: str,
    root: str | os.PathLike[str],
    dest_prefix: str,
    *,
    known_sha256: Mapping[str, str] | None = None,
) -> PayloadGroup:
    """A group of every file under ``root`` (a file or a folder; locally or an ``s3://`` object
    or prefix), placed under ``dest_prefix``.

    ``known_sha256`` maps paths relative to ``root`` to digests already recorded (fixity
    manifests), so external files need not be re-hashed.
    """
    known = known_sha256 or {}
    if storage.is_remote(root):
        url = storage.normalize(root)
        if storage.is_file(url):
            rel = storage.name(url)
            size = storage.list_files(url).get(rel, 0)
            return PayloadGroup(
                name, (PayloadFile(url, f"{dest_prefix}/{rel}", size, known.get(rel)),)
            )
        objects = storage.list_files(url)
        if not objects:
            raise FileNotFoundError(f"{name}: {url} does not exist (no object under it)")
        return PayloadGroup(
            name,
            tuple(
                PayloadFile(storage.join(url, rel), f"{dest_prefix}/{rel}", size, known.get(rel))
                for rel, size in sorted(objects.items())
            ),
        )
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{name}: {root} does not exist")
    if root.is_file():
        rel = root.name
        return PayloadGroup(
            name,
            (PayloadFile(str(root), f"{dest_prefix}/{rel}", root.stat().st_size, known.get(rel)),),
        )
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            files.append(
                PayloadFile(str(p), f"{dest_prefix}/{rel}", p.stat().st_size, known.get(rel))
            )
    return PayloadGroup(name, tuple(files))


def listed_group(
    name: str, root: str | os.PathLike[str], dest_prefix: str, entries: Iterable[tuple[str, str]]
) -> PayloadGroup:
    """A group of the files a sha256 manifest lists (``(relative name, sha256)``) under ``root``
    (a folder or an ``s3://`` prefix). A listed file that is missing raises FileNotFoundError
    naming it."""
    entries = list(entries)
    remote = storage.is_remote(root)
    sizes = storage.list_files(root) if remote and storage.exists(root) else {}
    files = []
    for rel, digest in entries:
        if remote:
            p = storage.join(root, rel)
            if rel not in sizes:
                raise FileNotFoundError(
                    f"{name}: source file {p} listed in its manifest is missing"
                )
            files.append(PayloadFile(p, f"{dest_prefix}/{rel}", sizes[rel], digest))
            continue
        lp = Path(root) / rel
        if not lp.is_file():
            raise FileNotFoundError(f"{name}: source file {lp} listed in its manifest is missing")
        files.append(PayloadFile(str(lp), f"{dest_prefix}/{rel}", lp.stat().st_size, digest))
    return PayloadGroup(name, tuple(files))


def _is_metadata(dest: str) -> bool:
    p = Path(dest)
    return p.name in METADATA_NAMES or p.suffix.lower() in METADATA_SUFFIXES


@dataclass(frozen=True)
class PayloadPlan:
    """What goes into the bag and what is only referenced; pure description, no I/O."""

    included: tuple[PayloadFile, ...]
    external: tuple[PayloadFile, ...]
    groups: dict[str, str] = field(default_factory=dict)  # group -> "whole" | "subset" | ...
    max_bytes: int = 0

    @property
    def included_bytes(self) -> int:
        return sum(f.size for f in self.included)

    @property
    def external_bytes(self) -> int:
        return sum(f.size for f in self.external)

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_bytes": self.max_bytes,
            "included_files": len(self.included),
            "included_bytes": self.included_bytes,
            "external_files": len(self.external),
            "external_bytes": self.external_bytes,
            "groups": dict(self.groups),
        }


def plan_payload(
    groups: Sequence[PayloadGroup], *, max_bytes: int, subset_file_max_bytes: int = 1 << 20
) -> PayloadPlan:
    """Include groups whole, in order, while they fit ``max_bytes`` (bytes); a group that does not
    fit contributes its small metadata files (each at most ``subset_file_max_bytes``) while the
    budget lasts, and everything else of it becomes an external location."""
    if max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    dests: set[str] = set()
    for g in groups:
        for f in g.files:
            if f.dest in dests:
                raise ValueError(f"two files go to the same payload path {f.dest!r}")
            dests.add(f.dest)
    budget = max_bytes
    included: list[PayloadFile] = []
    external: list[PayloadFile] = []
    status: dict[str, str] = {}
    for g in groups:
        if g.total_bytes <= budget:
            included.extend(g.files)
            budget -= g.total_bytes
            status[g.name] = f"whole: {len(g.files)} files, {g.total_bytes} bytes"
            continue
        n_in = n_out = 0
        for f in g.files:
            if _is_metadata(f.dest) and f.size <= subset_file_max_bytes and f.size <= budget:
                included.append(f)
                budget -= f.size
                n_in += 1
            else:
                external.append(f)
                n_out += 1
        status[g.name] = (
            f"subset: {g.total_bytes} bytes exceed the payload budget; {n_in} metadata files "
            f"included, {n_out} files listed in {EXTERNAL_MANIFEST} with sha256 and location"
        )
    return PayloadPlan(tuple(included), tuple(external), status, max_bytes)


@dataclass(frozen=True)
class ExternalLocation:
    dest: str  # where the file would be in the payload
    location: str  # file:// URI (or s3:// …) of the file as stored now
    size: int
    sha256: str


def _uri(path: str) -> str:
    if "://" in path:
        return path
    return Path(path).resolve().as_uri()


def write_payload(plan: PayloadPlan, payload: Path) -> list[ExternalLocation]:
    """Copy the included files into ``payload`` (a folder that becomes the bag's payload), hash
    the external ones whose sha256 is not yet known (streaming, bounded memory) and write the
    external-locations manifest. Copies, never links: a later edit of the source must not
    change the deposit silently."""
    payload = Path(payload)
    for f in plan.included:
        # streamed from a local file or an object (no whole-file buffers)
        storage.copy_to_local(f.source, payload / f.dest)
    externals = [
        ExternalLocation(f.dest, _uri(f.source), f.size, f.sha256 or sha256_of(f.source))
        for f in plan.external
    ]
    if externals:
        lines = ["# sha256\tsize_bytes\tlocation\tpayload_path\n"]
        lines += [f"{e.sha256}\t{e.size}\t{e.location}\t{e.dest}\n" for e in externals]
        atomic_write_bytes(payload / EXTERNAL_MANIFEST, "".join(lines).encode())
    return externals


def read_external_manifest(path: Path) -> list[ExternalLocation]:
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        sha, size, location, dest = line.split("\t")
        out.append(ExternalLocation(dest, location, int(size), sha))
    return out


def make_package_bag(directory: Path, bag_info: Mapping[str, str | Sequence[str]]) -> Path:
    """Turn ``directory`` (holding the payload) into a BagIt bag in place, with sha256 and
    sha512 payload and tag manifests; return its path. bagit moves the payload into ``data/``."""
    info = {k: (list(v) if not isinstance(v, str) else v) for k, v in bag_info.items()}
    bagit.make_bag(str(directory), info, checksums=list(CHECKSUMS))
    return Path(directory)


def _name_problems(bag: Any) -> list[str]:
    """Every missing, unexpected or altered payload file of ``bag`` (sha256), for messages when
    bagit stops early (its Payload-Oxum count/size check names no file)."""
    missing, unexpected = bag.compare_manifests_with_fs()
    out = [f"{p}: listed in the manifest but missing" for p in sorted(missing)]
    out += [f"{p}: present but not in any manifest" for p in sorted(unexpected)]
    for rel, digests in sorted(bag.payload_entries().items()):
        f = Path(bag.path) / rel
        if rel in missing or not f.is_file() or "sha256" not in digests:
            continue
        found = sha256_file(f)
        if found != digests["sha256"]:
            out.append(f"{rel}: sha256 is {found}, manifest records {digests['sha256']}")
    return out


def validate_bag(path: Path) -> dict[str, Any]:
    """bagit's full validation (structure, completeness, every checksum of every algorithm);
    raise BagInvalid naming each offending file. Returns a summary on success."""
    path = Path(path)
    try:
        bag = bagit.Bag(str(path))
    except bagit.BagError as exc:
        raise BagInvalid(f"bag {path} is invalid: {exc}") from exc
    try:
        bag.validate(fast=False, completeness_only=False)
    except bagit.BagValidationError as exc:
        details = []
        for d in getattr(exc, "details", None) or []:
            if isinstance(d, bagit.ChecksumMismatch):
                details.append(
                    f"{d.path}: {d.algorithm} is {d.found}, manifest records {d.expected}"
                )
            elif isinstance(d, bagit.FileMissing):
                details.append(f"{d.path}: listed in the manifest but missing")
            elif isinstance(d, bagit.UnexpectedFile):
                details.append(f"{d.path}: present but not in any manifest")
            else:
                details.append(str(d))
        if not details:
            details = [str(exc), *_name_problems(bag)]
        raise BagInvalid(f"bag {path} is invalid: {'; '.join(details)}") from exc
    except bagit.BagError as exc:
        raise BagInvalid(f"bag {path} is invalid: {exc}") from exc
    payload_entries = dict(bag.payload_entries())
    return {
        "path": str(path),
        "algorithms": list(bag.algorithms),
        "payload_files": len(payload_entries),
        "payload_oxum": str(bag.info.get("Payload-Oxum", "")),
        "bag_info": {k: v for k, v in bag.info.items()},
    }


def bag_digest(path: str | os.PathLike[str]) -> str:
    """Content identity of a bag (a local folder or a published ``s3://`` bag): sha256 of its
    sha256 tag manifest (which covers the payload manifests and bag-info.txt)."""
    return sha256_of(storage.join(path, "tagmanifest-sha256.txt"))


def validate_bag_at(location: str | os.PathLike[str]) -> dict[str, Any]:
    """Full validation of the bag at ``location``: :func:`validate_bag` for a local folder;
    for an ``s3://`` bag, :func:`validate_published_bag` (objects re-hashed where they are)."""
    if storage.is_remote(location):
        return validate_published_bag(str(location))
    return validate_bag(Path(location))


def _tag_fields(text: str) -> dict[str, str | list[str]]:
    """``Label: value`` lines of bagit.txt / bag-info.txt (continuations folded; repeated
    labels become lists), as bagit reads them."""
    out: dict[str, str | list[str]] = {}
    label: str | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0] in " \t" and label is not None:
            prev = out[label]
            if isinstance(prev, list):
                prev[-1] += " " + line.strip()
            else:
                out[label] = prev + " " + line.strip()
            continue
        label, _, value = line.partition(":")
        label, value = label.strip(), value.strip()
        if label in out:
            prev = out[label]
            out[label] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[label] = value
    return out


def _manifest_entries(text: str, where: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.strip().split(None, 1)
        if len(parts) != 2:
            raise BagInvalid(f"{where}: malformed manifest line {line!r}")
        digest, rel = parts
        # bagit percent-encodes only CR, LF and '%' in manifest paths
        rel = rel.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")
        entries[rel] = digest.lower()
    return entries


def validate_published_bag(url: str) -> dict[str, Any]:
    """bagit's full validation of a bag published on an object store, without downloading it:
    the completion marker must exist (no half-published bag is valid); every payload and tag
    file listed in the ``manifest-<alg>.txt`` / ``tagmanifest-<alg>.txt`` objects is streamed
    once through all their algorithms (sha256 and sha512) and compared; missing and
    unexpected payload objects and the Payload-Oxum are checked; every object's sha256 is also
    compared with the completion marker's record. Raises BagInvalid naming the bag and each
    offending object."""
    url = storage.normalize(url)
    if not storage.is_complete(url):
        raise BagInvalid(
            f"bag {url} is invalid: no completion marker {storage.marker_url(url)} "
            "(absent, or its publication was interrupted)"
        )
    marker = storage.read_json(storage.marker_url(url))
    recorded: dict[str, dict[str, Any]] = marker.get("files") or {}
    objects = storage.list_files(url)
    if "bagit.txt" not in objects:
        raise BagInvalid(f"bag {url} is invalid: no bagit.txt")
    payload_manifests: dict[str, dict[str, str]] = {}
    tag_manifests: dict[str, dict[str, str]] = {}
    for rel in objects:
        for prefix, into in (("manifest-", payload_manifests), ("tagmanifest-", tag_manifests)):
            if "/" not in rel and rel.startswith(prefix) and rel.endswith(".txt"):
                alg = rel[len(prefix) : -len(".txt")]
                into[alg] = _manifest_entries(
                    storage.read_text(storage.join(url, rel)), f"{url}/{rel}"
                )
    if not payload_manifests:
        raise BagInvalid(f"bag {url} is invalid: no payload manifest (manifest-<alg>.txt)")
    problems: list[str] = []
    expected: dict[str, dict[str, str]] = {}  # rel -> {alg: digest}
    for manifests in (payload_manifests, tag_manifests):
        for alg, entries in manifests.items():
            for rel, digest in entries.items():
                expected.setdefault(rel, {})[alg] = digest
    payload_listed = {rel for entries in payload_manifests.values() for rel in entries}
    for alg, entries in payload_manifests.items():
        for rel in sorted(payload_listed - set(entries)):
            problems.append(f"{rel}: not in manifest-{alg}.txt (every manifest must list it)")
    for rel in sorted(set(expected) - set(objects)):
        problems.append(f"{rel}: listed in the manifest but missing")
    payload_objects = {rel for rel in objects if rel.startswith("data/")}
    for rel in sorted(payload_objects - payload_listed):
        problems.append(f"{rel}: present but not in any manifest")
    for rel in sorted(set(expected) & set(objects)):
        algs = tuple(sorted(set(expected[rel]) | {"sha256"}))
        found = storage.hash_location(storage.join(url, rel), algs)
        for alg, digest in sorted(expected[rel].items()):
            if found[alg] != digest:
                problems.append(f"{rel}: {alg} is {found[alg]}, manifest records {digest}")
        want = recorded.get(rel, {}).get("sha256")
        if want is not None and found["sha256"] != want:
            problems.append(
                f"{rel}: sha256 is {found['sha256']}, its completion marker records {want}"
            )
    info = _tag_fields(storage.read_text(storage.join(url, "bag-info.txt"))) if (
        "bag-info.txt" in objects
    ) else {}  # fmt: skip
    oxum = info.get("Payload-Oxum")
    if isinstance(oxum, str) and oxum:
        n_bytes = sum(objects[rel] for rel in payload_objects)
        if oxum != f"{n_bytes}.{len(payload_objects)}":
            problems.append(
                f"Payload-Oxum {oxum} but the payload holds {len(payload_objects)} objects, "
                f"{n_bytes} bytes"
            )
    if problems:
        raise BagInvalid(f"bag {url} is invalid: {'; '.join(problems)}")
    return {
        "path": url,
        "algorithms": sorted(payload_manifests),
        "payload_files": len(payload_listed),
        "payload_oxum": str(oxum or ""),
        "bag_info": info,
    }


def zip_bag(path: Path, out: Path) -> Path:
    """Serialise a bag as a zip (stored, fixed timestamps, sorted entries under the bag's folder
    name) so the same bag always gives the same bytes and md5; written atomically."""
    path, out = Path(path), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    files = sorted(p for p in path.rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in files:
            info = zipfile.ZipInfo(f"{path.name}/{p.relative_to(path).as_posix()}", _ZIP_DATE)
            info.external_attr = 0o644 << 16
            with open(p, "rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, out)
    return out
