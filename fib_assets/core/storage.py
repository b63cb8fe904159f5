"""One code path for storage roots that are local paths or ``s3://bucket/prefix`` URLs.

Every writer in ``fib_assets.core`` addresses its outputs by a location string: a local path
(the embedded default) or an ``s3://`` URL (Kubernetes). This module hides the difference:

- ``join``, ``exists``, ``read_bytes`` / ``write_bytes``, ``remove``, ``tree_size`` go through
  the local filesystem or fsspec/s3fs;
- ``zarr_store`` and ``tensorstore_kvstore`` hand the same location to the array libraries'
  own stores (zarr-python's ``FsspecStore``, tensorstore's ``s3`` kvstore driver);
- publishing differs, and only here. On local disk a finished container is renamed into place
  (``os.replace``), so existence means completeness. S3 has no rename: a content-addressed
  container is written under its final key and a completion marker object
  (``<container>.complete.json``) is written LAST; :func:`is_complete` — used by readers and by
  every "reuse what is there" decision — treats a container without its marker as absent.
- block done-markers (:func:`block_ledger`) are files beside the output on local disk and
  objects beside it on S3, so a pod that is killed and replaced resumes where the old one
  stopped; a pod-local scratch copy saves a request per block for markers the pod wrote itself.

Configuration comes from the environment only, never from code or Dagster config:
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (an S3-compatible endpoint such as MinIO or
Ceph), ``AWS_REGION`` / ``AWS_DEFAULT_REGION``; credentials from the standard AWS chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, a profile, or the pod's service account via
IRSA / EKS Pod Identity). ``FIB_ASSETS_SCRATCH`` is the pod-local scratch directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fib_assets.core.blockwise import BlockLedger, atomic_write_bytes

REMOTE_SCHEMES = ("s3",)
COMPLETE_SUFFIX = ".complete.json"


class StorageError(ValueError):
    """A storage location that cannot be used (names the location and the problem)."""


def scheme(location: str | os.PathLike[str]) -> str:
    """``"s3"`` for ``s3://`` URLs, ``"file"`` for local paths (``file://`` is accepted)."""
    text = os.fspath(location)
    if "://" not in text:
        return "file"
    found = text.split("://", 1)[0].lower()
    if found == "file":
        return "file"
    if found not in REMOTE_SCHEMES:
        raise StorageError(
            f"{text}: unsupported storage scheme {found!r}; use a local path or s3://bucket/prefix"
        )
    return found


