"""The README's walkthroughs, run as they stand (bash, from the repository root) with their
printed answers checked: a walkthrough that stops pasting is a failing test."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def readme_block(heading: str) -> str:
    """The first ```sh block after the line ``heading`` in README.md."""
    text = (ROOT / "README.md").read_text()
    start = text.index(heading + "\n")
    m = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M).search(text, start)
    assert m is not None, f"no sh block after {heading!r}"
    return m.group(1)


def run_block(script: str, timeout: float = 180) -> str:
    """Run ``script`` with bash in the repository; its processes are killed afterwards."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FLEET_EDGE_", "FLEET_CENTRAL_"))}
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the walkthrough did not finish in {timeout} s:\n{out}") from None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return out


def test_security_walkthrough_pastes_as_is() -> None:
    script = readme_block("### Walkthrough: TLS and mutual TLS with openssl")
    out = run_block(script)
    lines = out.splitlines()
    # every JSON answer the README shows is printed as shown
    for shown in re.findall(r"^# (\{.*\})$", script, re.M):
        assert shown in lines, f"README shows {shown}, the run printed:\n{out}"
    assert "204" in lines, out
    assert "tlsv13 alert certificate required" in out, out
    assert any(ln.startswith("central   https://127.0.0.1:9443: connected") for ln in lines)
    key = next(ln for ln in lines if ln.startswith("key       "))
    assert "(config), expires" in key and "(in 90 days)" in key, key
    assert any(ln.startswith("tls       listener certificate CN=edge") and
               ln.endswith("client certificates required") for ln in lines), out
    assert re.search(r"node\.add\s+cli:\S+\s+acme/site-1-gw", out), out
    assert "Traceback" not in out, out
