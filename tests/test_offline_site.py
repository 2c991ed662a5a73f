"""tools/offline_site.py on a small site made of d2lbook's own page parts.

The whole book is checked in a browser by test_site_browser.py; these checks
are the script's own: what it changes, that it refuses a site that still needs
the network or misses a file, and that running it again changes nothing.
"""
import pathlib
import sys

import pytest
from d2lbook import sphinx_template as template

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tools'))
import offline_site  # noqa: E402

PAGE = '''<html><head>
<link rel="stylesheet" href="../_static/fonts.css" type="text/css" />
<link rel="next" title="Next" href="https://example.org/next.html" />
<script src="../_static/d2l.js"></script>
<script async="async" src="../_static/mathjax/tex-mml-chtml.js"></script>
</head><body>{body}<a href="https://colab.research.google.com/x.ipynb">Colab</a></body></html>'''
FONTS = '''@font-face { font-family: 'Roboto'; src: url(roboto.woff2) format('woff2'); }
/* a comment naming http://www.google.com/fonts/earlyaccess */
@font-face { font-family: 'Noto Sans Japanese'; src: url(//fonts.gstatic.com/ea/NotoSansJP-Thin.woff2); }
'''


def make_site(folder, body=''):
    static = folder / '_static'
    static.mkdir(parents=True)
    # d2l.js as d2lbook 1.0.3 writes it (SphinxEnv._write_js), plus our include_js.
    (static / 'd2l.js').write_text(
        template.shorten_sec_num + template.replace_qr + template.copybutton_js + template.discourse_js
        + template.tabbar_js + template.google_tracker.replace('GOOGLE_ANALYTICS_TRACKING_ID', '')
        + (ROOT / 'static' / 'code_tabs.js').read_text())
    (static / 'fonts.css').write_text(FONTS)
    (static / 'roboto.woff2').write_bytes(b'font')
    (folder / 'chapter').mkdir()
    (folder / 'chapter' / 'page.html').write_text(PAGE.format(body=body))
    return folder


def run(site):
    offline_site.main([str(site), '--mathjax', str(ROOT / 'node_modules' / 'mathjax'),
                       '--copy-button', str(ROOT / 'static' / 'copy-button.svg')])


def test_the_site_is_made_to_load_nothing_from_the_network(tmp_path):
    site = make_site(tmp_path / 'html', body='<img src="../_static/copy-button.svg">')
    run(site)
    d2l_js = (site / '_static' / 'd2l.js').read_text()
    assert 'http' not in d2l_js
    assert '${DOCUMENTATION_OPTIONS.URL_ROOT}_static/copy-button.svg' in d2l_js
    assert 'function discourse_embed() {}' in d2l_js and 'function select_tab(i)' in d2l_js
    assert 'STORAGE_KEY' in d2l_js  # our tab switch is still there
    assert (site / '_static' / 'mathjax' / 'output' / 'chtml' / 'fonts' / 'woff-v2').is_dir()
    fonts = (site / '_static' / 'fonts.css').read_text()
    assert 'gstatic' not in fonts and 'roboto.woff2' in fonts
    before = {path: path.read_bytes() for path in site.rglob('*') if path.is_file()}
    run(site)  # Sphinx rewrites only what changed: a second run must find its own work
    assert before == {path: path.read_bytes() for path in site.rglob('*') if path.is_file()}


@pytest.mark.parametrize('body, problem', [
    ('<script src="https://cdn.example.org/lib.js"></script>', 'loads https://cdn.example.org/lib.js from the network'),
    ('<img src="//example.org/plot.png">', 'loads //example.org/plot.png from the network'),
    ('<img src="../_images/missing.svg">', 'loads ../_images/missing.svg, which is not in the build'),
])
def test_a_page_that_needs_the_network_or_a_missing_file_fails_by_name(tmp_path, body, problem):
    site = make_site(tmp_path / 'html', body=body)
    with pytest.raises(SystemExit) as failure:
        run(site)
    assert f'chapter/page.html {problem}' in str(failure.value)


def test_a_d2lbook_whose_snippets_changed_is_reported(tmp_path):
    site = make_site(tmp_path / 'html')
    d2l_js = site / '_static' / 'd2l.js'
    d2l_js.write_text(d2l_js.read_text().replace("ga('send', 'pageview');", "ga('send', 'view');"))
    with pytest.raises(SystemExit, match="Google Analytics tracker 0 times.*update tools/offline_site.py"):
        run(site)


def test_missing_mathjax_says_how_to_get_it(tmp_path):
    site = make_site(tmp_path / 'html')
    with pytest.raises(SystemExit, match='make js-deps'):
        offline_site.main([str(site), '--mathjax', str(tmp_path / 'nowhere'),
                           '--copy-button', str(ROOT / 'static' / 'copy-button.svg')])
