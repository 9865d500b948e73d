"""The project installs as a tool (issue 19): a wheel built from the tree, installed into a fresh virtual
environment (its dependencies taken from this one, so nothing is downloaded), gives `moe-core` and
`moe-explorer` that work from a directory outside the repository, with the bundled demo model as package data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.browser import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with the project's wheel installed (pip resolves the pinned dependencies as already
    there: the venv sees this interpreter's site-packages)."""
    work = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(work / "wheel"), str(ROOT)], check=True)  # fmt: skip
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(work / "venv")], check=True)
    wheel = next((work / "wheel").glob("*.whl"))
    pip = [str(work / "venv" / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True)
    return work / "venv" / "bin"


def _outside(tmp_path: Path) -> dict[str, str]:
    """An environment whose working directory and path know nothing of the repository."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "HOME": str(tmp_path)}


def _run(installed: Path, tmp_path: Path, *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(installed / command[0]), *command[1:]], cwd=tmp_path, env=_outside(tmp_path),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_moe_core_traces_the_bundled_model_from_any_directory(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, tmp_path, "moe-core", "trace", "--text", "Guten Tag", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"]["name"] == "demo-mixtral" and data["texts"] == ["Guten Tag"]
    where = _run(installed, tmp_path, "python", "-c", "import moe_core; print(moe_core.__file__)").stdout
    assert "site-packages" in where and str(ROOT) not in where  # the installed copy, not the checkout


def test_moe_explorer_serves_from_any_directory(installed: Path, tmp_path: Path) -> None:
    port = free_port()
    command = [str(installed / "moe-explorer"), "--server.headless", "true", "--server.address", "127.0.0.1",
               "--server.port", str(port), "--browser.gatherUsageStats", "false"]  # fmt: skip
    server = subprocess.Popen(command, cwd=tmp_path, env=_outside(tmp_path), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("moe-explorer did not answer its health check")
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "preloading the model failed" not in output, output