def is_remote(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an object-store URL (no rename, no fsync, no memory maps)."""
    return scheme(location) != "file"


def _local(location: str | os.PathLike[str]) -> Path:
    text = os.fspath(location)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def normalize(location: str | os.PathLike[str]) -> str:
    """The canonical string of a location: a local path, or ``s3://bucket/key`` without a
    trailing slash. Raises StorageError for a URL without a bucket."""
    if not is_remote(location):
        return str(_local(location))
    text = os.fspath(location)
    proto, rest = text.split("://", 1)
    rest = rest.strip("/")
    if not rest or rest.startswith("/"):
        raise StorageError(f"{text}: an s3 URL needs a bucket (s3://bucket/prefix)")
    return f"{proto.lower()}://{rest}"


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """``base`` joined with relative ``parts`` ('/'-separated on object stores).

    Parts may not be absolute or contain '..': callers build keys from validated names."""
    for p in parts:
        pieces = p.replace("\\", "/").split("/")
        if p.startswith("/") or ".." in pieces:
            raise StorageError(f"{p!r}: a storage key part must be relative and without '..'")
    if not is_remote(base):
        return str(_local(base).joinpath(*parts))
    keys = [k for p in parts for k in p.split("/") if k]
    return "/".join([normalize(base), *keys])


def parent(location: str | os.PathLike[str]) -> str:
    if not is_remote(location):
        return str(_local(location).parent)
    url = normalize(location)
    head, _, _ = url.rpartition("/")
    if head.endswith(":/"):
        raise StorageError(f"{url}: a bucket has no parent")
    return head


def name(location: str | os.PathLike[str]) -> str:
    if not is_remote(location):
        return _local(location).name
    return normalize(location).rpartition("/")[2]


def split_bucket(url: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://bucket/key`` URL; the key may be empty."""
    if not is_remote(url):
        raise StorageError(f"{url}: not an object-store URL")
    rest = normalize(url).split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


# --- configuration from the environment --------------------------------------------------------


@dataclass(frozen=True)
class S3Settings:
    """Endpoint and region of the S3 service, from the environment (never secrets)."""

    endpoint_url: str | None
    region: str | None
    env_credentials: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if environ is None else environ
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
        creds = bool(env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"))
        return cls(endpoint, region, creds)


def storage_options(location: str | os.PathLike[str]) -> dict[str, Any]:
    """fsspec storage options of ``location`` (s3fs: endpoint and region from the environment;
    credentials are left to botocore's chain so that none ever passes through our code)."""
    if not is_remote(location):
        return {}
    s3 = S3Settings.from_env()
    client: dict[str, Any] = {}
    if s3.endpoint_url:
        client["endpoint_url"] = s3.endpoint_url
    if s3.region:
        client["region_name"] = s3.region
    # tensorstore and other processes write behind s3fs's back: never trust a cached listing
    options: dict[str, Any] = {"use_listings_cache": False}
    if client:
        options["client_kwargs"] = client
    return options


def filesystem(location: str | os.PathLike[str]) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for ``location``."""
    import fsspec

    if not is_remote(location):
        return fsspec.filesystem("file"), str(_local(location))
    url = normalize(location)
    fs = fsspec.filesystem(scheme(url), **storage_options(url))
    return fs, url.split("://", 1)[1]


# --- bytes -------------------------------------------------------------------------------------


def exists(location: str | os.PathLike[str]) -> bool:
    """Whether a file/object (or, locally, a directory) exists at ``location``."""
    if not is_remote(location):
        return _local(location).exists()
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def read_bytes(location: str | os.PathLike[str]) -> bytes:
    """The bytes at ``location``; FileNotFoundError naming it when absent."""
    if not is_remote(location):
        return _local(location).read_bytes()
    fs, path = filesystem(location)
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{normalize(location)}: no such object") from err
    return data


def read_text(location: str | os.PathLike[str]) -> str:
    return read_bytes(location).decode()


def read_json(location: str | os.PathLike[str]) -> Any:
    return json.loads(read_bytes(location))


def write_bytes(location: str | os.PathLike[str], data: bytes) -> None:
    """Atomically put ``data`` at ``location``: a reader sees the old content or the new one.

    Locally a temp file in the same directory is fsynced and renamed; on S3 one PUT is atomic
    per object (the object appears whole when the request succeeds)."""
    if not is_remote(location):
        atomic_write_bytes(_local(location), data)
        return
    fs, path = filesystem(location)
    fs.pipe_file(path, data)


def write_json(location: str | os.PathLike[str], obj: Any) -> None:
    write_bytes(location, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def remove(location: str | os.PathLike[str]) -> None:
    """Remove a file/object or a whole tree/prefix; absent is fine."""
    if not is_remote(location):
        p = _local(location)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    keys = list(fs.find(path))
    if fs.isfile(path):
        keys.append(path)
    if keys:
        fs.rm(sorted(set(keys)))


def list_files(location: str | os.PathLike[str]) -> dict[str, int]:
    """``{relative key: size in bytes}`` of every file below ``location`` (recursive)."""
    if not is_remote(location):
        root = _local(location)
        if root.is_file():
            return {root.name: root.stat().st_size}
        return {
            p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
        }
    fs, path = filesystem(location)
    found: dict[str, dict[str, Any]] = fs.find(path, detail=True)
    prefix = path.rstrip("/") + "/"
    out: dict[str, int] = {}
    for key, info in found.items():
        rel = key[len(prefix) :] if key.startswith(prefix) else key.rpartition("/")[2]
        out[rel] = int(info.get("size") or 0)
    return out


def tree_size(location: str | os.PathLike[str]) -> tuple[int, int]:
    """(bytes, file count) of a file/object or of everything below a directory/prefix."""
    files = list_files(location)
    return sum(files.values()), len(files)


# --- publishing ---------------------------------------------------------------------------------


def marker_url(container: str | os.PathLike[str]) -> str:
    """The completion marker of a container on an object store: ``<container>.complete.json``
    beside it (never inside, so format readers never see it)."""
    return join(parent(container), name(container) + COMPLETE_SUFFIX)


def is_complete(container: str | os.PathLike[str]) -> bool:
    """Whether a finished container is at ``container``.

    Local disk: it exists (it was renamed into place only when complete). Object store: its
    completion marker exists — a container without one is half-written and counts as absent.
    """
    if not is_remote(container):
        return _local(container).exists()
    return exists(marker_url(container))


def mark_complete(container: str | os.PathLike[str], info: Mapping[str, Any]) -> None:
    """Publish an object-store container by writing its marker; call it LAST, after every
    object of the container was written and verified. No-op locally (the rename published)."""
    if is_remote(container):
        write_json(marker_url(container), {"container": normalize(container), **dict(info)})


def retract(container: str | os.PathLike[str]) -> None:
    """Make an object-store container absent to readers before it is rewritten in place
    (marker first, so no reader ever sees a half-rewritten container as complete)."""
    if is_remote(container):
        remove(marker_url(container))


# --- array libraries ----------------------------------------------------------------------------


def zarr_store(location: str | os.PathLike[str], *, read_only: bool = False) -> Any:
    """A zarr-python store for ``location``: the local path itself (zarr's LocalStore) or an
    ``FsspecStore`` on s3fs configured from the environment."""
    if not is_remote(location):
        return str(_local(location))
    from zarr.storage import FsspecStore

    url = normalize(location)
    return FsspecStore.from_url(url, storage_options=storage_options(url), read_only=read_only)


def tensorstore_kvstore(location: str | os.PathLike[str]) -> dict[str, Any]:
    """A tensorstore kvstore spec for the directory/prefix ``location``.

    S3: endpoint and region from the environment; credentials from the environment when
    ``AWS_ACCESS_KEY_ID`` is set, else tensorstore's default AWS chain (profile, web identity
    of the pod's service account, instance metadata)."""
    if not is_remote(location):
        return {"driver": "file", "path": str(_local(location))}
    bucket, key = split_bucket(str(location))
    spec: dict[str, Any] = {"driver": "s3", "bucket": bucket, "path": key.rstrip("/") + "/"}
    s3 = S3Settings.from_env()
    if s3.endpoint_url:
        spec["endpoint"] = s3.endpoint_url
    if s3.region:
        spec["aws_region"] = s3.region
    if s3.env_credentials:
        spec["aws_credentials"] = {"type": "environment"}
    return spec


# --- block ledgers ------------------------------------------------------------------------------


def scratch_root() -> Path:
    """Pod-local scratch (``$FIB_ASSETS_SCRATCH``, else the system temp dir): caches only,
    nothing here is needed to resume or to read a published output."""
    root = os.environ.get("FIB_ASSETS_SCRATCH") or str(Path(tempfile.gettempdir()) / "fib-scratch")
    return Path(root)


class ObjectBlockLedger(BlockLedger):
    """A :class:`BlockLedger` whose durable markers are objects under ``url``.

    ``directory`` (inherited) is a pod-local write-through cache of markers this process wrote
    or already saw, so re-checking a done block costs no request; the object is the record: a
    marker is cached only after its object was written, and a pod that is replaced resumes
    from the objects alone."""

    def __init__(self, url: str, plan_fingerprint: str, *, prefix: str = "") -> None:
        self.url = join(url, plan_fingerprint[:16])
        cache = scratch_root() / "ledgers" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        super().__init__(cache, plan_fingerprint, prefix=prefix)

    def _object(self, block_id: str) -> str:
        return join(self.url, f"{self.prefix}{block_id}.done.json")

    def is_done(self, block_id: str) -> bool:
        if super().is_done(block_id):
            return True
        try:
            data = read_bytes(self._object(block_id))
        except FileNotFoundError:
            return False
        atomic_write_bytes(self._marker(block_id), data)
        return True

    def info(self, block_id: str) -> dict[str, Any]:
        if not super().is_done(block_id):
            atomic_write_bytes(self._marker(block_id), read_bytes(self._object(block_id)))
        return super().info(block_id)

    def mark_done(self, block_id: str, info: dict[str, Any]) -> None:
        write_json(self._object(block_id), {"block_id": block_id, **info})
        super().mark_done(block_id, info)

    def done_ids(self) -> set[str]:
        names = list_files(self.url) if exists(self.url) else {}
        return {
            n.removesuffix(".done.json").removeprefix(self.prefix)
            for n in names
            if "/" not in n and n.startswith(self.prefix) and n.endswith(".done.json")
        }

    def clear(self) -> None:
        """Forget every marker of this plan (objects and cache)."""
        remove(self.url)
        shutil.rmtree(self.directory, ignore_errors=True)


def block_ledger(directory: str | os.PathLike[str], fingerprint: str, *, prefix: str = "") -> (
    BlockLedger
):  # fmt: skip
    """Done-markers of a blockwise write, under ``directory``: files locally, objects on S3."""
    if is_remote(directory):
        return ObjectBlockLedger(normalize(directory), fingerprint, prefix=prefix)
    return BlockLedger(_local(directory), fingerprint, prefix=prefix)


def clear_ledger(ledger: BlockLedger) -> None:
    """Remove every marker of ``ledger``'s plan (all prefixes/stages)."""
    if isinstance(ledger, ObjectBlockLedger):
        ledger.clear()
    else:
        shutil.rmtree(ledger.directory, ignore_errors=True)
