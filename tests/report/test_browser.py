"""The report in a real headless browser (Debian's chromium), driven over the
Chrome DevTools Protocol through ``--remote-debugging-pipe`` (stdlib only).

Checks: every page loads with no console errors or failed requests, every image
decodes (naturalWidth > 0), nothing is fetched from the network, and clicking
the score header re-orders the rows. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from medidiff.report.build import build_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"),
]


class Browser:
    """Minimal CDP client: one page target, flattened session, JSON messages over fds 3/4."""

    def __init__(self, user_data_dir: Path, timeout: float = 30.0):
        self.timeout = timeout
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()
        # chromium reads commands on fd 3 and writes replies on fd 4; park the child's ends
        # above 10 first so the dup2 calls below never overwrite one another
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)

        def _fds():  # in the child, before exec: dup2 makes 3 and 4 inheritable
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={user_data_dir}", "--remote-debugging-pipe", "about:blank"]
        self.log_path = Path(user_data_dir) / "chromium.log"
        with open(self.log_path, "wb") as log:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(args, preexec_fn=_fds, close_fds=False, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        for fd in (to_child_r, from_child_w, child_r, child_w):
            os.close(fd)
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)

    def _send(self, msg: dict) -> None:
        os.write(self._w, json.dumps(msg).encode() + b"\0")

    def _recv(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply from chromium")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited: {self.log_path.read_text(errors='replace')[-2000:]}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        self._send(msg)
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._recv(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, since: int) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for ev in self.events[since:]:
                if ev.get("method") == method:
                    return ev
            self.events.append(self._recv(deadline))

    def eval(self, expression: str):
        res = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"JS error in {expression!r}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def open(self, url: str) -> list[dict]:
        """Navigate, wait for load (and image decoding); returns the events of this page load."""
        start = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired", start)
        self.eval("Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null)))")
        return self.events[start:]

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=box[0], y=box[1], button="left",
                      clickCount=1)

    def screenshot(self, path: Path, width: int = 1280) -> None:
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=800,
                  deviceScaleFactor=1, mobile=False)
        height = int(self.eval("Math.ceil(document.documentElement.scrollHeight)"))  # at this width
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=min(height, 6000),
                  deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.clearDeviceMetricsOverride", session=True)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


def _problems(events: list[dict]) -> list[str]:
    out = []
    for ev in events:
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            out.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            out.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            out.append(f"failed request: {p.get('errorText')}")
    return out


def _requests(events: list[dict]) -> list[str]:
    return [ev["params"]["request"]["url"] for ev in events if ev.get("method") == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_report_pages_in_browser(scored_run, browser):
    index = build_report(scored_run)
    report = index.parent
    pages = [index, *sorted((report / "scans").glob("*.html"))]
    assert len(pages) == 5
    for page in pages:
        events = browser.open(page.as_uri())
        assert not _problems(events), (page.name, _problems(events))
        urls = _requests(events)
        assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
        images = browser.eval("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                              "i.naturalWidth])")
        for src, complete, width in images:
            assert complete and width > 0, (page.name, src)
        if page.stem.startswith("lesion"):
            assert len(images) == 4, images  # views, mosaic, compare, distribution
    # the index: sorting by clicking the score header, and the filters
    browser.open(index.as_uri())
    order = lambda: browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"  # noqa: E731
                                 ".map(r => r.dataset.id)")
    visible = lambda: browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"  # noqa: E731
                                   ".filter(r => r.offsetParent !== null).map(r => r.dataset.id)")
    before = order()
    assert before[-1] == "broken"
    browser.screenshot(ARTIFACTS / "report_index.png")
    browser.click("th[data-key=score]")
    after = order()
    assert after != before and sorted(after) == sorted(before)
    scores = browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"
                          ".map(r => r.cells[2].dataset.v).filter(v => v !== '').map(parseFloat)")
    assert scores == sorted(scores)  # ascending after one click on a descending column
    assert after[-1] == "broken"  # missing scores stay last
    browser.click("th[data-key=score]")
    assert order()[: len(scores)] == before[: len(scores)]
    browser.click("#only-failed")
    assert visible() == ["broken"]
    browser.click("#only-failed")
    browser.click("#only-flagged")
    flagged = [d for d in before if d != "broken"]
    n_flagged = int(browser.eval("document.getElementById('n-flagged').textContent"))
    assert len(visible()) == n_flagged and set(visible()) <= set(flagged)
    browser.click("#only-flagged")
    # one scan page
    browser.open((report / "scans" / "lesion_LPS.html").as_uri())
    browser.screenshot(ARTIFACTS / "report_scan.png")
    assert (ARTIFACTS / "report_index.png").stat().st_size > 10_000
