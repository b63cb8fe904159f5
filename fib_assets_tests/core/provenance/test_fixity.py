import hashlib
import subprocess

from fib_assets.core.provenance.fixity import (
    manifest_digest,
    manifest_lines,
    sha256_file,
    verify_manifest,
)


def test_sha256_matches_hashlib_and_sha256sum(tmp_path):
    p = tmp_path / "a.bin"
    data = bytes(range(256)) * 5000  # > 1 MiB buffer
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()
    out = subprocess.run(["sha256sum", "a.bin"], cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout == manifest_lines([("a.bin", sha256_file(p))])


def test_verify_manifest_reports_changed_and_missing(tmp_path):
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    text = manifest_lines([(n, sha256_file(tmp_path / n)) for n in ("a", "b")])
    assert verify_manifest(tmp_path, text) == []
    (tmp_path / "a").write_bytes(b"changed")
    (tmp_path / "b").unlink()
    problems = {p.name: p.actual for p in verify_manifest(tmp_path, text)}
    assert set(problems) == {"a", "b"} and problems["b"] is None


def test_manifest_digest_is_order_independent():
    assert manifest_digest([("a", "1"), ("b", "2")]) == manifest_digest([("b", "2"), ("a", "1")])
    assert manifest_digest([("a", "1")]) != manifest_digest([("a", "2")])
