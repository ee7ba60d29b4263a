"""The docs site (`make docs`, tools/build_docs.py) built into a temporary folder: a page per notebook, the API from
`show_doc`, links that stay in the site, nothing fetched from outside. tests/test_ui.py opens it in Chromium."""
import re, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/"tools"))
import build_docs  # noqa: E402


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("docs")
    return build_docs.build(n_workers=2, out=tmp/"_docs", cache=tmp/"_proc", quarto_yml=False)


def test_a_page_per_notebook(site):
    nbs = sorted((ROOT/"nbs").glob("*.ipynb"))
    assert {build_docs.page_name(p) for p in nbs} == {p.name for p in site.glob("*.html")}
    assert (site/"mathjax"/"MathJax.js").exists()
    index = (site/"index.html").read_text()
    assert "<title>wsss_nb</title>" in index and "make docs" in index
    assert "Every published component runnable" in index        # the prose after the summary is kept
    nav = re.search(r'<nav class="site-sidebar">(.*?)</nav>', index, re.S).group(1)
    assert all(f'href="{build_docs.page_name(p)}"' in nav for p in nbs)
    layers = ("Foundations", "SSSS", "Shape cues", "HFPL", "BANA, the methods by name", "Run", "Explore, benchmarks",
              "Tables", "CLI")
    assert [s for s in layers if f"<h4>{s}</h4>" not in nav] == []


def test_api_page(site):
    page = (site/"pamr.html").read_text()
    assert re.search(r'<h3 id="pamr-\d">PAMR<', page) and '<span class="nf">PAMR</span>' in page  # show_doc, signature
    assert "Pixel-adaptive mask refinement" in page                                      # its docstring
    assert "$$" in page and "mathjax/MathJax.js" in page                                 # equations for MathJax
    assert 'href="core.html#configerror"' in page and 'id="configerror"' in (site/"core.html").read_text()
    assert "wsss-nb.local" not in page and "target=" not in page                         # no dead source links


def test_links_stay_in_the_site(site):
    pages = {p.name: p.read_text() for p in site.glob("*.html")}
    ids = {n: set(re.findall(r' id="([^"]+)"', s)) for n, s in pages.items()}
    bad = []
    for name, s in pages.items():
        bad += [(name, u) for u in re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="((?:https?:)?//[^"]+)"', s)]
        for href in re.findall(r'href="([^":]*)"', s):
            target, _, anchor = href.partition("#")
            target = target or name
            if target.startswith("mathjax/"): continue
            # methods get an anchor only where a notebook calls show_doc on them (as with quarto)
            if target not in pages or (anchor and "." not in anchor and anchor not in ids[target]):
                bad.append((name, href))
    assert not bad, bad[:10]
