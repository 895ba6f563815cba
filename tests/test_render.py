"""The four reports as a person sees them: each notebook is executed with the tiny model (papermill, as
``synchlib run`` does), exported to HTML and rendered in headless Chromium: a screenshot, and the DOM after layout
with the height of every output area and whether every image was decoded. What must not show: the parameters
twice, install or checker plumbing, blank widget areas, errors or warnings.

Chromium is required (no skip): ``apt-get install -y chromium`` (Debian, Ubuntu) installs it; ``.ci/run`` does.
Nothing here depends on timing: Chromium's --dump-dom returns once the page has loaded, after the load handler that
measured the layout ran (the test checks that it ran), and network access is cut off (every host unresolvable)
so the CDN scripts of nbconvert's page fail at once.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from synchlib import nbparams
from synchlib.reports import run_notebook

pytest.importorskip("papermill")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
INSTALL_HINT = ("headless Chromium renders the reports in this test and none was found on PATH (looked for "
                f"{', '.join(CHROMIUM_NAMES)}); install it, e.g. `sudo apt-get install -y chromium` on Debian/Ubuntu")
BROWSER_TIMEOUT_S = 300  # generous: a slow, shared machine; the test asserts on what renders, never on speed
WINDOW = (1200, 4000)  # screenshot size, px
TINY = {"checkpoint": "tiny-synthetic", "video": "synthetic-demo", "device": "cpu"}
REPORTS = {  # parameters of each report; only those the notebook declares are passed
    "demo": {**TINY, "offset_sec": 1.2, "start_sec": 1.0},
    "offset_sweep": {**TINY, "starts": [2.0]},
    "attention": {**TINY, "offset_sec": 0.6, "start_sec": 1.0},
    # a training far smaller than the notebook's defaults (CI time), as its golden runs
    "train_tiny": {**TINY, "steps": 6, "detect_steps": 4, "n_train_clips": 3, "random_steps": 3},
}
FORBIDDEN_TEXT = {  # what none of the reports may show (regular expressions), and why
    r"\bpip\b": "the install cell",
    r"NBVAL": "nbval's checker markers",
    r"nbval-": "nbval's cell tags",
    r"injected-parameters|# Parameters": "papermill's injected cell",
}
HIDDEN_TAGS = ("install", "remove-cell", "remove-input")  # cells whose code the page must not show
ALARM = re.compile(r"\b(traceback|warning|error)\b|\w+(Warning|Error)\b", re.IGNORECASE)
MEASURE = """<script>
window.addEventListener("load", () => {
  for (const e of document.querySelectorAll(".jp-OutputArea-output, .jp-Cell-outputWrapper"))
    e.dataset.testHeight = Math.round(e.getBoundingClientRect().height);
  for (const img of document.images)
    img.dataset.testDecoded = img.complete && img.naturalWidth > 0 ? "yes" : "no";
  document.body.dataset.testMeasured = "yes";
});
</script>"""
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(INSTALL_HINT, pytrace=False)


def browse(page: Path, *how: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``page`` with ``how`` (--dump-dom, --screenshot=...), offline, fresh profile."""
    with tempfile.TemporaryDirectory(prefix="synchlib-chromium-") as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--host-resolver-rules=MAP * ~NOTFOUND",
             f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}", *how, page.as_uri()],
            capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, check=True,
        )  # fmt: skip


