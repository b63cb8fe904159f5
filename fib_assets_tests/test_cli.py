"""The `fib-assets` console script, run as a user would (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from fib_assets.core.acquisition.dat import read_dat, write_dat

CLI = str(Path(sys.executable).with_name("fib-assets"))


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    "command",
    [
        "--help",
        "dat-header --help",
        "dat-read --help",
        "synth --help",
        "status --help",
        "demo --help",
    ],
)
def test_help(command):
    proc = run(*command.split())
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout


def test_dat_header_of_the_real_fixture(fixtures_dir):
    proc = run("dat-header", str(fixtures_dir / "janelia_v9_header_truncated.dat"))
    assert proc.returncode == 0, proc.stderr
    header = json.loads(proc.stdout)
    assert header["FileVersion"] == 9
    assert header["ChanNum"] == 2
    assert (header["XResolution"], header["YResolution"]) == (8688, 3500)
    assert abs(header["PixelSize"] - 8.0) < 0.01


def test_dat_read_refuses_truncated_pixels_with_one_line(fixtures_dir, tmp_path):
    out = tmp_path / "x.tif"
    proc = run("dat-read", str(fixtures_dir / "janelia_v9_header_truncated.dat"), "--out", str(out))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and "truncated" in lines[0]
        and "janelia_v9_header_truncated.dat" in lines[0]
    )
    assert not out.exists()


def test_dat_read_writes_tiff_equal_to_pixels(tmp_path):
    rng = np.random.default_rng(0)
    px = rng.integers(-2000, 30000, size=(2, 20, 30), dtype=np.int16)
    src = tmp_path / "s.dat"
    write_dat(src, px, fields={"PixelSize": 8.0})
    out = tmp_path / "s.tif"
    proc = run("dat-read", str(src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(tifffile.imread(out), read_dat(src)[1])


def test_synth_writes_regions_and_rejects_unknown_artefacts(tmp_path):
    proc = run(
        "synth", "--out", str(tmp_path), "--regions", "2", "--shape", "8,32,32", "--seed", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "landing" / "r002" / "region.yaml").exists()
    bad = run("synth", "--out", str(tmp_path / "b"), "--artefacts", "smudge")
    assert bad.returncode != 0 and "smudge" in bad.stderr
