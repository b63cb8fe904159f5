"""A local stand-in for the Figshare API v2 and its upload service, on 127.0.0.1 only.

Implements the endpoints the client uses (create item, list items, get item, initiate a file,
get file, list files, delete file, complete file; upload info, PUT part) with the documented
shapes, plus what tests need: injected failures (500 on chosen parts, 401 for an expired
token), a request log, and a ``publish`` endpoint that must never be called.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Request:
    host: str  # "api" | "upload"
    method: str
    path: str
    authorization: str | None
    body: bytes = b""


@dataclass
class FakeFigshare:
    token: str
    part_size: int = 64 * 1024
    expired: bool = False  # every API request answers 401
    # partNo -> how many more PUTs of it fail with 500 (-1: always)
    fail_parts: dict[int, int] = field(default_factory=dict)
    articles: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[int, dict[str, Any]] = field(default_factory=dict)
    uploads: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    _next: int = 1000
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.api = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("api"))
        self.upload = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("upload"))
        self._threads = [
            threading.Thread(target=s.serve_forever, args=(0.02,), daemon=True)
            for s in (self.api, self.upload)
        ]

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api.server_address[1]}/v2"

    @property
    def upload_base(self) -> str:
        return f"http://127.0.0.1:{self.upload.server_address[1]}/upload"

    def start(self) -> FakeFigshare:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        for s in (self.api, self.upload):
            s.shutdown()
            s.server_close()

    # -- queries for tests -----------------------------------------------------------------------

    def calls(self, method: str | None = None, pattern: str = "") -> list[Request]:
        return [
            r
            for r in self.log
            if (method is None or r.method == method) and re.search(pattern, r.path)
        ]

    def article_files(self, article_id: int) -> list[dict[str, Any]]:
        return [f for f in self.files.values() if f["article_id"] == article_id]

    # -- handlers -------------------------------------------------------------------------------

    def _new_id(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _handler(self, host: str) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                return

            def _reply(self, status: int, body: Any = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                fake.log.append(
                    Request(host, method, url.path, self.headers.get("Authorization"), body)
                )
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                try:
                    if host == "api":
                        status, out = fake._api(method, url.path, query, body, self.headers)
                    else:
                        status, out = fake._upload(method, url.path, body)
                except KeyError:
                    status, out = 404, {"message": "not found"}
                self._reply(status, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PUT(self) -> None:
                self._handle("PUT")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        return Handler

    def _file_json(self, f: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": f["id"],
            "name": f["name"],
            "size": f["size"],
            "supplied_md5": f["md5"],
            "computed_md5": f.get("computed_md5", ""),
            "status": f["status"],
            "is_link_only": False,
            "upload_url": f"{self.upload_base}/{f['token']}",
            "upload_token": f["token"],
            "download_url": f"https://ndownloader.example/files/{f['id']}",
        }

    def _api(
        self, method: str, path: str, query: dict[str, str], body: bytes, headers: Any
    ) -> tuple[int, Any]:
        if self.expired or headers.get("Authorization") != f"token {self.token}":
            return 401, {"message": "Token is invalid or expired", "code": "InvalidToken"}
        p = path.removeprefix("/v2/").strip("/").split("/")
        if p[:2] != ["account", "articles"]:
            return 404, {"message": "unknown endpoint"}
        page, size = int(query.get("page", 1)), int(query.get("page_size", 10))
        if len(p) == 2 and method == "GET":
            items = [
                {"id": a["id"], "title": a["title"], "published_date": None}
                for a in self.articles.values()
            ]
            return 200, items[(page - 1) * size : page * size]
        if len(p) == 2 and method == "POST":
            data = json.loads(body)
            aid = self._new_id()
            self.articles[aid] = {"id": aid, "status": "draft", **data}
            return 201, {"entity_id": aid, "location": f"{self.api_url}/account/articles/{aid}"}
        aid = int(p[2])
        article = self.articles[aid]
        if len(p) == 3 and method == "GET":
            return 200, article
        if len(p) == 4 and p[3] == "publish":
            article["status"] = "public"
            return 201, {"location": "published"}
        if len(p) == 4 and p[3] == "files" and method == "GET":
            items = [self._file_json(f) for f in self.article_files(aid)]
            return 200, items[(page - 1) * size : page * size]
        if len(p) == 4 and p[3] == "files" and method == "POST":
            data = json.loads(body)
            fid = self._new_id()
            token = hashlib.sha1(f"{fid}".encode()).hexdigest()
            n = max(1, -(-int(data["size"]) // self.part_size))
            parts = [
                {
                    "partNo": i + 1,
                    "startOffset": i * self.part_size,
                    "endOffset": min(int(data["size"]), (i + 1) * self.part_size) - 1,
                    "status": "PENDING",
                    "locked": False,
                }
                for i in range(n)
            ]
            self.files[fid] = {
                "id": fid,
                "article_id": aid,
                "name": data["name"],
                "size": int(data["size"]),
                "md5": data["md5"],
                "status": "created",
                "token": token,
            }
            self.uploads[token] = {"file_id": fid, "parts": parts, "data": {}}
            return 201, {"location": f"{self.api_url}/account/articles/{aid}/files/{fid}"}
        fid = int(p[4])
        f = self.files[fid]
        if method == "GET":
            return 200, self._file_json(f)
        if method == "DELETE":
            del self.files[fid]
            return 204, None
        if method == "POST":  # complete
            up = self.uploads[f["token"]]
            if any(part["status"] != "COMPLETE" for part in up["parts"]):
                return 400, {"message": "upload not complete"}
            blob = b"".join(up["data"][part["partNo"]] for part in up["parts"])
            f["computed_md5"] = hashlib.md5(blob).hexdigest()
            f["status"] = "available"
            f["blob"] = blob
            return 202, {"location": f"{self.api_url}/account/articles/{aid}/files/{fid}"}
        return 404, {"message": "unknown endpoint"}

    def _upload(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        p = path.strip("/").split("/")  # upload/<token>[/<partNo>]
        up = self.uploads[p[1]]
        f = self.files[up["file_id"]]
        if len(p) == 2 and method == "GET":
            parts = [dict(part) for part in up["parts"]]
            done = all(part["status"] == "COMPLETE" for part in parts)
            return 200, {
                "token": p[1],
                "name": f["name"],
                "size": f["size"],
                "md5": f["md5"],
                "status": "COMPLETED" if done else "PENDING",
                "parts": parts,
            }
        if len(p) == 3 and method == "PUT":
            no = int(p[2])
            left = self.fail_parts.get(no, 0)
            if left:
                self.fail_parts[no] = left - 1 if left > 0 else -1
                return 500, None
            part = up["parts"][no - 1]
            if len(body) != part["endOffset"] - part["startOffset"] + 1:
                return 400, {"message": "wrong part size"}
            up["data"][no] = body
            part["status"] = "COMPLETE"
            return 200, {"md5": hashlib.md5(body).hexdigest()}
        return 404, None
