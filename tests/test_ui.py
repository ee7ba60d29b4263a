"""Real-browser checks in headless Chromium: the explorers (JupyterLab started by `wsss-nb lab` on a loopback port,
nbs/60_explore.ipynb run) and the docs site (`make docs`'s _docs/ served on a loopback port); and, without a
browser, `wsss-nb lab` itself (arguments passed through, the process replaced by JupyterLab).

The browser tests are slow and skipped unless WSSS_UI=1 (`make test-ui` sets it, builds the docs and installs
chromium, chromium-driver and selenium). Screenshots go to tests/screenshots/ (git-ignored).
"""
import contextlib, difflib, json, os, secrets, shutil, socket, subprocess, sys, time, urllib.request, warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT/"nbs"/"60_explore.ipynb"
SHOTS = ROOT/"tests"/"screenshots"
RUN_ALL_TIMEOUT = float(os.environ.get("WSSS_UI_TIMEOUT", 1800))   # the notebook trains its runs on first use

with (
    warnings.catch_warnings()
):  # `slow` is informational here (no pytest config registers it); the env var gates the test
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    slow = pytest.mark.slow

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(cond, timeout, what, poll=0.5):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v: return v
        time.sleep(poll)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")

def _wsss_nb() -> str:
    "This environment's `wsss-nb` console script."
    exe = Path(sys.executable).parent/"wsss-nb"
    found = str(exe) if exe.is_file() else shutil.which("wsss-nb")
    return found or pytest.fail("wsss-nb is not installed: pip install -e .")

def _answers(url: str) -> bool:
    try: return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError: return False

