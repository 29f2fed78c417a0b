"""Open a local HTML file in a real headless Chromium (Debian `chromium`) through the DevTools
protocol: take a screenshot, read the rendered DOM, and record every network request the page
makes. Used by the report tests; nothing leaves the machine."""
from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--hide-scrollbars"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    screenshot_png: bytes
    dom: str
    requests: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)   # each expression's JSON value
    load_s: float = 0.0    # navigation to the load event


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visit(html: Path, *, width: int = 1280, height: int = 2000, timeout: float = 60.0,
          expressions: dict[str, str] | None = None) -> PageVisit:
    """Load ``html`` and return its screenshot, DOM and the URLs of every request it issued,
    plus the value of each JavaScript ``expressions[name]`` evaluated in the loaded page (it
    should return something JSON can carry: measurements of the rendered layout)."""
    import websocket  # websocket-client

    port = _free_port()
    profile = tempfile.mkdtemp(prefix="vpeft-chromium-")
    proc = subprocess.Popen([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--remote-debugging-port={port}", f"--window-size={width},{height}",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                    targets = [t for t in json.load(r) if t.get("type") == "page"]
                if targets:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium's DevTools endpoint did not come up")
            time.sleep(0.1)
        ws = websocket.create_connection(targets[0]["webSocketDebuggerUrl"], timeout=timeout)
        counter = iter(range(1, 10_000))
        requests: list[str] = []

        def call(method: str, **params):
            msg_id = next(counter)
            ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("method") == "Network.requestWillBeSent":
                    requests.append(msg["params"]["request"]["url"])
                if msg.get("method") == "Page.loadEventFired":
                    loaded.append(True)
                if msg.get("id") == msg_id:
                    return msg.get("result", {})

        loaded: list[bool] = []
        call("Network.enable")
        call("Page.enable")
        call("Emulation.setDeviceMetricsOverride", width=width, height=height,
             deviceScaleFactor=1, mobile=False)
        started = time.monotonic()
        call("Page.navigate", url=html.resolve().as_uri())
        while not loaded and time.monotonic() < deadline:
            call("Runtime.evaluate", expression="document.readyState")
        load_s = time.monotonic() - started
        time.sleep(0.5)  # let any late (lazy) request show up
        values = {}
        for name, expression in (expressions or {}).items():
            result = call("Runtime.evaluate", expression=expression, returnByValue=True)
            if "exceptionDetails" in result:
                raise RuntimeError(f"{name}: {result['exceptionDetails']}")
            values[name] = result["result"].get("value")
        dom = call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                   returnByValue=True)["result"]["value"]
        shot = base64.b64decode(call("Page.captureScreenshot", format="png")["data"])
        ws.close()
        return PageVisit(shot, dom, requests, values, load_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)
