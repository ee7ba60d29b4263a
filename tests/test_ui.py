"""Real-browser checks in headless Chromium: the explorers (JupyterLab on a loopback port, nbs/60_explore.ipynb run)
and the docs site (`make docs`'s _docs/ served on a loopback port).

Slow and skipped unless WSSS_UI=1 (`make test-ui` sets it, builds the docs and installs chromium, chromium-driver
and selenium). Screenshots go to tests/screenshots/ (git-ignored).
"""
import os, secrets, shutil, socket, subprocess, sys, time, urllib.request, warnings, json
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

@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free loopback port with a random token, serving nbs/; autosave and news off."
    settings = tmp_path/"settings"
    for plugin, value in (
        ("@jupyterlab/docmanager-extension/plugin", {"autosave": False}),
        ("@jupyterlab/apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
    ):
        p = settings / f"{plugin}.jupyterlab-settings"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path/"ws"),
               JUPYTER_RUNTIME_DIR=str(tmp_path/"rt"), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    jupyter = Path(sys.executable).parent/"jupyter"
    before, had_ckpt = NB.read_bytes(), (NB.parent/".ipynb_checkpoints").exists()
    log = open(tmp_path/"lab.log", "w")
    proc = subprocess.Popen(
        [
            str(jupyter),
            "lab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--port-retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={NB.parent}",
            "--LabApp.expose_app_in_browser=True",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    def up():
        try:
            return urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2).status == 200
        except OSError:
            return proc.poll() is not None and pytest.fail(
                f"jupyter lab exited: {(tmp_path / 'lab.log').read_text()[-2000:]}"
            )

    try:
        _wait(up, 120, "jupyter lab start")
        yield dict(base=base, token=token, log=tmp_path/"lab.log")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
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

@slow
@pytest.mark.skipif(os.environ.get("WSSS_UI") != "1", reason="browser test: run `make test-ui` (sets WSSS_UI=1)")
def test_explorers_in_jupyterlab(lab, browser):
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
        return s if s["status"] == "idle" and s["pending"] == 0 else None
    state = _wait(finished, RUN_ALL_TIMEOUT, "run all cells", poll=2)
    print(f"run all: {time.monotonic() - t0:.0f} s, {state['cells']} code cells")
    assert not state["errors"], state["errors"]
    assert state["unrun"] == 0, state

    boxes = _wait(lambda: d.find_elements(By.CSS_SELECTOR, ".wsss-explorer"), 60, "explorer widgets rendered")
    titles = [b.find_element(By.CSS_SELECTOR, ".widget-html b").text for b in boxes]
    print("explorers:", titles)
    assert len(boxes) >= 6 and any(t.startswith("PAMR") for t in titles), titles
    d.save_screenshot(str(SHOTS/"02_ran_all.png"))

    for k, (box, title) in enumerate(zip(boxes, titles)):
        for _ in range(2):  # the notebook lays out lazily: scroll, wait, again
            d.execute_script("arguments[0].scrollIntoView({block: 'start', behavior: 'instant'})", box)
            time.sleep(1.0)
        img = _wait(lambda: box.find_element(By.CSS_SELECTOR, "img.wsss-explorer-image"), 30, f"{title}: image")
        before = d.execute_async_script(JS_IMAGE, img)
        assert not before.startswith("error") and len(before) > 1000, f"{title}: no picture"
        box.screenshot(str(SHOTS/f"{10 + k}_{title.split(' ')[0].lower()}_before.png"))
        handle = box.find_element(By.CSS_SELECTOR, ".noUi-handle")          # the first slider of the explorer
        readout = box.find_elements(By.CSS_SELECTOR, ".widget-readout")
        value0 = readout[0].text if readout else None
        at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
        t1 = time.monotonic()
        handle.send_keys(Keys.ARROW_LEFT if at_max else Keys.ARROW_RIGHT)
        after = _wait(
            lambda: (lambda v: v if v != before and not v.startswith("error") else None)(
                d.execute_async_script(JS_IMAGE, img)
            ),
            30,
            f"{title}: picture changed after moving the slider",
            poll=0.1,
        )
        dt = time.monotonic() - t1
        status = box.find_element(By.CSS_SELECTOR, ".wsss-explorer-status").text
        print(f"{title}: slider {value0} → {readout[0].text if readout else '?'}, "
              f"new picture after {dt:.2f} s in the browser ({status})")
        assert after != before and "rendered" in status, status
        time.sleep(0.5)                                                     # the new picture painted
        box.screenshot(str(SHOTS/f"{10 + k}_{title.split(' ')[0].lower()}_after.png"))


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
