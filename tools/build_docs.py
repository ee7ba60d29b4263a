"""Build the HTML docs site from nbs/ into _docs/ (`make docs`), offline and without executing the notebooks.

nbdev's `nbdev_docs` renders with quarto, which no registry this project installs from ships: the `quarto-cli`
package on PyPI is a source distribution that downloads quarto from GitHub while it builds. So the site is built
the way `nbdev_docs` builds it, up to the last step: nbdev's own notebook processors (`FilterDefaults`: front matter,
`show_doc` for every exported name, hidden and exported cells removed, backticked names linked to their API pages)
write `_proc/`, and nbconvert renders each processed notebook to HTML, with a sidebar grouping the notebooks by
layer (nbs/sidebar.yml, which `nbdev_docs` reads too where quarto is installed) and MathJax served from _docs/mathjax
(the `jupyter-server-mathjax` package). Only exported cells, imports and `show_doc` calls run; the outputs the
notebooks were saved with (figures, tables) are kept as they are.
"""
import ast, html, os, re, shutil, sys, time, warnings
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import yaml

# The sections of the sidebar: a notebook's layer is the first digit of its number (nbs/README's table of layers).
LAYERS = {"0": "Foundations", "1": "SSSS", "2": "Shape cues", "3": "HFPL", "4": "BANA, the methods by name",
          "5": "Run", "6": "Explore, benchmarks", "7": "Tables", "8": "CLI"}
BUILDER = Path(__file__).resolve()
MATHJAX = "mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full,Safe"

TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({tex2jax: {inlineMath: [['$','$'], ['\\(','\\)']], displayMath: [['$$','$$'], ['\\[','\\]']],
                              processEscapes: true, processEnvironments: true},
                    "HTML-CSS": {availableFonts: [], webFont: "STIX-Web", imageFont: null}, messageStyle: "none"});
</script>
<script src="{{ resources.site.mathjax }}"></script>
{%- endblock html_head_js_mathjax -%}
{%- block extra_css -%}
<style type="text/css">
body.jp-Notebook { display: flex; margin: 0; padding: 0; overflow: visible; }
nav.site-sidebar { position: sticky; top: 0; align-self: flex-start; flex: 0 0 15rem; height: 100vh; overflow-y: auto;
  box-sizing: border-box; padding: 1rem 0.8rem; border-right: 1px solid #ddd; background: #f7f7f9;
  font-family: system-ui, sans-serif; font-size: 14px; }
nav.site-sidebar .site-title { display: block; font-size: 1.25rem; font-weight: 600; color: #222; text-decoration: none;
  margin-bottom: 0.8rem; }
