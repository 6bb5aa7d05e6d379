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
from urllib.parse import unquote, urlparse

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
        # A resized page repaints over a few frames; on a busy machine capturing at once
        # gave blank bands. Wait for two frames and for every image to decode first.
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
                  ".then(() => Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))))")
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


def _wait_ready(browser) -> None:
    deadline = time.monotonic() + 20
    while browser.eval("document.getElementById('scroller').dataset.ready || ''") != "1":
        assert time.monotonic() < deadline, browser.eval("document.getElementById('scroller-status').textContent")
        time.sleep(0.05)


def _key(browser, key: str, code: int, text: str = "") -> None:
    for kind in ("keyDown", "keyUp"):
        browser.call("Input.dispatchKeyEvent", session=True, type=kind, key=key, code=key,
                     windowsVirtualKeyCode=code, nativeVirtualKeyCode=code, **({"text": text} if text and kind == "keyDown" else {}))


def _centre(browser, selector: str) -> list[float]:
    return browser.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")


AXIAL = "#scroller canvas[data-view=axial]"
GT_PIXELS = """(() => { let n = 0; const s = document.querySelector('#scroller input.slice');
  for (let k = 0; k <= +s.max; k += 1) { s.value = String(k); s.dispatchEvent(new Event('input'));
    const c = document.querySelector('%s'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) { if (d[i] === 255 && d[i + 1] === 61 && d[i + 2] === 245) { n += 1; } } }
  return n; })()""" % AXIAL


def _slice(browser) -> int:
    return int(browser.eval(f"document.querySelector('{AXIAL}').dataset.slice"))


def _gt_labels(scored_run: Path, tmp: Path) -> Path:
    """A labels CSV giving a ground-truth mask for lesion_RAS only (on its own grid)."""
    import nibabel as nib
    import numpy as np

    ref = nib.load(str(scored_run / "scans" / "lesion_RAS" / "anomaly_map.nii.gz"))
    gt = np.zeros(ref.shape, np.uint8)
    c = np.array(ref.shape) // 2 + np.array([3, 2, 2])
    gt[c[0] - 2:c[0] + 2, c[1] - 2:c[1] + 2, c[2] - 2:c[2] + 2] = 1
    nib.save(nib.Nifti1Image(gt, ref.affine), tmp / "gt_lesion_RAS.nii.gz")
    labels = tmp / "labels.csv"
    labels.write_text("scan_id,label,mask_path\nlesion_RAS,1,gt_lesion_RAS.nii.gz\nlesion_LPS,1,\n")
    return labels


