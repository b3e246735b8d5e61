"""The reports as their readers see them.

report.html is opened in a real headless Chromium (the system package; .ci/run installs it) and
inspected over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``: no port, no
extra Python package): the rendered matrix has a row per adapter and a column per property, every
plot has decoded to a non-blank image and is painted on the page, and the page loads nothing from
the network. report.md is checked to be a GitHub-flavoured table: header row, delimiter row, the
same number of cells in every row.

A missing browser is a failure, not a skip: CI installs it, and a skipped check proves nothing.
Set BNSPEC_CHROMIUM to the browser's path if it is not on PATH as chromium / chromium-browser /
google-chrome.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bnspec.reports import cell_text

ROOT = Path(__file__).parents[1]
# Two adapters: the reference (conforms; one n/a cell) and a single-knob wrong implementation
# (non-conformances, findings, a multi-knob cell): every kind of matrix cell the HTML draws.
ADAPTERS = ["reference", "wrong_running_var_update"]
# Enough properties for every kind of cell (✓, ✗ one knob, ✗ two knobs, n/a) and a wide table;
# the full set takes three times as long and draws nothing new.
PROPERTIES = ["train_output", "estimator", "large_offset", "frozen_layer", "single_value",
              "half_precision"]


def _chromium() -> str:
    for cand in (os.environ.get("BNSPEC_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if cand and (path := shutil.which(cand)):
            return path
    pytest.fail(
        "no Chromium found: the HTML report is checked in a real headless browser. Install the "
        "system package (Debian: `apt-get install --no-install-recommends chromium`; .ci/run does "
        "this) or set BNSPEC_CHROMIUM to the browser's path.", pytrace=False)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "bnspec", "run", "--adapters", "reference",
         "--adapter-path", "tests.fixtures.bad_adapters:BIASED_RUNNING_VAR",
         "--properties", ",".join(PROPERTIES), "--examples", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    # Exit 1: the wrong implementation does not conform (a crash exits 1 too: hence the files).
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    missing = [f for f in ("summary.json", "report.md", "report.html") if not (out / f).is_file()]
    assert not missing, f"bnspec run wrote no {missing}: {proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def summary(report_dir) -> dict[str, Any]:
    return json.loads((report_dir / "summary.json").read_text())


class DevTools:
    """A minimal Chrome DevTools Protocol client over --remote-debugging-pipe (fds 3 and 4,
    messages are JSON terminated by NUL)."""

    def __init__(self, browser: str, profile_dir: Path, timeout: float = 30.0):
        self.timeout = timeout
        to_browser_r, self._w = os.pipe()
        self._r, from_browser_w = os.pipe()
        self._log = open(profile_dir / "chromium-stderr.log", "w+b")
        argv = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                "--hide-scrollbars", "--remote-debugging-pipe", f"--user-data-dir={profile_dir}",
                "--window-size=1400,1000", "about:blank"]
        # Chromium reads commands from fd 3 and writes replies to fd 4. Our ends are first moved
        # to fds >= 10 so that placing one on 3 or 4 cannot close the other.
        hi_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        try:
            self.pid = os.posix_spawn(browser, argv, os.environ, file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, self._log.fileno(), 2),
                (os.POSIX_SPAWN_DUP2, hi_r, 3),
                (os.POSIX_SPAWN_DUP2, hi_w, 4),
            ])
        finally:
            for fd in (to_browser_r, from_browser_w, hi_r, hi_w):
                os.close(fd)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer over the DevTools pipe in time")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium closed the DevTools pipe; its stderr ends:\n{err}")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict[str, Any] | None = None, *, browser_level: bool = False) -> dict:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if self.session and not browser_level:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)

    def open_page(self) -> None:
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next((t for t in targets if t["type"] == "page"), None)
        target_id = page["targetId"] if page else self.send(
            "Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target_id, "flatten": True},
                                 browser_level=True)["sessionId"]

    def evaluate(self, expression: str) -> Any:
        res = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True,
                                             "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(f"script failed in the page: {res['exceptionDetails']}")
        return res["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", browser_level=True)
        except Exception:
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        for fd in (self._r, self._w):
            os.close(fd)
        self._log.close()


# Runs in the page once it has loaded: the matrix as rendered, and for every <img> whether it
# decoded, its natural and laid-out size, and (drawn to a canvas) whether its pixels are blank.
PAGE_PROBE = r"""
(async () => {
  const t = document.getElementById('matrix');
  const box = e => { const r = e.getBoundingClientRect();
                     return {x: r.x + scrollX, y: r.y + scrollY, w: r.width, h: r.height}; };
  const matrix = t && {
    box: box(t),
    rows: [...t.rows].map(r => [...r.cells].map(c => ({tag: c.tagName, text: c.innerText.trim(),
                                                        cls: c.className}))),
  };
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const plots = imgs.map(i => {
    let colours = 0, ink = 0;
    if (i.naturalWidth > 0) {
      const c = document.createElement('canvas');
      c.width = i.naturalWidth; c.height = i.naturalHeight;
      const g = c.getContext('2d'); g.drawImage(i, 0, 0);
      const d = g.getImageData(0, 0, c.width, c.height).data, seen = new Set();
      for (let k = 0; k < d.length; k += 4) {
        seen.add((d[k] << 16) | (d[k + 1] << 8) | d[k + 2]);
        if (d[k] < 200 || d[k + 1] < 200 || d[k + 2] < 200) ink++;
      }
      colours = seen.size; ink /= (d.length / 4);
    }
    return {id: i.id, alt: i.alt, complete: i.complete, naturalWidth: i.naturalWidth,
            naturalHeight: i.naturalHeight, box: box(i), colours, ink,
            scheme: i.currentSrc.split(':')[0]};
  });
  return {title: document.title, matrix, plots,
          page: {w: document.documentElement.scrollWidth, h: document.documentElement.scrollHeight}};
})()
"""


@pytest.fixture(scope="module")
def rendered(report_dir, tmp_path_factory) -> dict[str, Any]:
    browser = _chromium()
    started = time.monotonic()
    dt = DevTools(browser, tmp_path_factory.mktemp("chromium-profile"))
    try:
        dt.open_page()
        dt.send("Page.enable")
        dt.send("Network.enable")
        dt.send("Page.navigate", {"url": (report_dir / "report.html").resolve().as_uri()})
        dt.wait_event("Page.loadEventFired")
        probe = dt.evaluate(PAGE_PROBE)
        # The whole page as painted, for the check that the plots are drawn where laid out.
        w, h = probe["page"]["w"], probe["page"]["h"]
        shot = dt.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": w, "height": h, "scale": 1}})["data"]
        requests = [e["params"]["request"]["url"] for e in dt.events
                    if e.get("method") == "Network.requestWillBeSent"]
    finally:
        dt.close()
    png = base64.b64decode(shot)
    if keep := os.environ.get("BNSPEC_SCREENSHOT"):
        Path(keep).write_bytes(png)
    return {"probe": probe, "screenshot": png, "requests": requests,
            "seconds": time.monotonic() - started}


def test_html_matrix_renders_a_row_per_adapter_and_a_column_per_property(rendered, summary):
    m = rendered["probe"]["matrix"]
    assert m is not None, "no element with id 'matrix' in the rendered report"
    assert m["box"]["w"] > 0 and m["box"]["h"] > 0, "the matrix table is not laid out"
    props = summary["properties"]
    assert props == PROPERTIES
    header, *body = m["rows"]
    assert [c["tag"] for c in header] == ["TH"] * (3 + len(props))
    assert [c["text"] for c in header] == ["adapter", "version", "declared profile", *props]
    assert [r[0]["text"] for r in body] == [a["name"] for a in summary["adapters"]] == ADAPTERS
    for row, adapter in zip(body, summary["adapters"], strict=True):
        assert len(row) == 3 + len(props), f"row {adapter['name']} has {len(row)} cells"
        assert row[2]["text"] == adapter["declared_profile"]
        for cell, prop in zip(row[3:], props, strict=True):
            expected = adapter["cells"][prop]
            assert cell["cls"] == expected["status"], (adapter["name"], prop)
            assert cell["text"] == cell_text(expected), (adapter["name"], prop)
    statuses = {c["cls"] for row in body for c in row[3:]}
    assert {"pass", "fail", "not_applicable"} <= statuses


def test_html_plots_decode_and_are_painted(rendered, summary):
    plots = {p["id"]: p for p in rendered["probe"]["plots"]}
    assert set(plots) == {"plot-errors", "plot-trajectories", "plot-offsets"}
    page_png = _read_png(rendered["screenshot"])
    for pid, p in plots.items():
        assert p["scheme"] == "data", f"{pid} is not embedded in the page"
        assert p["complete"] and p["naturalWidth"] > 100 and p["naturalHeight"] > 100, \
            f"{pid} did not decode: {p}"
        # A plot, not a blank or single-colour image: axes, text and lines in several colours.
        assert p["colours"] >= 20 and 0.01 < p["ink"] < 0.9, f"{pid} looks blank: {p}"
        box = p["box"]
        assert box["w"] > 100 and box["h"] > 100, f"{pid} is laid out at {box}"
        # ...and painted where it is laid out (the full-page screenshot, not a blank region).
        y0, x0 = int(box["y"]) + 2, int(box["x"]) + 2
        region = page_png[y0:y0 + int(box["h"]) - 4, x0:x0 + int(box["w"]) - 4, :3]
        assert region.size and region.std() > 0.05, f"{pid} region of the screenshot is blank"
        assert (region.reshape(-1, 3) < 0.8).any(axis=1).mean() > 0.01, f"{pid} painted no ink"


def test_html_is_self_contained_and_fast(rendered):
    external = [u for u in rendered["requests"] if not u.startswith(("file:", "data:", "about:"))]
    assert not external, f"report.html fetched {external}"
    assert rendered["probe"]["title"] == "bnspec conformance report"
    assert rendered["seconds"] < 30, f"opening the report took {rendered['seconds']:.1f}s"


def _read_png(data: bytes):
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(data), format="png")


# --- report.md: a GitHub-flavoured table --------------------------------------------------------

def _gfm_cells(line: str) -> list[str]:
    """Split a GFM table row on its unescaped pipes (leading and trailing pipe optional)."""
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip() for c in re.split(r"(?<!\\)\|", s)]


def test_markdown_matrix_is_a_well_formed_gfm_table(report_dir, summary):
    lines = (report_dir / "report.md").read_text(encoding="utf-8").split("\n")
    starts = [i for i, ln in enumerate(lines) if ln.startswith("|")]
    assert starts, "report.md has no table"
    first = starts[0]
    block = []
    for ln in lines[first:]:
        if not ln.strip():
            break
        block.append(ln)
    # A table after a paragraph needs a blank line before it to be a table on GitHub.
    assert first == 0 or not lines[first - 1].strip(), "no blank line before the table"
    header, delim, *rows = block
    props = summary["properties"]
    ncol = 3 + len(props)
    assert _gfm_cells(header) == ["adapter", "version", "declared profile", *props]
    delim_cells = _gfm_cells(delim)
    assert len(delim_cells) == ncol and all(re.fullmatch(r":?-{3,}:?", c) for c in delim_cells), delim
    assert len(rows) == len(summary["adapters"])
    for row, adapter in zip(rows, summary["adapters"], strict=True):
        assert row.startswith("|") and row.endswith("|"), row
        cells = _gfm_cells(row)
        assert len(cells) == ncol, f"{adapter['name']}: {len(cells)} cells, header has {ncol}"
        assert cells[0] == adapter["name"]
        assert cells[3:] == [cell_text(adapter["cells"][p]) for p in props]


def test_markdown_table_renders_as_a_table(report_dir, summary):
    """Rendered by markdown-it-py with its GFM table rule (it implements GitHub's table spec)."""
    try:
        from markdown_it import MarkdownIt
    except ImportError:  # the structural test above still holds the format
        pytest.skip("markdown-it-py is not installed")
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tables: list[list[list[str]]] = []
            self._cell: list[str] | None = None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self._cell = []

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self._cell is not None:
                self.tables[-1][-1].append("".join(self._cell).strip())
                self._cell = None

        def handle_data(self, data):
            if self._cell is not None:
                self._cell.append(data)

    html = MarkdownIt("commonmark").enable("table").render((report_dir / "report.md").read_text())
    parser = Tables()
    parser.feed(html)
    assert len(parser.tables) == 2  # the matrix, then the accuracy table
    header, *rows = parser.tables[0]
    props = summary["properties"]
    assert header == ["adapter", "version", "declared profile", *props]
    assert [r[0] for r in rows] == [a["name"] for a in summary["adapters"]]
    assert all(len(r) == len(header) for r in rows)
    from bnspec.accuracy import ACCURACY_CASES

    header, *rows = parser.tables[1]
    assert header == ["adapter", *ACCURACY_CASES]
    assert sorted(r[0] for r in rows) == sorted(a["name"] for a in summary["adapters"])
    assert all(len(r) == len(header) for r in rows)
