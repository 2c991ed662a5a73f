"""The built HTML book in a real browser, as a reader without a network meets it.

Headless Debian Chromium (installed by `make system-deps`), driven by
Playwright's Python package against that binary (Playwright's own browser
downloads are never used), opens the pages of the `book` fixture's build from
disk while every request that is not for a local file is refused. Screenshots
go to the book's build/screenshots/ for a person to look at.
"""
import shutil

import pytest
from playwright.sync_api import sync_playwright

SECTION = 'chapter_vit/vision-transformer.html'
OTHER_PAGE = 'chapter_vit/exercise-pooling.html'
FRAMEWORKS = ('pytorch', 'jax')
# Chromium as the machines of this project run it: no sandbox (root), and no
# background connections of its own (they would fail on a closed network).
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-quic']
MATHJAX_TIMEOUT_MS = 60_000  # typesetting a long page on a busy 2-core machine


@pytest.fixture(scope='module')
def chromium():
    executable = shutil.which('chromium')
    assert executable, 'chromium is missing: run `make system-deps` (Debian package chromium)'
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class OfflinePage:
    """A page whose context refuses every request but local files, recording
    what it refused, what failed to load and every JavaScript error."""

    def __init__(self, browser, site):
        self.site = site
        self.refused, self.failed, self.errors = [], [], []
        self.context = browser.new_context(viewport={'width': 1280, 'height': 900})
        self.context.route('**/*', self._route)
        self.page = self.context.new_page()
        self.page.on('requestfailed', lambda request: self.failed.append(f'{request.url}: {request.failure}'))
        self.page.on('pageerror', lambda error: self.errors.append(str(error)))

    def _route(self, route):
        url = route.request.url
        if url.startswith(('file:', 'data:', 'blob:')):
            route.continue_()
        else:
            self.refused.append(url)
            route.abort('internetdisconnected')

    def open(self, path):
        self.page.goto((self.site / path).as_uri(), wait_until='load')
        return self.page

    def shot(self, name, **options):
        folder = self.site.parent / 'screenshots'
        folder.mkdir(exist_ok=True)
        self.page.screenshot(path=str(folder / f'{name}.png'), **options)


@pytest.fixture
def offline(chromium, book):
    page = OfflinePage(chromium, book / 'build' / 'html')
    yield page
    page.context.close()


def shown_frameworks(page):
    """For each code block (tab group) of the page, the framework of the tab
    and of the panel it shows."""
    return page.evaluate('''() => Array.from(document.querySelectorAll('.mdl-tabs')).map(group => {
        const tab = group.querySelector(':scope > .mdl-tabs__tab-bar > .mdl-tabs__tab.is-active');
        const panels = Array.from(group.querySelectorAll(':scope > .mdl-tabs__panel'))
            .filter(panel => panel.offsetParent !== null);  // laid out, so visible
        return [tab ? tab.textContent.trim() : null, panels.map(panel => panel.id.split('-')[0]).join(',')];
    })''')


def assert_every_block_shows(page, framework):
    shown = shown_frameworks(page)
    assert len(shown) >= 5, f'only {len(shown)} code blocks on {page.url}'
    wrong = [(i, tab, panels) for i, (tab, panels) in enumerate(shown) if (tab, panels) != (framework, framework)]
    assert not wrong, f'blocks (index, tab, visible panels) not showing {framework} on {page.url}: {wrong}'


def test_the_section_loads_offline_with_math_and_every_image(offline):
    page = offline.open(SECTION)
    # Checked now too, so that a MathJax refused by the network fails at once.
    assert not offline.refused, f'requests to the network: {offline.refused}'
    page.wait_for_selector('mjx-container', timeout=MATHJAX_TIMEOUT_MS)
    # MathJax typesets the whole page at once; then no formula is left as TeX.
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=MATHJAX_TIMEOUT_MS)
    page.evaluate('() => MathJax.startup.promise')
    untypeset = page.evaluate('''() => Array.from(document.querySelectorAll('.math'))
        .filter(math => !math.querySelector('mjx-container')).map(math => math.textContent.slice(0, 60))''')
    assert page.locator('.math').count() >= 10
    assert not untypeset, f'formulas not typeset: {untypeset[:5]}'
    images = page.evaluate('''() => Array.from(document.images).map(img => [img.getAttribute('src'), img.complete, img.naturalWidth])''')
    assert any('vit.svg' in src for src, _, _ in images), 'the figure of the architecture is not on the page'
    assert any('copy-button.svg' in src for src, _, _ in images), 'no copy-to-clipboard icons on the page'
    broken = sorted({src for src, complete, width in images if not (complete and width > 0)})
    assert not broken, f'images that did not load: {broken}'
    offline.shot('section-top')
    page.locator('.math mjx-container').first.evaluate("math => math.scrollIntoView({block: 'center'})")
    offline.shot('section-formula')
    assert not offline.refused, f'requests to the network: {offline.refused}'
    assert not offline.failed, f'failed requests: {offline.failed}'
    assert not offline.errors, f'JavaScript errors: {offline.errors}'


def test_choosing_jax_on_one_block_switches_every_block_and_the_next_page(offline):
    page = offline.open(SECTION)
    assert_every_block_shows(page, 'pytorch')  # the first tab, for a reader who never chose
    groups = page.locator('.mdl-tabs')
    third_block_jax = groups.nth(2).locator(':scope > .mdl-tabs__tab-bar > a[href^="#jax-"]')
    third_block_jax.click()
    assert_every_block_shows(page, 'jax')
    colab = page.evaluate('''() => Array.from(document.querySelectorAll('.d2l-tabs__tab'))
        .filter(button => button.offsetParent !== null).map(button => button.textContent.trim())''')
    assert colab and all('jax' in text for text in colab), f'Colab buttons shown: {colab}'
    groups.nth(2).evaluate("block => block.scrollIntoView({block: 'center'})")
    offline.shot('section-jax')

    page = offline.open(OTHER_PAGE)  # a new page load: the choice comes from localStorage
    assert_every_block_shows(page, 'jax')
    offline.shot('exercise-jax')
    page.locator('.mdl-tabs').nth(1).locator(':scope > .mdl-tabs__tab-bar > a[href^="#pytorch-"]').click()
    assert_every_block_shows(page, 'pytorch')

    page = offline.open(SECTION)
    assert_every_block_shows(page, 'pytorch')
    assert not offline.refused, f'requests to the network: {offline.refused}'
    assert not offline.failed, f'failed requests: {offline.failed}'
    assert not offline.errors, f'JavaScript errors: {offline.errors}'
