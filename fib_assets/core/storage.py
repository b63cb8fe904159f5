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


# --- staging local-file formats for an object store ---------------------------------------------

SCRATCH_LIMIT_ENV = "FIB_ASSETS_SCRATCH_LIMIT_BYTES"
_COPY_BUF = 8 * 2**20  # bytes per read when hashing/copying objects (bounded memory)


def _local_tree(path: Path) -> dict[str, Path]:
    """``{relative key: file}`` of a local file (keyed by its name) or directory tree."""
    if path.is_file():
        return {path.name: path}
    return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}


def _object_of(url: str, rel: str, single_file: bool) -> str:
    return url if single_file else join(url, rel)


def _sha256_object(fs: Any, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb", block_size=_COPY_BUF) as f:
        while chunk := f.read(_COPY_BUF):
            h.update(chunk)
    return h.hexdigest()


def _put_file(fs: Any, local: Path, remote: str) -> None:
    """One upload (a seam the failure tests use to kill the server mid-publish)."""
    fs.put_file(str(local), remote)


def upload_verified(local: str | os.PathLike[str], url: str) -> dict[str, dict[str, Any]]:
    """Upload a local file or directory tree to ``url`` and read every object back.

    Returns the manifest ``{relative key: {"size", "sha256"}}`` (a single file is keyed by its
    name). Raises StorageError naming the object when one does not read back with the bytes
    that were sent (size or sha256), OSError when the service refuses a request. Writes no
    completion marker: see :func:`publish_staged`."""
    src = Path(os.fspath(local))
    if not src.exists():
        raise FileNotFoundError(f"{src}: nothing to upload")
    single = src.is_file()
    fs, _ = filesystem(url)
    manifest: dict[str, dict[str, Any]] = {}
    for rel, path in _local_tree(src).items():
        target = _object_of(normalize(url), rel, single)
        _put_file(fs, path, target.split("://", 1)[1])
        manifest[rel] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    for rel, want in manifest.items():
        target = _object_of(normalize(url), rel, single)
        key = target.split("://", 1)[1]
        size = int(fs.info(key)["size"])
        if size != want["size"] or _sha256_object(fs, key) != want["sha256"]:
            raise StorageError(
                f"{target}: uploaded object does not read back as sent "
                f"(expected {want['size']} bytes, sha256 {want['sha256'][:12]}…)"
            )
    return manifest


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_COPY_BUF):
            h.update(chunk)
    return h.hexdigest()


