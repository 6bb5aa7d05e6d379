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
        # lazy thumbnails below the fold never load in a small headless viewport: load them all
        self.eval("Promise.all(Array.from(document.images).map(i => { i.loading = 'eager'; "
                  "return i.decode().catch(() => null); }))")
        return self.events[start:]

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
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
    return browser.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView({{block: 'center'}});"
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


# --------------------------------------------------------------------------------------------
# issue 28: the sentence, warnings, numbers that agree, failed scans, the viewer

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "report_screenshots"
CLUSTER_PEAKS = "Array.from(document.querySelectorAll('#clusters td.peak')).map(td => parseFloat(td.dataset.v))"
META = "JSON.parse(document.getElementById('scroller-meta').textContent)"


def _plane_slices(browser) -> dict[str, int]:
    return browser.eval("Object.fromEntries(Array.from(document.querySelectorAll('#scroller canvas'))"
                        ".map(c => [c.dataset.view, parseInt(c.dataset.slice, 10)]))")


def _check_cluster_jump(browser, row: int = 0) -> None:
    """Move the viewer away from cluster ``row``, click its button, and check every plane went there."""
    meta = browser.eval(META)
    target = meta["clusters"][row]
    views = {v["name"]: v for v in meta["views"]}
    ax = views["axial"]["slice_axis"]
    away = (target[ax] + meta["shape"][ax] // 2) % meta["shape"][ax]
    browser.eval(f"(() => {{ const s = document.querySelector('{AXIAL}').closest('.plane').querySelector('input.slice');"
                 f" s.value = '{away}'; s.dispatchEvent(new Event('input')); }})()")
    assert _slice(browser) == away != target[ax]
    browser.click(f'button.jump[data-cluster="{row}"]')
    slices = _plane_slices(browser)
    for name, v in views.items():
        assert slices[name] == target[v["slice_axis"]], (name, slices, target)
    assert browser.eval("document.getElementById('scroller').dataset.clusterShown") == str(row)
    # the readout names the voxel the click went to: within a few voxels of the table's centre
    readout = browser.eval("document.getElementById('scroller-readout').textContent")
    at = [float(x) for x in readout.split("(")[1].split(")")[0].split(",")]
    centre = browser.eval(f"document.querySelectorAll('#clusters tbody tr')[{row}].cells[4].textContent")
    centre = [float(x) for x in centre.strip("() ").split(",")]
    step = max(abs(v) for row_ in meta["affine"][:3] for v in row_[:3])
    assert max(abs(a - c) for a, c in zip(at, centre)) <= 3 * step + 1, (readout, centre)


def _with_clusters(scored_run: Path, tmp: Path) -> tuple[Path, float]:
    """A copy of the run whose lesion_LPS map and mask hold two clusters above the voxel threshold
    and one piece of mask whose map values lie below it (as nearest-neighbour resampling of the
    model-grid decision next to an interpolated map can leave)."""
    import nibabel as nib
    import numpy as np

    run = tmp / "run"
    shutil.copytree(scored_run, run, ignore=shutil.ignore_patterns("report", ".report*"))
    thr = json.loads((run / "run.json").read_text())["calibration"]["voxel_threshold"]
    scan = run / "scans" / "lesion_LPS"
    ref = nib.load(str(scan / "anomaly_map.nii.gz"))
    amap = np.zeros(ref.shape, np.float32)
    mask = np.zeros(ref.shape, np.uint8)
    c = np.array(ref.shape) // 2
    for (dx, dy, dz), r, v in (((-6, 0, 3), 2, 2.0), ((6, 4, -4), 1, 1.5), ((0, -8, 0), 1, 0.5)):  # 25×29×24 grid
        x, y, z = c + (dx, dy, dz)
        amap[x - r:x + r, y - r:y + r, z - r:z + r] = v * thr
        mask[x - r:x + r, y - r:y + r, z - r:z + r] = 1
    nib.save(nib.Nifti1Image(amap, ref.affine), scan / "anomaly_map.nii.gz")
    nib.save(nib.Nifti1Image(mask, ref.affine), scan / "mask.nii.gz")
    return run, thr


def test_clusters_never_below_the_threshold_and_a_click_moves_the_viewer(scored_run, browser, tmp_path):
    run, threshold = _with_clusters(scored_run, tmp_path)
    index = build_report(run)
    listed = 0
    for page in sorted((index.parent / "scans").glob("*.html")):
        browser.open(page.as_uri())
        peaks = browser.eval(CLUSTER_PEAKS)
        listed += len(peaks)
        assert all(p >= threshold for p in peaks), (page.name, peaks, threshold)
        assert not _problems(browser.events)
    assert listed == 2  # the third piece of the mask is below the threshold: counted, not listed
    browser.open((index.parent / "scans" / "lesion_LPS.html").as_uri())
    assert "1 further piece of the mask" in browser.eval("document.getElementById('why').textContent")
    text = browser.eval("document.getElementById('why-sentence').textContent")
    first = browser.eval("Array.from(document.querySelectorAll('#clusters tbody tr')[0].cells).map(c => c.textContent)")
    assert text.startswith(f"Flagged: " if "FLAGGED" in browser.eval("document.querySelector('header').textContent")
                           else "Not flagged: ")
    assert "cm³ of brain lies above the voxel threshold" in text  # this run's score type is supra_volume
    assert f"cluster 1 below, {first[1]} cm³" in text and first[5] in text
    _wait_ready(browser)
    _check_cluster_jump(browser)
    # display controls redraw the planes: overlay off leaves only grey pixels
    colourful = ("(() => { const c = document.querySelector('%s'); const d = c.getContext('2d')"
                 ".getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 0; i < d.length; i += 4) {"
                 " if (d[i] - d[i + 2] > 40 && d[i] >= d[i + 1]) { n += 1; } } return n; })()" % AXIAL)  # not the green cross
    before = browser.eval(colourful)
    browser.click("#ov-outline")
    browser.click("#ov-on")
    assert before > 0 and browser.eval(colourful) == 0
    letters = browser.eval("Array.from(document.querySelectorAll('#scroller .plane[data-view=axial] .edge'))"
                           ".map(e => e.textContent)")
    assert letters == ["R", "L", "A", "P"]  # left, right, top, bottom: radiological
    label = browser.eval("document.querySelector('#scroller .plane[data-view=axial] .slice-label').textContent")
    assert label.startswith("z = ") and " mm" in label
    # one scale for the three planes: the same screen pixels per millimetre
    meta = browser.eval(META)
    per_mm = {v["name"]: (v["sx"] / abs(meta["affine"][v["h_axis"]][v["h_axis"]]),
                          v["sy"] / abs(meta["affine"][v["v_axis"]][v["v_axis"]])) for v in meta["views"]}
    flat_ = [x for pair in per_mm.values() for x in pair]
    assert max(flat_) - min(flat_) < 1e-3, per_mm


def test_an_invalid_calibration_shows_a_banner_on_every_page(scored_run, browser, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(scored_run, run, ignore=shutil.ignore_patterns("report", ".report*"))
    info = json.loads((run / "run.json").read_text())
    reason = "the thresholds were measured in bf16 on a CPU; this run scored in fp32 on a GPU"
    warning = ("only 9 healthy scans for a 0.05 scan false-positive rate: at least 20 are needed to place that "
               "threshold")
    info["calibration"].update(valid=False, invalid_reason=reason, warnings=[warning])
    (run / "run.json").write_text(json.dumps(info))
    index = build_report(run)
    pages = [index, *sorted((index.parent / "scans").glob("*.html"))]
    assert len(pages) == 5
    for page in pages:
        browser.open(page.as_uri())
        banner = browser.eval("(() => { const b = document.getElementById('calibration-banner');"
                              " return b ? [b.textContent, b.getBoundingClientRect().height] : null; })()")
        assert banner and reason in banner[0] and banner[1] > 0, page.name
        assert warning in browser.eval("document.getElementById('calibration-warnings').textContent"), page.name
    browser.open((index.parent / "scans" / "lesion_RAS.html").as_uri())
    assert browser.eval("document.getElementById('why-sentence').textContent").startswith("No valid flag")
    # a run without the new keys (older runs): no banner
    browser.open(build_report(scored_run).as_uri())
    assert browser.eval("document.getElementById('calibration-banner')") is None


def _shot(browser, path: Path, width: int = 1280, max_height: int = 6000) -> None:
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=800, deviceScaleFactor=1,
                 mobile=False)
    height = int(browser.eval("Math.ceil(document.documentElement.scrollHeight)"))
    browser.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=min(height, max_height),
                 deviceScaleFactor=1, mobile=False)
    browser.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
                 ".then(() => Promise.all(Array.from(document.images).map(i => i.decode().catch(() => null))))")
    data = browser.call("Page.captureScreenshot", session=True, format="png")["data"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(data))
    browser.call("Emulation.clearDeviceMetricsOverride", session=True)


