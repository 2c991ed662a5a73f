"""Make the HTML book that `d2lbook build html` wrote load nothing from the network.

Run by the Makefile's html target right after d2lbook. A reader who opens
build/html/index.html without a network (or a mirror behind a firewall) should
see every formula, icon, figure and the PyTorch/JAX switch. d2lbook 1.0.3 and
its Sphinx theme load four things from the internet; this step puts each in the
build or removes it:

- MathJax: config.ini points Sphinx's `mathjax_path` at _static/mathjax/, and
  this step copies MathJax 3 there from the npm package (package.json pins it;
  `make js-deps` installs it).
- The copy-to-clipboard icon that d2l.js takes from raw.githubusercontent.com:
  our own static/copy-button.svg, copied to _static/.
- Google Analytics (d2l.js always embeds the tracker, with an empty id), and
  Discourse comments under any heading containing "Discuss": the book has
  neither, and the Discourse code turned the section "Discussion" into a
  script request for the page itself. Both are replaced by no-ops.
- Noto Sans Japanese from fonts.gstatic.com in the theme's fonts.css, a font
  that no style of the theme uses: its @font-face rules are removed.

The edits replace d2lbook's own snippets (taken from d2lbook.sphinx_template),
so an update of d2lbook that changes them fails here instead of silently
leaving a network load. Afterwards every page is checked: no script, style
sheet, image or font comes from the network, and every local one exists. The
step is idempotent (Sphinx rewrites d2l.js on every build anyway) and
deterministic: it copies files and rewrites text, nothing depends on time.

Usage: python tools/offline_site.py BUILD_HTML --mathjax NODE_MODULES/mathjax
                                   --copy-button static/copy-button.svg
"""
import argparse
import html.parser
import json
import pathlib
import re
import shutil
import sys
import urllib.parse

from d2lbook import sphinx_template

MATHJAX_VERSION = '3.2.2'  # the version Sphinx 5.3's MathJax setup is written for
MATHJAX_ENTRY = 'tex-mml-chtml.js'  # what config.ini's mathjax_path names, under _static/mathjax/

# What replaces d2lbook's tracker: no tracking, but captureOutboundLink() (the
# Colab buttons) only navigates in the tracker's callback, so call it at once.
NO_TRACKER = """
// Offline book (tools/offline_site.py): no Google Analytics. captureOutboundLink
// still follows its link, which the tracker's callback used to do.
function ga() {
    var fields = arguments[arguments.length - 1];
    if (fields && typeof fields.hitCallback === 'function') fields.hitCallback();
}
var captureOutboundLink = function(url) { document.location = url; };
var tagClick = function(tab) {};
"""
NO_DISCOURSE_HEADING = """
// Offline book (tools/offline_site.py): no Discourse comments under "Discuss" headings.
"""
NO_DISCOURSE_LINKS = """
// Offline book (tools/offline_site.py): no Discourse comments; select_tab() calls this.
function discourse_embed() {}
"""
COPY_BUTTON_URL = ('https://raw.githubusercontent.com/choldgraf/sphinx-copybutton/master/'
                   'sphinx_copybutton/_static/copy-button.svg')
# Inside d2l.js's template string; the URL root makes it work on pages at any depth.
LOCAL_COPY_BUTTON = '${DOCUMENTATION_OPTIONS.URL_ROOT}_static/copy-button.svg'

REMOTE = re.compile(r'^([a-z][a-z0-9+.-]*:|//)', re.I)  # http:, https:, //host, data:, ...
FONT_FACE = re.compile(r'@font-face\s*\{[^}]*\}')
CSS_URL = re.compile(r'url\(\s*[\'"]?([^\'")]+)|@import\s+[\'"]([^\'"]+)')
CSS_COMMENT = re.compile(r'/\*.*?\*/', re.S)


class SiteError(Exception):
    pass


def replace_once(text, old, new, what):
    """Replace d2lbook's snippet `old`; it must be there once, unless already replaced."""
    count = text.count(old)
    if count == 1:
        return text.replace(old, new)
    if count == 0 and new in text:
        return text
    raise SiteError(f'd2l.js holds {what} {count} times, expected once: d2lbook changed, '
                    'update tools/offline_site.py')


def offline_d2l_js(path, copy_button):
    js = path.read_text()
    tracker = sphinx_template.google_tracker.replace('GOOGLE_ANALYTICS_TRACKING_ID', '')
    js = replace_once(js, tracker, NO_TRACKER, "d2lbook's Google Analytics tracker")
    js = replace_once(js, sphinx_template.replace_qr, NO_DISCOURSE_HEADING,
                      'the Discourse embedding for "Discuss" headings')
    js = replace_once(js, sphinx_template.discourse_js, NO_DISCOURSE_LINKS,
                      'the Discourse embedding for "Discussions" links')
    js = replace_once(js, COPY_BUTTON_URL, LOCAL_COPY_BUTTON, 'the copy icon address')
    path.write_text(js)
    shutil.copyfile(copy_button, path.parent / 'copy-button.svg')