class Page(HTMLParser):
    """What a reader sees in a rendered DOM: the visible text (all of it, and that of the outputs), the code of
    each input cell, the output areas (their attributes), the images and videos."""

    def __init__(self, dom: str):
        super().__init__()
        self.text: list[str] = []
        self.output_text: list[str] = []
        self.code: list[str] = []
        self.outputs: list[dict[str, str]] = []
        self.images: list[dict[str, str]] = []
        self.videos: list[dict[str, str]] = []
        self.body: dict[str, str] = {}
        self._stack: list[tuple[str, frozenset[str]]] = []  # (tag, where: "hidden", "code", "output")
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        where = set(self._stack[-1][1]) if self._stack else set()
        if tag == "body":
            self.body = a
        if "jp-OutputArea-output" in classes or "jp-Cell-outputWrapper" in classes:
            self.outputs.append(a)
            where.add("output")
        if tag == "img":
            self.images.append(a)
        if tag == "video":
            self.videos.append(a)
        if tag in ("script", "style"):
            where.add("hidden")
        if "jp-InputArea-editor" in classes and "code" not in where:
            self.code.append("")
            where.add("code")
        if tag not in VOID:
            self._stack.append((tag, frozenset(where)))

    def handle_endtag(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_data(self, data):
        where = self._stack[-1][1] if self._stack else frozenset()
        if "hidden" in where:
            return
        self.text.append(data)
        if "code" in where:
            self.code[-1] += data
        if "output" in where:
            self.output_text.append(data)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, tuple[dict, Page, Path]]:
    """name -> (parameters passed, the rendered DOM, the screenshot) for each report; the executed notebook, the
    HTML and the screenshot lie side by side (<name>.ipynb, .html, .png)."""
    out = {}
    for name, wanted in REPORTS.items():
        src = REPO / "notebooks" / f"{name}.ipynb"
        declared = nbparams.declared_parameters(nbparams.load_notebook(src), src.name)
        params = {k: v for k, v in wanted.items() if k in declared}
        folder = tmp_path_factory.mktemp(name)
        ipynb, page = run_notebook(src, folder, params, progress=False, timeout=BROWSER_TIMEOUT_S)
        measured = page.with_name(f"{name}.measured.html")
        measured.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
        dom = Page(browse(measured, "--dump-dom").stdout)
        shot = page.with_suffix(".png")
        browse(page, f"--screenshot={shot}")
        out[name] = (params, dom, shot)
    return out


@pytest.mark.parametrize("name", list(REPORTS))
def test_report_renders_without_plumbing_blanks_or_alarms(rendered, name):
    params, page, shot = rendered[name]
    html = shot.with_suffix(".html").read_text(encoding="utf-8")
    assert page.body.get("data-test-measured") == "yes", "the measuring script did not run: the DOM was not laid out"
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"no screenshot at {shot}"
    text = "".join(page.text)
    for pattern, what in FORBIDDEN_TEXT.items():
        found = re.search(pattern, text)
        assert not found, f"{name}: the page shows {what} ({found.group(0)!r})"
    executed = nbparams.load_notebook(shot.with_suffix(".ipynb"))
    code = [" ".join(block.split()) for block in page.code]
    for cell in executed.cells:
        tags = [t for t in cell.metadata.get("tags", []) if t in HIDDEN_TAGS]
        source = " ".join(cell.source.split())
        assert not (tags and source and any(source in block for block in code)), (
            f"{name}: the page shows the code of a cell tagged {tags}: {cell.source[:80]!r}")
    alarms = sorted({m.group(0) for m in ALARM.finditer("".join(page.output_text))})
    assert not alarms, f"{name}: an output shows error or warning text: {alarms}"
    assert not [o for o in page.outputs if o.get("data-mime-type") == "application/vnd.jupyter.stderr"], (
        f"{name}: an output box shows stderr")
    blank = [o for o in page.outputs if "data-test-height" not in o or float(o["data-test-height"]) <= 0]
    assert not blank, f"{name}: {len(blank)} output areas render with no height (e.g. a widget a static page cannot run)"
    assert not [o for o in page.outputs if "jupyter-widgets" in o.get("class", "")], f"{name}: a widget shows"
    assert "application/vnd.jupyter.widget" not in html, f"{name}: the page holds widget views or state"
    assert page.images and all(i.get("data-test-decoded") == "yes" for i in page.images), f"{name}: an image is blank"
    assert all(v.get("poster") for v in page.videos), f"{name}: a video without a poster shows blank before it plays"


@pytest.mark.parametrize("name", list(REPORTS))
def test_report_shows_the_parameters_used_once(rendered, name):
    """One code cell assigns the parameters, with the values passed; no cell shows the defaults they replaced."""
    params, page, _ = rendered[name]
    src = REPO / "notebooks" / f"{name}.ipynb"
    declared = set(nbparams.declared_parameters(nbparams.load_notebook(src), src.name))

    def assigned(code: str) -> dict:
        try:
            body = ast.parse(code).body
        except SyntaxError:
            return {}
        return {s.targets[0].id: ast.literal_eval(s.value) for s in body if isinstance(s, ast.Assign)
                and isinstance(s.targets[0], ast.Name) and s.targets[0].id in declared
                and isinstance(s.value, (ast.Constant, ast.List, ast.UnaryOp))}  # fmt: skip

    cells = [values for values in map(assigned, page.code) if values]
    assert len(cells) == 1, f"{name}: {len(cells)} cells show parameter values"
    assert set(cells[0]) == declared and {k: cells[0][k] for k in params} == params
