"""A small Figshare API v2 client for *draft* deposits: resumable, idempotent, never publishes.

Upload flow (Figshare API v2 docs): ``POST /account/articles`` creates the draft item;
``POST /account/articles/{id}/files`` with ``{name, md5, size}`` initiates a file; ``GET`` the
returned location gives ``upload_url``; ``GET upload_url`` lists the parts (``partNo``,
``startOffset``, ``endOffset`` inclusive, ``status`` PENDING/COMPLETE); ``PUT upload_url/partNo``
sends a part; ``POST /account/articles/{id}/files/{file_id}`` completes the file;
``GET /account/articles/{id}/files`` lists files (``status`` "created" until completed).
The upload service is a separate host: it is authorised by the upload token in its URL, so the
personal token is only ever sent to the API host.

Why not pyfigshare (0.7.1, evaluated first):

* failures are swallowed — ``Figshare.upload_file`` logs "Error for file …, skipped" and returns
  None, directory uploads log and continue — so a partial deposit looks done;
* a file whose upload was initiated but not completed is listed by the API, and pyfigshare then
  treats it as already uploaded (name present, or supplied md5 equal): no resume, and with
  ``overwrite`` it re-sends every part instead of only the PENDING ones;
* its module-level ``upload()`` publishes by default and ``mid_publish`` can publish in the
  middle of an upload; we must never publish (curators do, after review);
* the API URL is hard-coded to api.figshare.com, the token is also read implicitly from
  ``~/.figshare/token``, and the session sends it to the upload host as well;
* it brings loguru and has no type hints.

Idempotence: a file whose name, size and md5 match a completed file of the draft is skipped; an
incomplete file with the same md5 is resumed (only its PENDING parts are sent); a same-name file
with other content is deleted first, so a rerun never leaves duplicates. The draft itself is
found again through a state file (and, failing that, by its exact title).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

DEFAULT_API_URL = "https://api.figshare.com/v2"
_CHUNK = 1 << 20
_PAGE_SIZE = 100


class FigshareError(RuntimeError):
    """A Figshare request failed; the message names the request (method, URL) and what failed.
    Never contains the personal token."""

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status


class FigshareAuthError(FigshareError):
    """401/403: the personal token is missing, expired, revoked or lacks a scope."""


class FigshareUploadError(FigshareError):
    """A file could not be uploaded completely (after retries); rerun to resume."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient failures (connection errors, timeouts, HTTP 5xx and 429) with
    exponential backoff: ``backoff_s * 2**attempt`` seconds, at most ``max_backoff_s``."""

    max_attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {self.backoff_s}")

    def delay(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * (2**attempt)))


@dataclass(frozen=True)
class LocalFile:
    """A file to deposit: its name on Figshare, size (bytes) and md5 (hex), as the API needs."""

    path: str
    name: str
    size: int
    md5: str

    @classmethod
    def of(cls, path: Path, name: str | None = None) -> LocalFile:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"file to deposit {path} does not exist")
        h = hashlib.md5(usedforsecurity=False)
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
        return cls(str(path), name or path.name, size, h.hexdigest())


@dataclass(frozen=True)
class RemoteFile:
    id: int
    name: str
    size: int
    supplied_md5: str
    computed_md5: str
    status: str

    @property
    def complete(self) -> bool:
        # Figshare lists an initiated file with status "created" until its upload is completed
        return self.status.lower() != "created"

    @property
    def md5(self) -> str:
        return self.computed_md5 or self.supplied_md5

    @classmethod
    def from_api(cls, d: Mapping[str, Any]) -> RemoteFile:
        return cls(
            id=int(d["id"]),
            name=str(d.get("name", "")),
            size=int(d.get("size") or 0),
            supplied_md5=str(d.get("supplied_md5") or ""),
            computed_md5=str(d.get("computed_md5") or ""),
            status=str(d.get("status") or "created"),
        )


@dataclass(frozen=True)
class DraftResult:
    """What a deposit left on Figshare. ``files`` are the draft's files after verification."""

    article_id: int
    api_url: str
    created: bool
    files: tuple[RemoteFile, ...]
    uploaded: tuple[str, ...] = ()
    resumed: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()  # files on the draft that this deposit did not send
    article: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FigshareClient:
    """Figshare API v2 client for draft items (see the module docstring).

    ``log`` receives one line per action (never the token); ``sleep`` is injectable so tests
    need not wait for the backoff.
    """

    def __init__(
        self,
        token: str,
        api_url: str = DEFAULT_API_URL,
        *,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not token or not token.strip():
            raise FigshareAuthError(
                "no Figshare personal token: set the FIGSHARE_TOKEN environment variable"
            )
        self._token = token.strip()
        self.api_url = api_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._session = session or requests.Session()
        self._log = log or (lambda _msg: None)
        self._sleep = sleep
        self._api_netloc = urlsplit(self.api_url).netloc

    def __repr__(self) -> str:  # the token never appears in reprs, logs or errors
        return f"FigshareClient(api_url={self.api_url!r}, token=<redacted>)"

    # -- HTTP --------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "<redacted>") if self._token else text

    def _url(self, endpoint: str) -> str:
        if endpoint.startswith(("http://", "https://")):
            return endpoint
        return f"{self.api_url}/{endpoint.lstrip('/')}"

    def _request(
        self,
        method: str,
        endpoint: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        what: str = "",
    ) -> Any:
        url = self._url(endpoint)
        # the personal token goes only to the API host; the upload service uses its own token
        auth = urlsplit(url).netloc == self._api_netloc
        headers = {"Authorization": f"token {self._token}"} if auth else {}
        if json_body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(json_body).encode()
        label = f"{method} {url}" + (f" ({what})" if what else "")
        last: str = ""
        for attempt in range(self.retry.max_attempts):
            status: int | None = None
            try:
                resp = self._session.request(
                    method,
                    url,
                    data=data,
                    headers=headers,
                    params=params,
                    timeout=self.retry.timeout_s,
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}: {self._redact(str(exc))}"
            else:
                status = resp.status_code
                if status in (401, 403) and not auth:
                    raise FigshareUploadError(
                        f"the Figshare upload service refused {label} (HTTP {status}): the "
                        "upload token expired; rerun to get a fresh one",
                        method=method,
                        url=url,
                        status=status,
                    )
                if status in (401, 403):
                    raise FigshareAuthError(
                        f"Figshare rejected the personal token (HTTP {status}) for {label}: "
                        "the token is expired, revoked or lacks access; create a new token "
                        "and set FIGSHARE_TOKEN",
                        method=method,
                        url=url,
                        status=status,
                    )
                if status < 400:
                    if not resp.content:
                        return None
                    try:
                        return resp.json()
                    except ValueError:
                        return resp.content
                body = self._redact(resp.text[:300])
                last = f"HTTP {status}: {body}"
                if status < 500 and status != 429:
                    raise FigshareError(
                        f"Figshare {label} failed: {last}", method=method, url=url, status=status
                    )
            if attempt + 1 < self.retry.max_attempts:
                wait = self.retry.delay(attempt)
                self._log(
                    f"figshare: {label} failed ({last}); retry {attempt + 1} of "
                    f"{self.retry.max_attempts - 1} in {wait:.1f} s"
                )
                self._sleep(wait)
        raise FigshareError(
            f"Figshare {label} failed after {self.retry.max_attempts} attempts: {last}",
            method=method,
            url=url,
            status=status,
        )

    # -- items -------------------------------------------------------------------------------

    def create_draft(self, metadata: Mapping[str, Any]) -> int:
        """Create a private draft item; return its id. Never publishes."""
        res = self._request("POST", "account/articles", json_body=dict(metadata), what="create")
        if isinstance(res, dict) and "entity_id" in res:
            return int(res["entity_id"])
        if isinstance(res, dict) and "location" in res:
            return int(str(res["location"]).rstrip("/").rsplit("/", 1)[1])
        raise FigshareError(f"Figshare create item: unexpected response {res!r}")

    def get_article(self, article_id: int) -> dict[str, Any] | None:
        """The draft item, or None when it does not exist (404)."""
        try:
            res = self._request("GET", f"account/articles/{article_id}")
        except FigshareError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(res) if isinstance(res, dict) else None

    def find_drafts(self, title: str) -> list[int]:
        """Ids of the account's unpublished items with exactly this title."""
        out: list[int] = []
        page = 1
        while True:
            res = self._request(
                "GET", "account/articles", params={"page": page, "page_size": _PAGE_SIZE}
            )
            items = res if isinstance(res, list) else []
            out += [
                int(a["id"])
                for a in items
                if a.get("title") == title and not a.get("published_date")
            ]
            if len(items) < _PAGE_SIZE:
                return sorted(out)
            page += 1

    def list_files(self, article_id: int) -> list[RemoteFile]:
        out: list[RemoteFile] = []
        page = 1
        while True:
            res = self._request(
                "GET",
                f"account/articles/{article_id}/files",
                params={"page": page, "page_size": _PAGE_SIZE},
            )
            items = res if isinstance(res, list) else []
            out += [RemoteFile.from_api(d) for d in items]
            if len(items) < _PAGE_SIZE:
                return out
            page += 1

    def delete_file(self, article_id: int, file_id: int) -> None:
        self._request("DELETE", f"account/articles/{article_id}/files/{file_id}")

    def _file_info(self, article_id: int, file_id: int) -> dict[str, Any]:
        res = self._request("GET", f"account/articles/{article_id}/files/{file_id}")
        if not isinstance(res, dict):
            raise FigshareError(f"Figshare file {file_id}: unexpected response {res!r}")
        return res

    # -- files -------------------------------------------------------------------------------

    def _send_parts(self, local: LocalFile, upload_url: str) -> int:
        """PUT every part not yet COMPLETE; return how many were sent."""
        info = self._request("GET", upload_url, what=f"parts of {local.name}")
        if not isinstance(info, dict) or "parts" not in info:
            raise FigshareUploadError(
                f"Figshare upload service {upload_url}: no part list for {local.name!r}"
            )
        sent = 0
        with open(local.path, "rb") as f:
            for part in info["parts"]:
                if str(part.get("status", "")).upper() == "COMPLETE":
                    continue
                start, end = int(part["startOffset"]), int(part["endOffset"])
                f.seek(start)
                chunk = f.read(end - start + 1)
                if len(chunk) != end - start + 1:
                    raise FigshareUploadError(
                        f"{local.path}: shorter than Figshare expects (part {part['partNo']} "
                        f"bytes {start}-{end}); the file changed since its md5 was computed"
                    )
                try:
                    self._request(
                        "PUT",
                        f"{upload_url}/{part['partNo']}",
                        data=chunk,
                        what=f"part {part['partNo']} of {local.name}, bytes {start}-{end}",
                    )
                except FigshareAuthError:
                    raise
                except FigshareError as exc:
                    raise FigshareUploadError(
                        f"uploading {local.path} as {local.name!r}: {exc}; the parts already "
                        "sent are kept, rerun to resume",
                        method=exc.method,
                        url=exc.url,
                        status=exc.status,
                    ) from exc
                sent += 1
        return sent

    def upload(self, article_id: int, local: LocalFile) -> tuple[RemoteFile, str]:
        """Make ``local`` a completed file of the draft; return it and what was done
        ("skipped", "resumed", "uploaded" or "replaced")."""
        same = [f for f in self.list_files(article_id) if f.name == local.name]
        done = [f for f in same if f.complete and f.md5 == local.md5 and f.size == local.size]
        if done:
            for extra in same:
                if extra.id != done[0].id:  # duplicates of an earlier, non-idempotent client
                    self._log(f"figshare: deleting duplicate {extra.name!r} (file {extra.id})")
                    self.delete_file(article_id, extra.id)
            return done[0], "skipped"
        resumable = [
            f
            for f in same
            if not f.complete and f.supplied_md5 == local.md5 and f.size == local.size
        ]
        action = "resumed" if resumable else ("replaced" if same else "uploaded")
        for stale in same:
            if not resumable or stale.id != resumable[0].id:
                self._log(
                    f"figshare: deleting {stale.name!r} (file {stale.id}, status {stale.status}, "
                    f"md5 {stale.md5 or '?'}): different from {local.path}"
                )
                self.delete_file(article_id, stale.id)
        if resumable:
            file_id = resumable[0].id
            info = self._file_info(article_id, file_id)
        else:
            res = self._request(
                "POST",
                f"account/articles/{article_id}/files",
                json_body={"name": local.name, "md5": local.md5, "size": local.size},
                what=f"initiate {local.name}",
            )
            location = str(res["location"]) if isinstance(res, dict) else ""
            if not location:
                raise FigshareUploadError(f"Figshare initiate {local.name!r}: no location")
            info = self._request("GET", location)
            file_id = int(info["id"])
        upload_url = str(info.get("upload_url") or "")
        if not upload_url:
            raise FigshareUploadError(f"Figshare file {file_id} ({local.name}): no upload_url")
        sent = self._send_parts(local, upload_url)
        self._request(
            "POST", f"account/articles/{article_id}/files/{file_id}", what=f"complete {local.name}"
        )
        remote = self._await_complete(article_id, file_id, local)
        self._log(f"figshare: {action} {local.name} ({local.size} bytes, {sent} parts sent)")
        return remote, action

    def _await_complete(self, article_id: int, file_id: int, local: LocalFile) -> RemoteFile:
        remote = RemoteFile.from_api(self._file_info(article_id, file_id))
        for attempt in range(self.retry.max_attempts):
            if remote.complete:
                break
            self._sleep(self.retry.delay(attempt))
            remote = RemoteFile.from_api(self._file_info(article_id, file_id))
        if not remote.complete:
            raise FigshareUploadError(
                f"{local.name} (file {file_id} of item {article_id}) is still not complete after "
                "the upload; rerun to resume"
            )
        if remote.computed_md5 and remote.computed_md5 != local.md5:
            raise FigshareUploadError(
                f"{local.name} (file {file_id} of item {article_id}): Figshare computed md5 "
                f"{remote.computed_md5}, the local file {local.path} has {local.md5}"
            )
        return remote

    # -- a whole draft -----------------------------------------------------------------------

    def deposit_draft(
        self,
        files: Sequence[LocalFile],
        metadata: Mapping[str, Any],
        *,
        state_path: Path | None = None,
    ) -> DraftResult:
        """Create (or find again) the draft item titled ``metadata['title']`` and make each of
        ``files`` a completed file of it, resuming and skipping as needed; verify the result.
        Raises FigshareError subclasses; a raised deposit is never partially "done"."""
        names = [f.name for f in files]
        if len(set(names)) != len(names):
            raise ValueError(f"two files would have the same name on Figshare: {names}")
        title = str(metadata.get("title") or "")
        if not title:
            raise ValueError("metadata['title'] is required to create a Figshare item")
        article_id, created = self._draft_for(title, metadata, state_path)
        done: dict[str, list[str]] = {"uploaded": [], "resumed": [], "skipped": [], "replaced": []}
        for local in files:
            _, action = self.upload(article_id, local)
            done[action].append(local.name)
        final = self.list_files(article_id)
        problems = []
        for local in files:
            matches = [f for f in final if f.name == local.name]
            if len(matches) != 1:
                problems.append(f"{local.name}: {len(matches)} copies on the draft")
            elif not matches[0].complete or matches[0].md5 != local.md5:
                problems.append(
                    f"{local.name}: status {matches[0].status}, md5 {matches[0].md5} "
                    f"(expected {local.md5})"
                )
        if problems:
            raise FigshareUploadError(
                f"draft item {article_id} at {self.api_url} does not hold the deposit: "
                + "; ".join(problems)
            )
        unexpected = tuple(sorted(f.name for f in final if f.name not in set(names)))
        if unexpected:
            self._log(f"figshare: draft {article_id} also holds {list(unexpected)} (left as is)")
        article = self.get_article(article_id) or {}
        return DraftResult(
            article_id=article_id,
            api_url=self.api_url,
            created=created,
            files=tuple(f for f in final if f.name in set(names)),
            uploaded=tuple(done["uploaded"]),
            resumed=tuple(done["resumed"]),
            skipped=tuple(done["skipped"]),
            replaced=tuple(done["replaced"]),
            unexpected=unexpected,
            article={
                k: article.get(k)
                for k in ("id", "title", "url_private_html", "url_private_api", "status")
                if k in article
            },
        )

    def _draft_for(
        self, title: str, metadata: Mapping[str, Any], state_path: Path | None
    ) -> tuple[int, bool]:
        if state_path is not None and Path(state_path).exists():
            state = json.loads(Path(state_path).read_text())
            if state.get("api_url") == self.api_url and state.get("title") == title:
                aid = int(state["article_id"])
                if self.get_article(aid) is not None:
                    self._log(f"figshare: resuming draft item {aid} (from {state_path})")
                    return aid, False
                self._log(f"figshare: draft item {aid} from {state_path} no longer exists")
        found = self.find_drafts(title)
        if found:
            self._log(f"figshare: found draft item {found[0]} titled {title!r}")
            aid, created = found[0], False
        else:
            aid, created = self.create_draft(metadata), True
            self._log(f"figshare: created draft item {aid} titled {title!r}")
        if state_path is not None:
            _write_state(
                Path(state_path), {"api_url": self.api_url, "article_id": aid, "title": title}
            )
        return aid, created


def _write_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(dict(state), indent=2, sort_keys=True))
    os.replace(tmp, path)


def article_metadata(
    title: str,
    description: str,
    *,
    keywords: Sequence[str] = (),
    authors: Sequence[str] = (),
    defined_type: str = "dataset",
) -> dict[str, Any]:
    """The body of ``POST /account/articles`` for a draft dataset item."""
    body: dict[str, Any] = {
        "title": title,
        "description": description,
        "defined_type": defined_type,
    }
    if keywords:
        body["keywords"] = list(keywords)
    if authors:
        body["authors"] = [{"name": a} for a in authors]
    return body
