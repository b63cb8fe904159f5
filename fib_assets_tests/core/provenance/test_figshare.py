"""The Figshare client against a local fake of the API and upload service (127.0.0.1 only)."""

from __future__ import annotations

import hashlib
import logging

import pytest

from fib_assets.core.provenance.figshare import (
    FigshareAuthError,
    FigshareClient,
    FigshareUploadError,
    LocalFile,
    RetryPolicy,
    article_metadata,
)
from fib_assets_tests.core.provenance.fake_figshare import FakeFigshare

TOKEN = "tok-3f9c2a-very-secret"


@pytest.fixture()
def server():
    fake = FakeFigshare(token=TOKEN, part_size=1000).start()
    yield fake
    fake.stop()


@pytest.fixture()
def files(tmp_path):
    a = tmp_path / "bag.zip"
    a.write_bytes(bytes(range(256)) * 17)  # 4352 bytes: 5 parts of 1000
    b = tmp_path / "datacite.xml"
    b.write_bytes(b"<resource/>\n")
    return [LocalFile.of(a), LocalFile.of(b)]


def _client(server, sleeps=None, attempts=3, log=None):
    return FigshareClient(
        TOKEN,
        server.api_url,
        retry=RetryPolicy(max_attempts=attempts, backoff_s=0.5, timeout_s=10),
        log=log,
        sleep=(sleeps.append if sleeps is not None else (lambda s: None)),
    )


META = article_metadata("FIB-SEM test [pkg-1]", "a test", keywords=["FIB-SEM"], authors=["Doe, J"])


def test_draft_upload_is_complete_verified_and_never_published(server, files, tmp_path):
    res = _client(server).deposit_draft(files, META, state_path=tmp_path / "state.json")
    assert res.created and set(res.uploaded) == {"bag.zip", "datacite.xml"}
    stored = {f["name"]: f for f in server.article_files(res.article_id)}
    assert set(stored) == {"bag.zip", "datacite.xml"}
    for local in files:
        assert stored[local.name]["status"] == "available"
        assert hashlib.md5(stored[local.name]["blob"]).hexdigest() == local.md5
    # multipart: 5 parts for the 4352-byte file
    assert len(server.calls("PUT", r"^/upload/")) == 5 + 1
    assert not server.calls(pattern="publish")
    assert server.articles[res.article_id]["status"] == "draft"
    # the personal token goes to the API host only, never to the upload service
    assert all(r.authorization == f"token {TOKEN}" for r in server.log if r.host == "api")
    assert all(r.authorization is None for r in server.log if r.host == "upload")


def test_rerun_is_idempotent(server, files, tmp_path):
    state = tmp_path / "state.json"
    first = _client(server).deposit_draft(files, META, state_path=state)
    n_calls = len(server.log)
    again = _client(server).deposit_draft(files, META, state_path=state)
    assert again.article_id == first.article_id and not again.created
    assert set(again.skipped) == {"bag.zip", "datacite.xml"}
    new = server.log[n_calls:]
    assert not [r for r in new if r.method in ("POST", "PUT", "DELETE")]
    assert len(server.articles) == 1 and len(server.files) == 2
    # without the state file the draft is found again by its exact title
    third = _client(server).deposit_draft(files, META, state_path=tmp_path / "other.json")
    assert third.article_id == first.article_id and len(server.articles) == 1


def test_500_mid_upload_fails_clearly_then_resumes_without_duplicates(server, files, tmp_path):
    state = tmp_path / "state.json"
    server.fail_parts = {3: -1}  # part 3 of the zip fails every time
    sleeps: list[float] = []
    with pytest.raises(FigshareUploadError) as err:
        _client(server, sleeps=sleeps).deposit_draft(files, META, state_path=state)
    msg = str(err.value)
    assert "bag.zip" in msg and "part 3" in msg and "500" in msg and "rerun to resume" in msg
    assert sleeps == [0.5, 1.0]  # exponential backoff between the 3 attempts
    (fid,) = [f["id"] for f in server.files.values() if f["name"] == "bag.zip"]
    assert server.files[fid]["status"] == "created"  # nothing was completed
    zip_parts = f"^/upload/{server.files[fid]['token']}/"
    assert len(server.calls("PUT", zip_parts + "1$")) == 1

    server.fail_parts = {}
    res = _client(server).deposit_draft(files, META, state_path=state)
    assert res.resumed == ("bag.zip",) and res.uploaded == ("datacite.xml",)
    assert len(server.articles) == 1
    assert sorted(f["name"] for f in server.files.values()) == ["bag.zip", "datacite.xml"]
    # parts 1 and 2 were not sent again; 3..5 were
    assert len(server.calls("PUT", zip_parts + "1$")) == 1
    assert len(server.calls("PUT", zip_parts + "2$")) == 1
    assert len(server.calls("PUT", zip_parts + "3$")) == 3 + 1  # 3 failed attempts, then ok
    assert hashlib.md5(server.files[fid]["blob"]).hexdigest() == files[0].md5


def test_transient_500_is_retried_within_the_run(server, files, tmp_path):
    server.fail_parts = {2: 2}
    sleeps: list[float] = []
    res = _client(server, sleeps=sleeps).deposit_draft(files, META, state_path=tmp_path / "s")
    assert set(res.uploaded) == {"bag.zip", "datacite.xml"} and sleeps == [0.5, 1.0]


def test_expired_token_is_a_clear_error_without_the_token(server, files, tmp_path, caplog):
    server.expired = True
    lines: list[str] = []
    with caplog.at_level(logging.DEBUG), pytest.raises(FigshareAuthError) as err:
        _client(server, log=lines.append).deposit_draft(files, META, state_path=tmp_path / "s")
    msg = str(err.value)
    assert "401" in msg and "FIGSHARE_TOKEN" in msg and "/account/articles" in msg
    assert TOKEN not in msg and TOKEN not in caplog.text and TOKEN not in "".join(lines)
    assert TOKEN not in repr(_client(server))
    assert not server.files and not server.articles


def test_same_name_with_other_content_is_replaced_not_duplicated(server, files, tmp_path):
    state = tmp_path / "state.json"
    res = _client(server).deposit_draft(files, META, state_path=state)
    p = files[1].path
    with open(p, "ab") as f:
        f.write(b"<!-- changed -->\n")
    changed = [files[0], LocalFile.of(p)]
    res2 = _client(server).deposit_draft(changed, META, state_path=state)
    assert res2.article_id == res.article_id and res2.replaced == ("datacite.xml",)
    names = [f["name"] for f in server.article_files(res.article_id)]
    assert sorted(names) == ["bag.zip", "datacite.xml"]


def test_local_file_md5_and_missing_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc" * 1000)
    lf = LocalFile.of(p, name="renamed.bin")
    assert lf.md5 == hashlib.md5(b"abc" * 1000).hexdigest() and lf.size == 3000
    assert lf.name == "renamed.bin"
    with pytest.raises(FileNotFoundError, match="gone.bin"):
        LocalFile.of(tmp_path / "gone.bin")


def test_empty_token_is_refused():
    with pytest.raises(FigshareAuthError, match="FIGSHARE_TOKEN"):
        FigshareClient("  ", "http://127.0.0.1:9/v2")
