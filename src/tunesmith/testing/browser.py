"""A real browser for the report's checks: headless Chromium driven over the DevTools protocol.

    with Chromium() as browser:
        page = browser.open("/path/report.html")      # waits for the load event
        page.console_errors, page.requests             # what the page logged and fetched
        browser.evaluate("document.title")             # a JavaScript value
        browser.screenshot("shot.png")                 # the full page

Needs Debian's `chromium` (apt-get install -y chromium; `find_chromium()` says where it is) and the
`websocket-client` package (the dev extra). Nothing here reaches the network: the browser starts
with a fresh profile and background networking off, and the pages it opens are local files.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = "install it with: apt-get install -y chromium (Debian's package; `make chromium` does it)"


def find_chromium() -> str | None:
    """The browser's executable ($CHROMIUM, else the first of CANDIDATES on PATH), or None."""
    env = os.environ.get("CHROMIUM")
    if env and Path(env).is_file():
        return env
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@dataclass
class Loaded:
    """What happened while a page loaded (and until `settle` seconds after)."""

    url: str
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class Chromium:
    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self._id = 0
        self._events: list[dict[str, Any]] = []

    def __enter__(self) -> "Chromium":
        import websocket  # websocket-client (dev extra)

        exe = find_chromium()
        if exe is None:
            raise RuntimeError(f"no Chromium found; {INSTALL_HINT}")
        self.profile = tempfile.mkdtemp(prefix="tunesmith-chromium-")
        args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-default-apps", "--metrics-recording-only", "--mute-audio",
                "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                f"--window-size={self.width},{self.height}", "about:blank"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True)
        for method in ("Page.enable", "Runtime.enable", "Log.enable", "Network.enable"):
            self.send(method)
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height, deviceScaleFactor=1,
                  mobile=False)
        return self

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"Chromium exited at start (code {self.proc.returncode})")
            time.sleep(0.05)
        raise RuntimeError("Chromium did not open its DevTools port")

    def __exit__(self, *exc) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result (events that arrive meanwhile are kept)."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._events.append(msg)

    def _wait_event(self, name: str) -> dict[str, Any]:
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            for i, ev in enumerate(self._events):
                if ev.get("method") == name:
                    return self._events.pop(i)
            self._events.append(json.loads(self.ws.recv()))
        raise TimeoutError(f"no {name} within {self.timeout} s")

    def open(self, path: str | Path, settle: float = 0.3) -> Loaded:
        """Load a local file and wait for its load event (then `settle` seconds for late requests)."""
        url = Path(path).resolve().as_uri()
        self._events.clear()
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired")
        time.sleep(settle)
        self.evaluate("1")  # drain what arrived while settling
        loaded = Loaded(url)
        for ev in self._events:
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                loaded.console_errors.append(" ".join(str(a.get("value", a.get("description", "")))
                                                      for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                loaded.console_errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                loaded.console_errors.append(params["entry"].get("text", ""))
            elif method == "Network.requestWillBeSent":
                req = params.get("request", {}).get("url", "")
                if req != url:
                    loaded.requests.append(req)
        return loaded

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-able values)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def screenshot(self, out: str | Path, full_page: bool = True) -> Path:
        """A PNG of the whole page (or the viewport)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"],
                                                           "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", **params)["data"]
        Path(out).write_bytes(base64.b64decode(data))
        return Path(out)