def test_real_head_lesion_and_failure_read_as_a_reader_needs(real_run, browser):
    from medidiff.report.explain import cm3

    out, labels, lesioned = real_run
    index = build_report(out, labels=labels)
    report = index.parent
    results = {p.parent.name: json.loads(p.read_text()) for p in (out / "scans").glob("*/result.json")}
    head = next(k for k, r in results.items() if r["format"].startswith("dicom"))
    failed = next(k for k, r in results.items() if r["status"] != "ok")
    threshold = json.loads((out / "run.json").read_text())["calibration"]["voxel_threshold"]

    browser.open(index.as_uri())
    assert not _problems(browser.events)
    rows = browser.eval("Object.fromEntries(Array.from(document.querySelectorAll('#scan-table tbody tr'))"
                        ".map(r => [r.dataset.id, [r.dataset.pattern, r.dataset.warn]]))")
    assert rows[head][1] == "1"  # QC outside the calibration range counts as a QA warning
    assert int(browser.eval("document.getElementById('n-warnings').textContent")) >= 1
    for kind in ("focal", "widespread"):
        assert int(browser.eval(f"document.getElementById('n-{kind}').textContent")) == \
            sum(p == kind for p, _ in rows.values())
    assert "{" not in browser.eval("document.getElementById('scan-table').textContent")  # no dicts or matrices
    # a largest-cluster run never calls its score "brain volume above the voxel threshold" (issue 24)
    caption = browser.eval("document.querySelector('#scan-table caption').textContent")
    rule = browser.eval("document.getElementById('threshold-text').textContent")
    run_cfg = json.loads((out / "run.json").read_text())["score_config"]
    kind = run_cfg["score"]  # the model's own method (models/brain_t1_4mm: chosen on real val heads)
    if kind == "largest_cluster":
        assert "largest cluster" in caption and "brain volume" not in caption
        assert rule.startswith("Scans are flagged when their largest cluster of voxels above the voxel threshold")
    else:
        from medidiff.report.explain import what_score

        assert what_score(kind, run_cfg) in caption and "brain volume" not in caption
        assert rule.startswith(f"Scans are flagged when the score ({what_score(kind, run_cfg)}) exceeds")
    thumbs = browser.eval("Array.from(document.querySelectorAll('img.thumb')).map(i => [i.naturalWidth, "
                          "i.naturalHeight, i.getBoundingClientRect().height])")
    assert len(thumbs) == 3 and all(w > 0 and h > 0 and 0 < shown <= 72.5 for w, h, shown in thumbs)
    _shot(browser, SCREENSHOTS / "index.png")

    for sid in (head, lesioned):
        res = results[sid]
        browser.open((report / "scans" / f"{sid}.html").as_uri())
        _wait_ready(browser)
        assert not _problems(browser.events), sid
        text = browser.eval("document.getElementById('why-sentence').textContent")
        assert browser.eval("document.getElementById('why-sentence').dataset.kind") == kind
        # the sentence states the decision's own number and the score type ...
        if kind == "largest_cluster":
            assert text.startswith("Flagged: its largest cluster of voxels above the voxel threshold") == bool(res["flag"])
            assert f"measures {cm3(res['score'])} cm³ on the model's grid" in text
        else:
            assert text.startswith("Flagged: ") == bool(res["flag"])
            assert f"its score is {res['score']:.3g} ({what_score(kind, run_cfg)})" in text
        # ... and the cluster table's first row, with the same size and the same pattern as the index
        first = browser.eval("Array.from(document.querySelectorAll('#clusters tbody tr')[0].cells).map(c => c.textContent)")
        assert f"cluster 1 below, {first[1]} cm³" in text or f"cluster 1 below, is {first[1]} cm³" in text
        pattern = browser.eval("(document.getElementById('pattern') || {}).textContent || ''")
        assert pattern == rows[sid][0] and pattern.capitalize() in text
        if pattern == "focal":
            assert first[5] in text and first[6] in text  # template coordinates and the name taken from them
        peaks = browser.eval(CLUSTER_PEAKS)
        assert peaks and all(p >= threshold for p in peaks)
        _check_cluster_jump(browser)
        browser.call("Emulation.setDeviceMetricsOverride", session=True, width=1024, height=800,
                     deviceScaleFactor=1, mobile=False)
        assert browser.eval("document.documentElement.scrollWidth") <= 1024, sid  # nothing overflows sideways
        browser.call("Emulation.clearDeviceMetricsOverride", session=True)

    # the real head: QC values outside the calibration scans' range, on its page and in its sentence
    browser.open((report / "scans" / f"{head}.html").as_uri())
    _wait_ready(browser)
    warnings = browser.eval("document.getElementById('qa-warnings').textContent")
    # (its registration similarity lies inside the real calibration heads' range: not warned)
    assert "slice thickness 4.8 mm is above the range" in warnings and "calibration scans" in warnings
    outside = browser.eval("Array.from(document.querySelectorAll('#qc-table tr.outside')).map(r => r.dataset.key)")
    assert "voxel_size_max_mm" in set(outside) and "registration_similarity" not in set(outside)
    assert "Unlike the data the model knows: " in browser.eval("document.getElementById('why-sentence').textContent")
    _shot(browser, SCREENSHOTS / "scan_real_head.png", max_height=3200)
    browser.open((report / "scans" / f"{lesioned}.html").as_uri())
    _wait_ready(browser)
    assert browser.eval("!!document.getElementById('legend-gt')")
    _shot(browser, SCREENSHOTS / "scan_lesion.png", max_height=3200)

    # the failed scan: its image with the brain mask, the failed value against its limit, no path
    browser.open((report / "scans" / f"{failed}.html").as_uri())
    assert not _problems(browser.events)
    img = browser.eval("(() => { const i = document.querySelector('#failed-view img'); return i ? "
                       "[i.complete, i.naturalWidth, i.naturalHeight] : null; })()")
    assert img and img[0] and img[1] > 0 and img[2] > 0
    checks = browser.eval("Array.from(document.querySelectorAll('#failure-checks tbody tr'))"
                          ".map(r => Array.from(r.cells).map(c => c.textContent))")
    assert checks[0][0] == "brain volume" and checks[0][2] == "900–2100 ml"
    assert float(checks[0][1].split()[0]) < 900
    assert checks[1][0].startswith("brain volume of the mask below") and checks[1][1] == checks[0][1]
    reason = browser.eval("document.getElementById('failure-reason').textContent")
    assert reason.startswith("brain volume") and str(out) not in reason and ".nii" not in reason
    _shot(browser, SCREENSHOTS / "scan_failed.png", max_height=1400)