def test_report_pages_in_browser(scored_run, browser, tmp_path):
    index = build_report(scored_run, labels=_gt_labels(scored_run, tmp_path))
    report = index.parent
    pages = [index, *sorted((report / "scans").glob("*.html"))]
    assert len(pages) == 5
    for page in pages:
        events = browser.open(page.as_uri())
        if page.stem.startswith("lesion"):
            _wait_ready(browser)
        assert not _problems(browser.events), (page.name, _problems(browser.events))
        urls = _requests(events)
        assert urls and all(u.startswith(("file://", "data:")) for u in urls), urls
        assert "http://" not in page.read_text() and "https://" not in page.read_text(), page.name
        images = browser.eval("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
                              "i.naturalWidth])")
        for src, complete, width in images:
            assert complete and width > 0, (page.name, src)
        # every link resolves to a file that exists (outputs, prev/next, index)
        hrefs = browser.eval("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        for href in hrefs:
            assert href.startswith("file://"), href
            assert Path(unquote(urlparse(href).path)).is_file(), (page.name, href)
        # nothing overflows sideways at 1024 px
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1024, height=800,
                     deviceScaleFactor=1, mobile=False)
        assert browser.eval("document.documentElement.scrollWidth") <= 1024, page.name
        browser.call("Emulation.clearDeviceMetricsOverride", session=True)
    # the scan page links every output file of its scan
    browser.open((report / "scans" / "lesion_RAS.html").as_uri())
    linked = browser.eval("Array.from(document.querySelectorAll('#output-links a')).map(a => a.textContent)")
    outputs = json.loads((scored_run / "scans" / "lesion_RAS" / "result.json").read_text())["outputs"]
    assert set(linked) == {*outputs.values(), "result.json"}
    # the index: keyboard sorting (Enter on the score header's button) and the filters
    browser.open(index.as_uri())
    order = lambda: browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"  # noqa: E731
                                 ".map(r => r.dataset.id)")
    visible = lambda: browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"  # noqa: E731
                                   ".filter(r => r.offsetParent !== null).map(r => r.dataset.id)")
    before = order()
    assert before[-1] == "broken"
    browser.screenshot(tmp_path / "report_index.png", width=1024)
    browser.screenshot(ARTIFACTS / "report_index.png", width=1024)
    browser.eval("document.querySelector('th[data-key=score] button').focus()")
    _key(browser, "Enter", 13, "\r")
    after = order()
    assert after != before and sorted(after) == sorted(before)
    assert browser.eval("document.querySelector('th[data-key=score]').getAttribute('aria-sort')") == "ascending"
    scores = browser.eval("Array.from(document.querySelectorAll('#scan-table tbody tr'))"
                          ".map(r => r.cells[3].dataset.v).filter(v => v !== '').map(parseFloat)")
    assert scores == sorted(scores)  # ascending after one press on a descending column
    assert after[-1] == "broken"  # missing scores stay last
    browser.click("th[data-key=score] button")
    assert order()[: len(scores)] == before[: len(scores)]
    browser.click("#only-failed")
    assert visible() == ["broken"]
    browser.click("#only-failed")
    browser.click("#only-flagged")
    flagged = [d for d in before if d != "broken"]
    n_flagged = int(browser.eval("document.getElementById('n-flagged').textContent"))
    assert len(visible()) == n_flagged and set(visible()) <= set(flagged)
    browser.click("#only-flagged")

    # scan pages: one colour scale, the scroller by keyboard and wheel, ground truth only where given
    scales = []
    for name in ("lesion_RAS", "lesion_LPS"):
        browser.open((report / "scans" / f"{name}.html").as_uri())
        _wait_ready(browser)
        scales.append(browser.eval("(() => { const i = document.getElementById('colour-scale'); "
                                   "const m = JSON.parse(document.getElementById('scroller-meta').textContent);"
                                   " return [i.src, i.dataset.vmax, i.dataset.threshold, m.vmax, m.threshold, m.lut]; })()"))
        gt_pixels = browser.eval(GT_PIXELS)
        has_legend = browser.eval("!!document.getElementById('legend-gt')")
        if name == "lesion_RAS":
            assert gt_pixels > 0 and has_legend
        else:
            assert gt_pixels == 0 and not has_legend
    assert scales[0] == scales[1]
    assert float(scales[0][1]) == scales[0][3] > 0

    browser.open((report / "scans" / "lesion_LPS.html").as_uri())
    _wait_ready(browser)
    start = _slice(browser)
    n = int(browser.eval(f"document.querySelector('{AXIAL}').closest('.plane').querySelector('input.slice').max")) + 1
    step = 1 if start < n - 1 else -1
    browser.eval(f"document.querySelector('{AXIAL}').focus()")
    _key(browser, "ArrowUp" if step > 0 else "ArrowDown", 38 if step > 0 else 40)
    assert _slice(browser) == start + step
    readout = browser.eval("document.getElementById('scroller-readout').textContent")
    assert "RAS (" in readout and "anomaly" in readout
    x, y = _centre(browser, AXIAL)
    browser.call("Input.dispatchMouseEvent", session=True, type="mouseWheel", x=x, y=y, deltaX=0,
                 deltaY=120 if step > 0 else -120)
    assert _slice(browser) == start  # wheel down goes back one slice (the way ArrowDown does)
    assert browser.eval(f"document.querySelector('{AXIAL}').closest('.plane').querySelector('input.slice').value") == str(start)
    assert not _problems(browser.events)
    browser.screenshot(tmp_path / "report_scan.png", width=1024)
    browser.screenshot(ARTIFACTS / "report_scan.png", width=1024)
    assert (ARTIFACTS / "report_index.png").stat().st_size > 10_000
