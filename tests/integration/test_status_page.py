"""The status page in real headless Chromium (Debian ``chromium``), with every host but
127.0.0.1 unresolvable: the page must render from what the node serves alone.

Two checks: the DOM after the page's script ran (content), and a screenshot (pixels of the
"ready" badge's green and the charts' blue prove the styles and SVG charts rendered). Set
``FLEET_SCREENSHOT_DIR`` to keep the screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
import trio

from edge_node.node import open_edge_node
from tests.conftest import Central, edge_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"


def _chromium(*args: str) -> list[str]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/backends installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--no-first-run", OFFLINE, "--virtual-time-budget=4000", *args]


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, rows of RGB(A) bytes) of an 8-bit RGB or RGBA PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    bpp = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            bpp = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, height, [r if bpp == 3 else bytes(x for j, x in enumerate(r) if j % 4 != 3)
                           for r in rows]


def count_color(rows: list[bytes], rgb: tuple[int, int, int], tol: int = 12) -> int:
    n = 0
    for r in rows:
        for i in range(0, len(r), 3):
            if all(abs(r[i + k] - rgb[k]) <= tol for k in range(3)):
                n += 1
    return n


async def test_status_page_renders_offline_in_chromium(tmp_path: Path, central: Central) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("groups:\n- name: g\n  interval: 1s\n  rules:\n  - alert: PumpHot\n"
                     "    expr: pump_temp > 90\n")
    cfg = edge_config(tmp_path, central, host={"enabled": True, "interval_s": 1.0},
                      status={"step_s": 1.0}, alerts={"rule_files": str(rules)})
    async with open_edge_node(cfg) as node, httpx.AsyncClient() as c:
        for i in range(4):
            for dev in ("pump-1", "cam-2"):
                r = await c.post(node.url + "/api/v1/ingest", json={
                    "device_id": dev, "labels": {"site": "plant-7"},
                    "metrics": [{"name": "pump_temp", "value": 95.0 + i}]})
                assert r.status_code == 204
            await node.status.sample()
            await trio.sleep(1.0)
        # a device whose clock runs two days ahead (its samples are corrected, and listed)
        r = await c.post(node.url + "/api/v1/ingest", json={
            "device_id": "meter-9", "labels": {"site": "plant-7"},
            "metrics": [{"name": "kwh", "value": 1.0,
                         "ts": int(time.time() * 1000) + 2 * 86_400_000}]})
        assert r.status_code == 204
        await node.status.sample()
        assert node.alerts is not None and node.alerts.summary()

        with trio.fail_after(120):
            dom = (await trio.run_process(_chromium("--dump-dom", node.url + "/"),
                                          capture_stdout=True, capture_stderr=True)
                   ).stdout.decode()
        assert 'data-loaded="1"' in dom, dom[-2000:]  # the script ran and rendered
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
        text = re.sub(r"<[^>]+>", " ", body)
        text = re.sub(r"\s+", " ", text)
        assert "fleet-edge edge-1" in text and " ready " in text
        assert "central connected" in text
        for dev in ("pump-1", "cam-2", "edge-1"):
            assert f"{dev} plant-7 online" in text or f"{dev} online" in text, dev
        assert "PumpHot" in text and "firing" in text
        # both devices' PumpHot; a built-in alert may fire too on a loaded box (e.g. the
        # ingest rate dropping when the posts stop), so the card counts at least these
        assert text.count("firing PumpHot") == 2, text
        m = re.search(r"Alerts firing\s+(\d+)\s+0 pending", text)
        assert m is not None and int(m.group(1)) >= 2, text[:600]
        assert "native" in text  # ingest by protocol
        assert "Gateway CPU" in text and "Memory used" in text
        assert "meter-9 2.0 d ahead correct" in text, text[-800:]  # the clocks table
        assert '<span id="error"></span>' in dom  # the page reached the node
        synced = (await c.get(node.url + "/api/v1/status")).json()["clock_synchronized"]
        clock_pill = re.search(r'<span id="clock"[^>]*>', dom)
        assert clock_pill and ("hidden" in clock_pill.group(0)) == (synced is not False)
        assert dom.count('data-figure="') == 8
        assert dom.count("<path ") >= 6  # charts with lines (ingest, buffer, devices, ...)

        shot = tmp_path / "status.png"
        with trio.fail_after(120):
            await trio.run_process(_chromium("--window-size=1280,1400",
                                             f"--screenshot={shot}", node.url + "/"),
                                   capture_stdout=True, capture_stderr=True)
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 1400)
    assert count_color(rows[:60], (0x1A, 0x7F, 0x37)) > 200  # the green "ready" badge
    assert count_color(rows, (0x09, 0x69, 0xDA)) > 300  # chart lines
    assert count_color(rows, (0xCF, 0x22, 0x2E)) > 100  # the red "firing" badge
    keep = os.environ.get("FLEET_SCREENSHOT_DIR")
    if keep:
        os.makedirs(keep, exist_ok=True)
        shutil.copy(shot, os.path.join(keep, "status-page.png"))