def copy_mathjax(mathjax, static):
    """Copy MathJax's browser build (es5/: the entry script plus the fonts and
    extensions it loads on demand, by paths relative to itself)."""
    package = json.loads((mathjax / 'package.json').read_text())
    if package.get('version') != MATHJAX_VERSION:
        raise SiteError(f'{mathjax} is MathJax {package.get("version")}, expected {MATHJAX_VERSION}: '
                        'run `make js-deps`')
    target = static / 'mathjax'
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(mathjax / 'es5', target)
    shutil.copyfile(mathjax / 'LICENSE', target / 'LICENSE')


def drop_remote_fonts(css_path):
    css = css_path.read_text()
    css = FONT_FACE.sub(lambda m: '' if any(map(is_remote, css_urls(m.group(0)))) else m.group(0), css)
    css_path.write_text(css)


def is_remote(url):
    url = url.strip()
    return bool(REMOTE.match(url)) and not url.startswith('data:')  # data: is inline


def css_urls(css):
    css = CSS_COMMENT.sub('', css)
    return [a or b for a, b in CSS_URL.findall(css)]


class Loads(html.parser.HTMLParser):
    """What a page loads by itself: scripts, style sheets, icons, images, frames."""
    NAVIGATION = {'index', 'search', 'next', 'prev', 'canonical', 'alternate', 'author', 'license'}

    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'link' and not set((attrs.get('rel') or '').split()) & self.NAVIGATION:
            self.urls.append(attrs.get('href'))
        elif tag in ('script', 'img', 'iframe', 'source', 'embed', 'audio', 'video'):
            self.urls.append(attrs.get('src'))
        elif tag == 'object':
            self.urls.append(attrs.get('data'))


def local_path(base, url):
    path = urllib.parse.unquote(urllib.parse.urlsplit(url.strip()).path)
    return (base / path).resolve() if path else None


def url_problem(site, file, url):
    """What is wrong with `file` (a page or a style sheet) loading `url`, or None."""
    name = file.relative_to(site)
    if url.strip().startswith('data:'):
        return None
    if is_remote(url):
        return f'{name} loads {url} from the network'
    if not local_path(file.parent, url).is_file():
        return f'{name} loads {url}, which is not in the build'
    return None


def problems_of(site):
    problems = []
    pages = sorted(site.rglob('*.html'))
    if not pages:
        problems.append(f'{site} holds no HTML pages')
    for page in pages:
        parser = Loads()
        parser.feed(page.read_text())
        problems += [url_problem(site, page, url) for url in filter(None, parser.urls)]
    for css in sorted(site.rglob('*.css')):
        problems += [url_problem(site, css, url) for url in css_urls(css.read_text())]
    problems = [problem for problem in problems if problem]
    d2l_js = site / '_static' / 'd2l.js'
    for url in re.findall(r'https?://[^\s\'"`)]+', d2l_js.read_text()):
        problems.append(f'_static/d2l.js still names {url}')
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('site', type=pathlib.Path, help='the HTML build, e.g. build/html')
    parser.add_argument('--mathjax', type=pathlib.Path, required=True,
                        help='the npm package mathjax, e.g. node_modules/mathjax')
    parser.add_argument('--copy-button', type=pathlib.Path, required=True,
                        help='the copy-to-clipboard icon, e.g. static/copy-button.svg')
    args = parser.parse_args(argv)
    static = args.site / '_static'
    try:
        if not (static / 'd2l.js').is_file():
            raise SiteError(f'{static}/d2l.js is missing: run `d2lbook build html` first')
        if not (args.mathjax / 'es5' / MATHJAX_ENTRY).is_file():
            raise SiteError(f'{args.mathjax} holds no MathJax build: run `make js-deps`')
        if not args.copy_button.is_file():
            raise SiteError(f'{args.copy_button} is missing')
        copy_mathjax(args.mathjax, static)
        offline_d2l_js(static / 'd2l.js', args.copy_button)
        drop_remote_fonts(static / 'fonts.css')
        problems = problems_of(args.site)
    except SiteError as error:
        sys.exit(f'offline_site: {error}')
    if problems:
        sys.exit('offline_site: the HTML book still needs the network or misses files:\n  '
                 + '\n  '.join(problems))
    print(f'offline_site: {args.site} loads nothing from the network '
          f'(MathJax {MATHJAX_VERSION} in _static/mathjax)')


if __name__ == '__main__':
    main()