def publish_staged(
    local: str | os.PathLike[str],
    url: str,
    *,
    info: Mapping[str, Any] | None = None,
    sidecars: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Publish a finished local file/tree at object-store ``url``, atomically for readers.

    Order: retract (the old marker goes first, so nobody reuses a container being replaced),
    remove stale objects, upload and read back every object, write the JSON ``sidecars``
    (``{location: object}``), then the completion marker LAST with the manifest of sizes and
    sha256. Any failure before the marker — a refused request, a dead server, an object that
    reads back different — leaves the container absent (no marker). Returns the manifest."""
    url = normalize(url)
    if not is_remote(url):
        raise StorageError(f"{url}: publish_staged() is for object-store URLs")
    retract(url)
    remove(url)
    layout = "file" if Path(os.fspath(local)).is_file() else "tree"
    manifest = upload_verified(local, url)
    for location, obj in (sidecars or {}).items():
        write_json(location, obj)
    mark_complete(url, {**dict(info or {}), "layout": layout, "files": manifest})
    return manifest


def download_verified(url: str, local: str | os.PathLike[str]) -> Path:
    """Copy a published object-store container (file or tree) to ``local``, checking every
    object against the manifest in its completion marker. Raises FileNotFoundError when the
    container is not complete, StorageError naming an object that is missing or differs."""
    url = normalize(url)
    if not is_complete(url):
        raise FileNotFoundError(f"{url}: no completion marker (absent or half-written)")
    marker = read_json(marker_url(url))
    manifest: dict[str, dict[str, Any]] = marker.get("files") or {}
    if not manifest:
        raise StorageError(f"{marker_url(url)}: marker lists no files (not a staged container)")
    fs, _ = filesystem(url)
    dst = Path(os.fspath(local))
    single = marker.get("layout") == "file"
    for rel, want in manifest.items():
        key = _object_of(url, rel, single).split("://", 1)[1]
        target = dst if single else dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get_file(key, str(target))
        except FileNotFoundError as err:
            raise StorageError(f"{url}/{rel}: listed in the completion marker but missing") from err
        if target.stat().st_size != want["size"] or _sha256_file(target) != want["sha256"]:
            raise StorageError(
                f"{_object_of(url, rel, single)}: does not match its completion marker "
                f"(expected {want['size']} bytes, sha256 {want['sha256'][:12]}…): corrupt object"
            )
    return dst


def check_scratch_space(need_bytes: int, what: str) -> Path:
    """The scratch root (created), after checking it can hold ``need_bytes`` more: free disk
    space, and ``$FIB_ASSETS_SCRATCH_LIMIT_BYTES`` when set (e.g. the pod's emptyDir
    sizeLimit). Raises StorageError naming ``what``, the directory and both sizes."""
    root = scratch_root()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    limit_text = os.environ.get(SCRATCH_LIMIT_ENV)
    limit = int(limit_text) if limit_text else None
    if need_bytes > free or (limit is not None and need_bytes > limit):
        bound = f"{free} bytes free" + (f", limit {limit} ({SCRATCH_LIMIT_ENV})" if limit else "")
        raise StorageError(
            f"{what}: staging needs about {need_bytes} bytes of local scratch in {root}, "
            f"{bound}; point FIB_ASSETS_SCRATCH at a larger volume"
        )
    return root


class Staging:
    """Where a writer that only speaks local files builds an output published at ``url``.

    - ``url`` local, or ``direct=True`` (the writer speaks URLs itself, e.g. the Zarr variant
      via tensorstore's s3 driver): :attr:`path` is ``url``; the writer publishes atomically
      and :meth:`publish` only adds the sidecars and (on S3) the marker.
    - ``url`` on an object store: :attr:`path` is in a fresh scratch directory (checked
      against ``need_bytes``, removed on exit, success or not); :meth:`publish` uploads it
      (:func:`publish_staged`) and :meth:`fetch` downloads a published copy to it, verified
      against the marker, for readers that need a local file.

    Use as a context manager."""

    def __init__(self, url: str | os.PathLike[str], *, need_bytes: int = 0, direct: bool = False):
        self.url = normalize(url)
        self.staged = is_remote(self.url) and not direct
        self.need_bytes = int(need_bytes)
        self._dir: Path | None = None

    def __enter__(self) -> Staging:
        if self.staged:
            root = check_scratch_space(self.need_bytes, self.url) / "stage"
            root.mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="stage-", dir=root))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def path(self) -> str:
        """Where to write (and read) locally: ``url`` itself unless staged."""
        if not self.staged:
            return self.url
        if self._dir is None:
            raise StorageError(f"{self.url}: Staging used outside its `with` block")
        return str(self._dir / name(self.url))

    def fetch(self) -> None:
        """Make the published container readable at :attr:`path` (download when staged)."""
        if self.staged:
            download_verified(self.url, self.path)

    def publish(
        self, info: Mapping[str, Any] | None = None, sidecars: Mapping[str, Any] | None = None
    ) -> None:
        """Publish what was written at :attr:`path`: upload + marker when staged; otherwise
        the sidecars, then (object store) the marker last. Locally the writer's rename was the
        publication and the sidecars follow it, as before."""
        if self.staged:
            publish_staged(self.path, self.url, info=info, sidecars=sidecars)
            return
        for location, obj in (sidecars or {}).items():
            write_json(location, obj)
        if is_remote(self.url):
            # keep what the writer recorded in its own marker (e.g. the Zarr plan fingerprint)
            known = read_json(marker_url(self.url)) if is_complete(self.url) else {}
            mark_complete(self.url, {**known, **dict(info or {})})


# --- streaming reads (fixity, packaging) --------------------------------------------------------


def open_input(location: str | os.PathLike[str]) -> Any:
    """A binary file object reading ``location`` (a local file or one object), buffered in
    ``_COPY_BUF`` pieces so that callers stream objects of any size in bounded memory. Use it
    as a context manager; FileNotFoundError names the location when it is absent."""
    if not is_remote(location):
        return open(_local(location), "rb")
    fs, path = filesystem(location)
    try:
        return fs.open(path, "rb", block_size=_COPY_BUF)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{normalize(location)}: no such object") from err


def hash_location(
    location: str | os.PathLike[str], algorithms: tuple[str, ...] = ("sha256",)
) -> dict[str, str]:
    """``{algorithm: hex digest}`` of the bytes at ``location`` (a local file or one object),
    every algorithm in one streamed pass (bounded memory, whatever the size)."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open_input(location) as f:
        while chunk := f.read(_COPY_BUF):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def copy_to_local(location: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy one file/object at ``location`` to the local file ``target`` (parents created),
    streamed; returns ``target``."""
    dst = Path(os.fspath(target))
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(location):
        shutil.copyfile(_local(location), dst)
        return dst
    fs, path = filesystem(location)
    try:
        fs.get_file(path, str(dst))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{normalize(location)}: no such object") from err
    return dst


def is_file(location: str | os.PathLike[str]) -> bool:
    """Whether a single file (locally) or a single object (not a prefix) is at ``location``."""
    if not is_remote(location):
        return _local(location).is_file()
    fs, path = filesystem(location)
    return bool(fs.isfile(path))


# --- listing, forgetting markers, local copies for readers of local files ------------------------


def list_names(location: str | os.PathLike[str]) -> list[str]:
    """Sorted names of the immediate children of a directory/prefix (files and sub-folders;
    on an object store a "folder" is a common key prefix). Absent: an empty list."""
    if not is_remote(location):
        p = _local(location)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    fs, path = filesystem(location)
    try:
        found = fs.ls(path.rstrip("/"), detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return sorted({str(k).rstrip("/").rpartition("/")[2] for k in found} - {""})


def forget_blocks(ledger: BlockLedger) -> None:
    """Remove the done-markers of ``ledger``'s prefix only (other stages of the same plan keep
    theirs): for outputs that were removed behind the ledger's back and must be redone."""
    ids = ledger.done_ids()
    if isinstance(ledger, ObjectBlockLedger):
        for block_id in ids:
            remove(ledger._object(block_id))
    for block_id in ids:
        ledger._marker(block_id).unlink(missing_ok=True)


def fetch(location: str | os.PathLike[str]) -> Path:
    """A local path to read a published file or tree from, for readers that only open local
    files (``torch.load``, ``np.load``...). ``location`` is a published container or a file
    directly inside one (e.g. ``<model>/model.pt`` of the container ``<model>``).

    Local: the location itself. Object store: a copy in pod-local scratch
    (``<scratch>/fetched/<key>/<name>``), downloaded and checked against the completion
    marker's manifest (:func:`download_verified`), renamed into place when whole, and reused
    while the marker is unchanged (the key hashes the URL and the marker's bytes, so a
    republished container is fetched again). Raises FileNotFoundError naming the URL when
    it has no completion marker, StorageError when an object differs from the marker."""
    if not is_remote(location):
        return _local(location)
    url = normalize(location)
    inner = None
    try:
        marker = read_bytes(marker_url(url))
    except FileNotFoundError:
        try:  # a file inside a published container
            marker = read_bytes(marker_url(parent(url)))
        except (FileNotFoundError, StorageError) as err:
            raise FileNotFoundError(
                f"{url}: no completion marker for it or its folder (absent or half-written)"
            ) from err
        url, inner = parent(url), name(url)
    key = hashlib.sha256(url.encode() + b"\0" + marker).hexdigest()[:24]
    home = scratch_root() / "fetched" / key
    target = home / name(url)
    found = target / inner if inner else target
    if target.exists():
        if not found.exists():
            raise FileNotFoundError(f"{url}/{inner}: not in the published container")
        return found
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
    try:
        download_verified(url, tmp / name(url))
        os.replace(tmp / name(url), target)
    except OSError:
        if not target.exists():  # a concurrent fetch of the same version wins, else re-raise
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not found.exists():
        raise FileNotFoundError(f"{url}/{inner}: not in the published container")
    return found