nav.site-sidebar h4 { margin: 0.9rem 0 0.2rem; font-size: 0.75rem; text-transform: uppercase; color: #777; }
nav.site-sidebar ul { list-style: none; margin: 0; padding: 0; }
nav.site-sidebar li a { display: block; padding: 0.15rem 0.4rem; border-radius: 3px; color: #2a5db0;
  text-decoration: none; }
nav.site-sidebar li a.active { background: #2a5db0; color: #fff; }
main.site-page { flex: 1 1 auto; min-width: 0; max-width: 70rem; padding: 1rem 2rem 4rem; }
header.page-header h1 { margin-bottom: 0.3rem; }
header.page-header p.description { font-size: 1.1rem; color: #555; margin-top: 0; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<nav class="site-sidebar">{{ resources.site.nav }}</nav>
<main class="site-page">
<header class="page-header"><h1 class="title">{{ resources.site.title | escape }}</h1>
{%- if resources.site.description %}<p class="description">{{ resources.site.description | escape }}</p>{% endif -%}
</header>
{%- endblock body_header -%}
"""


def page_name(nb: Path) -> str:
    "The HTML file nbdev gives a notebook: the number prefix dropped (`11_pamr.ipynb` -> `pamr.html`)."
    return re.sub(r"^\d+[a-zA-Z0-9]*_", "", nb.name.lower()).rsplit(".", 1)[0] + ".html"


def notebook_title(nb: Path) -> str:
    "The `# title` of a notebook's first markdown cell (the page title and its sidebar entry)."
    import json
    for cell in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        if cell["cell_type"] == "markdown":
            m = re.match(r"#\s+(.+)", "".join(cell["source"]).strip())
            return m.group(1).strip() if m else nb.stem
    return nb.stem


def sections(nbs: list[Path]) -> list[tuple[str, list[Path]]]:
    "The sidebar: index first, then the numbered notebooks grouped by layer, in order."
    out, index = [], [p for p in nbs if p.name == "index.ipynb"]
    if index: out.append(("", index))
    for digit, name in LAYERS.items():
        group = sorted(p for p in nbs if p.name[:1] == digit)
        if group: out.append((name, group))
    rest = sorted(p for p in nbs if p.name != "index.ipynb" and p.name[:1] not in LAYERS)
    if rest: out.append(("Other", rest))
    return out


def write_sidebar_yml(path: Path, secs) -> None:
    "nbs/sidebar.yml in quarto's format (`custom_sidebar = True` in settings.ini keeps nbdev from rewriting it)."
    contents = []
    for name, group in secs:
        if name: contents.append({"section": name, "contents": [p.name for p in group]})
        else: contents.extend(p.name for p in group)
    text = yaml.safe_dump({"website": {"sidebar": {"contents": contents}}}, sort_keys=False)
    if not path.exists() or path.read_text() != text: path.write_text(text)


def nav_html(secs, titles: dict, current: str) -> str:
    "The sidebar as HTML, the current page marked."
    def item(p):
        href = page_name(p)
        cls = ' class="active"' if href == current else ""
        return f'<li><a href="{href}"{cls}>{html.escape(titles[p.name])}</a></li>'
    parts = ['<a class="site-title" href="index.html">wsss_nb</a>']
    for name, group in secs:
        if name: parts.append(f"<h4>{html.escape(name)}</h4>")
        parts.append("<ul>" + "".join(item(p) for p in group) + "</ul>")
    return "\n".join(parts)


def _procs():
    "nbdev's docs processors, with `exec_show_docs` replaced by `exec_api_docs`."
    from nbdev.processors import FilterDefaults, exec_show_docs, _do_eval, _show_docs

    class exec_api_docs(exec_show_docs):
        "nbdev's `exec_show_docs`, except that a cell run only for its imports runs only its import statements."
        def __call__(self, cell):
            if not getattr(self.nb, "has_docs_", None) or not hasattr(self, "k") or not _do_eval(cell): return
            if cell.directives_.keys() & {"export", "exports", "exporti", "exec_doc"} or _show_docs(cell.parsed_()):
                return super().__call__(cell)
            imports = [ast.unparse(t) for t in cell.parsed_() if isinstance(t, (ast.Import, ast.ImportFrom))]
            if imports: self.k.run_cell("\n".join(imports))
            if self.k.exc: raise RuntimeError(f"{self.nb.path_}: the imports of cell {cell.idx_} fail") from self.k.exc

    return [exec_api_docs if p is exec_show_docs else p for p in FilterDefaults().procs()]


def split_title_cell(nb) -> None:
    """The first markdown cell keeps only `# title` and the `>` summary, joined into one line.

    nbdev turns that cell into the page's front matter and drops it, with any prose after the summary, and reads only
    the summary's first line; the prose moves to a cell of its own so that the page keeps it."""
    from execnb.nbio import NbCell
    first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"), None)
    if first is None: return
    lines = nb.cells[first].source.splitlines()
    title = next((i for i, line in enumerate(lines) if re.match(r"#\s+\S", line)), None)
    if title is None: return
    i, summary = title + 1, []
    while i < len(lines) and (not lines[i].strip() and not summary or lines[i].startswith(">")):
        if lines[i].startswith(">"): summary.append(lines[i].lstrip("> ").strip())
        i += 1
    head = lines[title] + ("\n\n> " + " ".join(summary) if summary else "")
    rest = "\n".join(lines[:title] + lines[i:]).strip()
    nb.cells[first].source = head
    if rest: nb.cells.insert(first + 1, NbCell(first + 1, dict(cell_type="markdown", metadata={}, source=rest)))
    for k, c in enumerate(nb.cells): c.idx_ = k


def process(src: Path, dst: Path) -> None:
    "Run nbdev's docs processors on one notebook (what `nbdev_proc_nbs` writes to _proc/)."
    from execnb.nbio import read_nb, write_nb
    from nbdev.process import NBProcessor
    warnings.filterwarnings("ignore", message="Found cells containing imports")
    os.environ["IN_TEST"] = "1"                                    # as nbdev's own docs worker
    try:
        nb = read_nb(src)
        split_title_cell(nb)
        NBProcessor(nb=nb, procs=_procs()).process()
        dst.parent.mkdir(parents=True, exist_ok=True)
        write_nb(nb, dst)
    finally: del os.environ["IN_TEST"]


_DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*:?\s*(.*?)\s*$")
_FENCE = re.compile(r"^:::.*$", re.MULTILINE)


def _site_cells(nb) -> dict:
    "Apply the quarto options nbdev's processors leave (echo, output, include), drop empty cells; the front matter."
    cells, fm = [], {}
    for cell in nb.cells:
        if cell.cell_type == "raw":                                # the YAML front matter nbdev writes
            if cell.source.startswith("---"): fm.update(yaml.safe_load(cell.source.strip().strip("-")) or {})
            continue
        if cell.cell_type == "markdown":
            cell.source = _FENCE.sub("", cell.source)
            if cell.source.strip(): cells.append(cell)
            continue
        lines, opts = cell.source.splitlines(), {}
        while lines and (m := _DIRECTIVE.match(lines[0])):
            opts[m.group(1)] = m.group(2).lower()
            lines.pop(0)
        cell.source = "\n".join(lines)
        tags = set(cell.metadata.get("tags", []))
        if opts.get("include") == "false": continue
        if opts.get("echo") == "false" or not cell.source.strip(): tags.add("remove_input")
        if opts.get("output") == "false": cell.outputs = []
        if "remove_input" in tags and not cell.get("outputs"): continue
        cell.metadata["tags"] = sorted(tags)
        cells.append(cell)
    nb.cells = cells
    return fm


def render(proc_nb: Path, out: Path, site: dict, link_prefixes: list[str]) -> None:
    "One processed notebook as an HTML page of the site."
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config
    nb = nbformat.read(proc_nb, as_version=4)
    fm = _site_cells(nb)
    site = dict(site, title=fm.get("title", site["title"]), description=fm.get("description", site["description"]))
    nb.metadata["title"] = site["title"] if site["title"] == "wsss_nb" else f"{site['title']} – wsss_nb"
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = ("remove_input",)
    c.HTMLExporter.exclude_input_prompt = c.HTMLExporter.exclude_output_prompt = True
    exporter = HTMLExporter(config=c, template_name="lab", extra_loaders=[DictLoader({"site.html.j2": TEMPLATE})],
                            template_file="site.html.j2")
    body, _ = exporter.from_notebook_node(nb, resources={"site": site})
    for prefix in link_prefixes: body = body.replace(f'href="{prefix}', 'href="')  # the API links stay in the site
    body = re.sub(r'<a href="[^"]*"[^>]*>source</a>(\{[^}<]*\})?', "", body)  # show_doc's [source]: no code host
    # nbdev's API links use lower-case anchors (as quarto's ids): lower-case the headings' ids and the in-site links
    body = re.sub(r'(href="[\w.-]*#)([^"]+)"', lambda m: m[1] + m[2].lower() + '"', body)
    seen = {}
    def heading(m):  # duplicates get -1, -2, ... (as pandoc's ids)
        i = m[2].lower()
        n = seen[i] = seen.get(i, -1) + 1
        new = f'{i}-{n}' if n else i
        link = 'class="anchor-link" href="#{}"'
        return f'<h{m[1]} id="{new}"' + m[3].replace(link.format(i), link.format(new))
    body = re.sub(r'<h([1-6]) id="([^"]+)"(.*?</h\1>)', heading, body, flags=re.S)
    out.write_text(body, encoding="utf-8")


def _job(args):
    src, proc_nb, out, site, prefixes, stamp = args
    t0 = time.monotonic()
    try:
        if not proc_nb.exists() or proc_nb.stat().st_mtime < max(src.stat().st_mtime, stamp):
            process(src, proc_nb)
        render(proc_nb, out, site, prefixes)
    except Exception as e:                                         # one line naming the notebook, across processes
        cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
        raise RuntimeError(f"{src.name}: {type(e).__name__}: {e}{cause}") from None
    return src.name, time.monotonic() - t0


def copy_mathjax(dest: Path) -> None:
    "MathJax 2 from the `jupyter-server-mathjax` package, so that pages render equations offline."
    import jupyter_server_mathjax
    static = Path(jupyter_server_mathjax.__file__).parent/"static"
    if not (dest/"MathJax.js").exists(): shutil.copytree(static, dest, dirs_exist_ok=True)


def build(n_workers: int = 2, out: Path | None = None, cache: Path | None = None, quarto_yml: bool = True) -> Path:
    "The site in `out` (settings.ini's doc_path, _docs/); processed notebooks cached in `cache` (_proc/)."
    from nbdev.config import get_config
    from nbdev.quarto import refresh_quarto_yml
    cfg = get_config()
    nbs_path, out, cache = cfg.nbs_path, Path(out or cfg.doc_path), Path(cache or cfg.config_path/"_proc")
    nbs = sorted(nbs_path.glob("*.ipynb"))                         # recursive = False: nbs/experiments/ are not pages
    secs = sections(nbs)
    if quarto_yml:                                                 # nbs/nbdev.yml and sidebar.yml for `nbdev_docs`
        refresh_quarto_yml()
        write_sidebar_yml(nbs_path/"sidebar.yml", secs)
    titles = {p.name: ("Home" if p.name == "index.ipynb" else notebook_title(p)) for p in nbs}
    # redo a processed notebook when it, this builder, settings.ini or the symbol index (API links) changed
    stamp = max(f.stat().st_mtime for f in (BUILDER, cfg.config_file, cfg.lib_path/"_modidx.py") if f.exists())
    prefixes = sorted({cfg.doc_host.rstrip("/") + cfg.doc_baseurl.rstrip("/") + "/", "/"} - {"/"})
    out.mkdir(parents=True, exist_ok=True)
    copy_mathjax(out/"mathjax")
    jobs = []
    for p in nbs:
        page = page_name(p)
        site = dict(title=cfg.title if p.name == "index.ipynb" else titles[p.name], description=None,
                    nav=nav_html(secs, titles, page), mathjax=MATHJAX)
        if p.name == "index.ipynb": site["description"] = cfg.description
        jobs.append((p.resolve(), cache/p.name, out/page, site, prefixes, stamp))
    t0 = time.monotonic()
    with ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as ex:
        for name, dt in ex.map(_job, jobs): print(f"  {name}: {dt:.1f} s", flush=True)
    pages = {page_name(p) for p in nbs}
    for stale in out.glob("*.html"):
        if stale.name not in pages: stale.unlink()
    print(f"docs: {len(jobs)} pages in {time.monotonic() - t0:.0f} s -> {out/'index.html'}")
    return out


if __name__ == "__main__":
    import build_docs       # by name: the workers find `_job` there (IPython's shell replaces their `__main__`)
    try: build_docs.build(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    except RuntimeError as e: sys.exit(f"docs: {e}")
