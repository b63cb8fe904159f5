"""Servers for the deployment tests, started and stopped by the tests themselves, on loopback
only: a PostgreSQL cluster in a temporary data directory (run as the ``postgres`` user, since
PostgreSQL refuses root) and an S3-protocol server (moto) in a thread of the test process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import s3fs


def _pg_bin() -> Path:
    """``$FIB_ASSETS_PG_BIN``, else the newest Debian PostgreSQL server (15 on bookworm)."""
    if os.environ.get("FIB_ASSETS_PG_BIN"):
        return Path(os.environ["FIB_ASSETS_PG_BIN"])
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    return found[-1].parent if found else Path("/usr/lib/postgresql/15/bin")


PG_BIN = _pg_bin()
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    database: str
    data_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables k8s/dagster.yaml reads (trust auth: any password)."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": self.database,
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
        }

    def connect(self):  # -> psycopg2 connection
        import psycopg2

        return psycopg2.connect(
            host=self.host, port=self.port, user=self.user, dbname=self.database
        )


def _as_postgres(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    runuser = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*runuser, *args], check=True, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL 15 cluster on 127.0.0.1:<free port>, removed afterwards."""
    if not (PG_BIN / "initdb").exists():
        pytest.fail(f"{PG_BIN}/initdb not found: install Debian's postgresql (make system-deps)")
    base = Path(tempfile.mkdtemp(prefix="fib-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    base.chmod(0o700)
    data = base / "data"
    port = free_port()
    _as_postgres(
        str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
        "-E", "UTF8", "--no-sync",
    )  # fmt: skip
    options = (
        f"-c listen_addresses={LOOPBACK} -p {port} -k {base} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    _as_postgres(
        str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "server.log"),
        "-w", "-t", "60", "start",
    )  # fmt: skip
    try:
        import psycopg2

        conn = psycopg2.connect(host=LOOPBACK, port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE dagster")
        conn.close()
        yield PostgresServer(LOOPBACK, port, "postgres", "dagster", data)
    finally:
        try:
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        except subprocess.SubprocessError:
            # pg_ctl could not stop it: end exactly the postmaster we started, by its pid
            pid_file = data / "postmaster.pid"
            if pid_file.exists():
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
                time.sleep(2)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    bucket: str

    def url(self, *keys: str) -> str:
        return "/".join([f"s3://{self.bucket}", *keys])


S3_TEST_ENV = {
    # moto accepts any credentials; real ones never reach the tests
    "AWS_ACCESS_KEY_ID": "fib-assets-test",
    "AWS_SECRET_ACCESS_KEY": "fib-assets-test",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
    # never ask an instance-metadata address for credentials
    "AWS_EC2_METADATA_DISABLED": "true",
}


def s3_client(endpoint: str, *, asynchronous: bool = False) -> s3fs.S3FileSystem:
    """An s3fs client of the tests' own (not fib_assets.core.storage's), for independent reads
    of what the code wrote; never cached, so every call sees the bucket as it is now.
    ``asynchronous=True`` gives the kind zarr's ``FsspecStore`` requires."""
    import s3fs

    return s3fs.S3FileSystem(
        key=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
        secret=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=endpoint,
        use_listings_cache=False,
        skip_instance_cache=True,
        asynchronous=asynchronous,
    )


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1:<free port>, with ``AWS_ENDPOINT_URL`` pointing at it
    for the tests of one module (so no request can leave the machine)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    mp = pytest.MonkeyPatch()
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        mp.delenv(key, raising=False)
    for key, value in {**S3_TEST_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        mp.setenv(key, value)
    try:
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="fib-assets")
        yield S3Server(endpoint, "fib-assets")
    finally:
        mp.undo()
        server.stop()


@pytest.fixture()
def scratch(tmp_path, monkeypatch) -> Path:
    """A pod-local scratch dir of our own (the ledger cache), so tests can 'replace the pod'."""
    path = tmp_path / "scratch"
    monkeypatch.setenv("FIB_ASSETS_SCRATCH", str(path))
    return path