@contextlib.contextmanager
def running_lab(tmp_path, *args, settings=None):
    """`wsss-nb lab --no-browser` on a free loopback port with a random token (and `args`), its runtime and workspace
    files in `tmp_path`; yields dict(proc, port, base, token, log). The process is JupyterLab itself (exec)."""
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_WORKSPACES_DIR=str(tmp_path/"ws"), JUPYTER_RUNTIME_DIR=str(tmp_path/"rt"),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if settings is not None: env["JUPYTERLAB_SETTINGS_DIR"] = str(settings)
    log_path = tmp_path/"lab.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([_wsss_nb(), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--port-retries=0",
                             f"--IdentityProvider.token={token}", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    def up():
        if proc.poll() is not None:
            pytest.fail(f"wsss-nb lab exited ({proc.returncode}): {log_path.read_text()[-2000:]}")
        return _answers(f"{base}/api/status?token={token}")
    try:
        _wait(up, 120, "jupyter lab start")
        yield dict(proc=proc, port=port, base=base, token=token, log=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_lab_arguments():
    "`wsss-nb lab` hands every argument but -h to JupyterLab (after `--` all), adds nbs/ and, as root, --allow-root."
    from wsss_nb.cli import build_parser, lab_command
    p = build_parser()
    assert p.parse_args(["lab"]).extra == []
    assert p.parse_args(["lab", "--no-browser", "--port", "8890", "x.ipynb"]).extra == [
        "--no-browser", "--port", "8890", "x.ipynb"]
    assert p.parse_args(["lab", "--no-browser", "--", "--help", "-h"]).extra == ["--no-browser", "--help", "-h"]
    cmd = lab_command(["--no-browser"], as_root=True)
    assert cmd == [sys.executable, "-m", "jupyterlab", f"--notebook-dir={ROOT/'nbs'}", "--allow-root", "--no-browser"]
    assert "--allow-root" not in lab_command([], as_root=False)
    for said in (["--allow-root"], ["--ServerApp.allow_root=False"], ["--ServerApp.allow-root", "False"]):
        assert lab_command(said, as_root=True).count("--allow-root") == said.count("--allow-root"), said
    assert lab_command(["--ServerApp.root_dir=/tmp"], as_root=False)[3:] == ["--ServerApp.root_dir=/tmp"]
    out = subprocess.run([_wsss_nb(), "lab", "--help"], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0 and "Every argument but -h goes to JupyterLab" in " ".join(out.stdout.split()), out
    from importlib.metadata import version
    out = subprocess.run([_wsss_nb(), "lab", "--", "--version"], capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0 and out.stdout.strip() == version("jupyterlab"), (out.stdout, out.stderr[-500:])


def test_lab_execs_jupyterlab(tmp_path):
    "`wsss-nb lab ...` becomes JupyterLab (same PID, the arguments passed) serving nbs/; stopping that PID ends it."
    with running_lab(tmp_path) as lab:
        pid, base, token = lab["proc"].pid, lab["base"], lab["token"]
        if Path(f"/proc/{pid}/cmdline").exists():                                 # Linux: what the PID runs now
            argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            assert argv[1:3] == ["-m", "jupyterlab"] and "--no-browser" in argv and f"--port={lab['port']}" in argv
            assert f"--notebook-dir={ROOT/'nbs'}" in argv and ("--allow-root" in argv) == (os.geteuid() == 0), argv
        names = [c["name"] for c in json.load(urllib.request.urlopen(f"{base}/api/contents?token={token}"))["content"]]
        assert "60_explore.ipynb" in names, names
    assert lab["proc"].returncode is not None
    _wait(lambda: not _answers(f"{base}/api/status?token={token}"), 10, "JupyterLab gone with the wsss-nb process")


@pytest.fixture
def lab(tmp_path):
    "`wsss-nb lab` (JupyterLab serving nbs/) for the browser; autosave and news off; the notebook restored afterwards."
    settings = tmp_path/"settings"
    for plugin, value in (
        ("@jupyterlab/docmanager-extension/plugin", {"autosave": False}),
        ("@jupyterlab/apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
    ):
        p = settings / f"{plugin}.jupyterlab-settings"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))
    before, had_ckpt = NB.read_bytes(), (NB.parent/".ipynb_checkpoints").exists()
    try:
        with running_lab(tmp_path, "--LabApp.expose_app_in_browser=True", settings=settings) as lab:
            yield dict(lab, before=before)
    finally:
        if NB.read_bytes() != before: NB.write_bytes(before)                    # the test never changes the source
        if not had_ckpt: shutil.rmtree(NB.parent/".ipynb_checkpoints", ignore_errors=True)

@pytest.fixture
def browser():
    "Headless Chromium (Debian's chromium + chromedriver) through selenium."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver not found: `make test-ui` installs them "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1500,1100"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(driver), options=opts)
    d.set_script_timeout(60)
    try: yield d
    finally: d.quit()

JS_STATE = """
const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
if (!w || !w.content || !w.sessionContext || !w.sessionContext.session || !w.sessionContext.session.kernel) return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
return {status: w.sessionContext.session.kernel.status,
        pending: cells.filter(c => {
            const p = c.node.querySelector('.jp-InputPrompt'); return p && p.textContent.includes('*'); }).length,
        unrun: cells.filter(c => c.model.executionCount === null).length, cells: cells.length,
        errors: cells.map(c => c.model.outputs.toJSON().filter(o => o.output_type === 'error')
                                 .map(o => o.ename + ': ' + o.evalue)).flat()};
"""

JS_IMAGE = """
const done = arguments[arguments.length - 1];
const img = arguments[0];
fetch(img.src).then(r => r.arrayBuffer()).then(b => {
  const u = new Uint8Array(b); let s = ''; for (let i = 0; i < u.length; i++) s += String.fromCharCode(u[i]);
  done(btoa(s)); }).catch(e => done('error: ' + e));
"""

JS_BOX = """
const box = arguments[0];
const st = box.querySelector('.wsss-explorer-status small');
return {status: st ? st.textContent : '',
        panels: st && st.dataset.panels ? JSON.parse(st.dataset.panels) : null,
        selects: [...box.querySelectorAll('select')]
                 .map(s => [...s.options].map(o => o.textContent.replace(/\\u00a0/g, ' '))),
        numbers: [...box.querySelectorAll('input[type=number]')].map(i => i.value)};
"""

def _select(d, box, contains: str, option):
    "In the box's dropdown with an option containing `contains`, choose `option` (its text or index); its options."
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    for el in box.find_elements(By.CSS_SELECTOR, "select"):
        opts = d.execute_script("return [...arguments[0].options].map(o => o.textContent.replace(/\\u00a0/g, ' '))", el)
        if any(contains in o for o in opts):                     # ipywidgets writes the options' spaces as nbsp
            Select(el).select_by_index(option if isinstance(option, int) else opts.index(option))
            return opts
    raise AssertionError(f"no dropdown with an option containing {contains!r}")


def _changed(d, img, before, what, timeout=60):
    "The picture's new PNG (base64) once it differs from `before`."
    return _wait(lambda: (lambda v: v if v != before and not v.startswith("error") else None)(
        d.execute_async_script(JS_IMAGE, img)), timeout, what, poll=0.1)


@slow
@pytest.mark.skipif(os.environ.get("WSSS_UI") != "1", reason="browser test: run `make test-ui` (sets WSSS_UI=1)")
def test_explorers_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    SHOTS.mkdir(parents=True, exist_ok=True)
    d = browser
    d.get(f"{lab['base']}/lab/tree/{NB.name}?token={lab['token']}")
    _wait(lambda: d.execute_script(JS_STATE), 180, "notebook open with a kernel")
    _wait(lambda: d.execute_script(JS_STATE)["status"] == "idle", 120, "kernel idle")
    d.save_screenshot(str(SHOTS/"01_opened.png"))

    t0 = time.monotonic()
    d.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _wait(lambda: d.execute_script(JS_STATE)["pending"] > 0, 60, "run all started")
    def finished():
        s = d.execute_script(JS_STATE)
        done = s["status"] == "idle" and s["pending"] == 0 and (s["unrun"] == 0 or s["errors"])
        return s if done else None          # idle between two cells of a loaded machine's run-all is not the end
    state = _wait(finished, RUN_ALL_TIMEOUT, "run all cells", poll=2)
    print(f"run all: {time.monotonic() - t0:.0f} s, {state['cells']} code cells")
    assert not state["errors"], state["errors"]
    assert state["unrun"] == 0, state

    boxes = _wait(lambda: d.find_elements(By.CSS_SELECTOR, ".wsss-explorer"), 60, "explorer widgets rendered")
    titles = [b.find_element(By.CSS_SELECTOR, ".widget-html b").text for b in boxes]
    print("explorers:", titles)
    assert len(boxes) >= 9 and any(t.startswith("PAMR") for t in titles), titles
    d.save_screenshot(str(SHOTS/"02_ran_all.png"))

    seen = {}
    for k, (box, title) in enumerate(zip(boxes, titles)):
        for _ in range(2):  # the notebook lays out lazily: scroll, wait, again
            d.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'})", box)
            time.sleep(1.0)
        img = _wait(lambda: box.find_element(By.CSS_SELECTOR, "img.wsss-explorer-image"), 30, f"{title}: image")
        before = d.execute_async_script(JS_IMAGE, img)
        assert not before.startswith("error") and len(before) > 1000, f"{title}: no picture"
        info = d.execute_script(JS_BOX, box)
        assert info["panels"] and all(p["drawn"] for p in info["panels"]), (title, info)   # no empty panel
        seen[title] = info
        name = f"{10 + k}_{title.split(' ')[0].lower()}"
        box.screenshot(str(SHOTS/f"{name}_before.png"))
        handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")          # the first slider of the explorer
        readout = box.find_elements(By.CSS_SELECTOR, ".widget-readout")
        value0 = readout[0].text if readout else None
        at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
        t1 = time.monotonic()
        handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
        after = _changed(d, img, before, f"{title}: picture changed after moving the slider", 30)
        dt = time.monotonic() - t1
        status = box.find_element(By.CSS_SELECTOR, ".wsss-explorer-status").text
        print(f"{title}: slider {value0} → {readout[0].text if readout else '?'}, "
              f"new picture after {dt:.2f} s in the browser ({status})")
        assert after != before and "rendered" in status, status
        time.sleep(0.5)                                                     # the new picture painted
        box.screenshot(str(SHOTS/f"{name}_after.png"))

    # a legend on the PAMR explorer's label maps (the void of the ground truth named)
    k = next(i for i, t in enumerate(titles) if t.startswith("PAMR · val_"))
    pamr, panels = boxes[k], {p["key"]: p for p in seen[titles[k]]["panels"]}
    assert panels["label map"]["legend"] and "void: not scored" in panels["ground truth"]["legend"], panels
    # the BAP explorer without a GAP run (on one's own image, no ground truth): only panels with something on them
    bap = [p["key"] for p in seen["BAP · image"]["panels"]]
    assert "CAM, GAP classifier" not in bap and "ground truth" not in bap and len(bap) == 8, bap
    assert len(seen[next(t for t in titles if t.startswith("BAP · val_"))]["panels"]) == 10
    # a run picker entry: method, the settings that differ from its defaults, val mIoU
    runs = next(v for t, v in seen.items() if t.startswith("Runs"))
    entries = next(o for o in runs["selects"] if any(" · " in x for x in o))
    cam = [e for e in entries if e.startswith("cam · ")]
    assert cam and "epochs=1" in cam[0] and "mIoU" in cam[0], entries
    assert sum("pooling=gap" in e for e in entries) == 1, entries
    print("run picker:", *entries, sep="\n  ")
    # one's own photograph, classes named with class_names
    photo = seen["PAMR · image"]
    assert "rendered" in photo["status"] and {"cup", "saucer"} <= {x for p in photo["panels"] for x in p["legend"]}

    # PAMR: a click on the label map picks the pixel; "computing…" while a new dilation set is computed;
    # outlines; one panel enlarged
    d.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'})", pamr)
    time.sleep(1.0)
    img = pamr.find_element(By.CSS_SELECTOR, "img.wsss-explorer-image")
    png, yx0 = d.execute_async_script(JS_IMAGE, img), d.execute_script(JS_BOX, pamr)["numbers"]
    w, h = img.size["width"], img.size["height"]
    ActionChains(d).move_to_element_with_offset(img, int(-0.15 * w), int(-0.1 * h)).click().perform()  # label map
    png = _changed(d, img, png, "PAMR: picture after a click")
    yx = _wait(lambda: (lambda n: n if n != yx0 else None)(d.execute_script(JS_BOX, pamr)["numbers"]), 30, "pixel")
    print(f"PAMR: a click moved the pixel (y, x) from {yx0} to {yx}")
    pamr.screenshot(str(SHOTS/"30_pamr_clicked.png"))
    texts, t1 = [], time.monotonic()
    _select(d, pamr, "1, 2", 4)                                      # a dilation set not computed yet: 4, 8, 12, 24
    while time.monotonic() - t1 < 30:
        texts.append(pamr.find_element(By.CSS_SELECTOR, ".wsss-explorer-status").text)
        if any(t.startswith("computing") for t in texts) and texts[-1].startswith("rendered"): break
        time.sleep(0.02)
    print(f"PAMR: status while a new dilation set is computed: {list(dict.fromkeys(texts))}")
    assert any(t.startswith("computing") for t in texts) and texts[-1].startswith("rendered"), texts
    png = _changed(d, img, png, "PAMR: picture after a new dilation set")
    pamr.find_element(By.CSS_SELECTOR, ".widget-checkbox input").click()               # outlines
    png = _changed(d, img, png, "PAMR: outlines")
    time.sleep(0.5)
    pamr.screenshot(str(SHOTS/"31_pamr_outlines.png"))
    _select(d, pamr, "all panels", "label map")
    png = _changed(d, img, png, "PAMR: label map enlarged")
    assert [p["key"] for p in d.execute_script(JS_BOX, pamr)["panels"]] == ["label map"]
    time.sleep(0.5)
    pamr.screenshot(str(SHOTS/"32_pamr_enlarged.png"))
    print(f"PAMR enlarged: picture {img.size['width']}×{img.size['height']} px on the page")

    # running the notebook in Lab and saving it leaves nothing `nbdev_clean --clear_all` cannot undo
    d.execute_script("window.jupyterapp.commands.execute('docmanager:save')")
    _wait(lambda: NB.read_bytes() != lab["before"], 60, "notebook saved by JupyterLab")
    saved = tmp_path/NB.name
    saved.write_bytes(NB.read_bytes())
    clean = subprocess.run([str(Path(sys.executable).parent/"nbdev_clean"), "--clear_all", "--fname", str(saved)],
                           cwd=ROOT, env=dict(os.environ), capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr
    diff = list(difflib.unified_diff(lab["before"].decode().splitlines(), saved.read_text().splitlines(), lineterm=""))
    assert saved.read_bytes() == lab["before"], "\n".join(diff[:40])
    print(f"saved by JupyterLab: {len(NB.read_bytes())} bytes; after nbdev_clean --clear_all: as committed")


DOCS = ROOT/"_docs"

@pytest.fixture
def docs_server(tmp_path):
    "`python -m http.server` serving the built _docs/ on a free loopback port."
    if not (DOCS/"index.html").exists(): pytest.fail("_docs/index.html not built: run `make docs` first")
    port = _free_port()
    log = open(tmp_path/"http.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                             "--directory", str(DOCS)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    def up():
        try: return urllib.request.urlopen(f"{base}/index.html", timeout=2).status == 200
        except OSError:
            return proc.poll() is not None and pytest.fail(f"http.server exited: {(tmp_path/'http.log').read_text()}")
    try:
        _wait(up, 30, "http.server start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


JS_PAGE = """
const math = document.querySelectorAll('.MathJax, .MathJax_Display').length;
return {title: document.title, h1: (document.querySelector('h1.title') || {}).textContent || '',
        text: document.body.innerText, math: math,
        math_errors: document.querySelectorAll('.MathJax_Error, merror').length,
        typeset: !!(window.MathJax && MathJax.isReady && MathJax.Hub.queue && MathJax.Hub.queue.pending === 0
                    && !MathJax.Hub.queue.running),
        broken_images: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).length,
        images: document.images.length,
        resources: performance.getEntriesByType('resource').map(e => e.name),
        sidebar: [...document.querySelectorAll('nav.site-sidebar h4')].map(h => h.textContent)};
"""

@slow
@pytest.mark.skipif(os.environ.get("WSSS_UI") != "1", reason="browser test: run `make test-ui` (sets WSSS_UI=1)")
def test_docs_site_in_chromium(docs_server, browser):
    "The index and an API page render: title, sidebar by layer, `show_doc` entries, equations, figures; all local."
    from selenium.webdriver.common.by import By
    SHOTS.mkdir(parents=True, exist_ok=True)
    d, base = browser, docs_server
    def load(page):
        d.get(f"{base}/{page}")
        typeset = lambda: (lambda s: s if s["typeset"] else None)(d.execute_script(JS_PAGE))
        return _wait(typeset, 60, f"{page}: MathJax typeset")

    index = load("index.html")
    assert index["title"] == "wsss_nb" and index["h1"] == "wsss_nb", (index["title"], index["h1"])
    assert "make reproduce" in index["text"] and "make docs" in index["text"]
    layers = {"Foundations", "SSSS", "Shape cues", "HFPL", "BANA, the methods by name", "Run",
              "Explore, benchmarks", "Tables", "CLI"}
    assert layers <= set(index["sidebar"]), index["sidebar"]
    d.save_screenshot(str(SHOTS/"docs_index.png"))

    d.find_element(By.CSS_SELECTOR, 'nav.site-sidebar a[href="pamr.html"]').click()     # the sidebar leads to the page
    _wait(lambda: d.current_url.endswith("/pamr.html"), 30, "sidebar link to pamr.html")
    api = load("pamr.html")
    d.save_screenshot(str(SHOTS/"docs_api.png"))                                           # the equations (Eq. 7)
    assert api["h1"] == "pamr" and "PAMR" in api["text"], api["h1"]
    entries = [h.text.strip() for h in d.find_elements(By.CSS_SELECTOR, "h3")]           # show_doc's entries
    assert {"PAMR", "pamr", "pamr_affinity", "local_std"} <= set(entries), entries
    heading = next(h for h in d.find_elements(By.CSS_SELECTOR, "h3") if h.text.strip() == "PAMR")
    assert "def PAMR(" in api["text"] or "class PAMR" in api["text"], "no signature of PAMR"
    assert api["math"] > 10 and api["math_errors"] == 0, (api["math"], api["math_errors"])
    assert api["images"] >= 1 and api["broken_images"] == 0, (api["images"], api["broken_images"])
    d.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'})", heading)
    d.save_screenshot(str(SHOTS/"docs_api_pamr.png"))                                      # show_doc's PAMR

    link = d.find_element(By.CSS_SELECTOR, 'a[href="core.html#configerror"]')              # an API link between pages
    d.execute_script("arguments[0].click()", link)
    _wait(lambda: d.current_url.endswith("/core.html#configerror"), 30, "API link to core.html#configerror")
    assert d.find_element(By.ID, "configerror").text.strip().startswith("ConfigError")
    for page in (index, api):
        outside = [r for r in page["resources"] if not r.startswith(base)]
        assert not outside, f"fetched from outside the site: {outside[:5]}"
    print(f"docs: index and pamr.html render ({api['math']} equations typeset, {api['images']} figures); "
          f"screenshots in {SHOTS}")
