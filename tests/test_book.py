"""The whole book builds, offline and in quick mode, from a copy of the sources.

One build (the `book` fixture of conftest.py: library, both tabs' notebooks,
HTML with both tabs, Colab notebooks) serves all the checks below.
"""
import json
import pathlib
import re

import pytest

from d2l_extras.data import fashion_mnist
from d2l_extras.run import reference_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
SECTION = 'chapter_vit/vision-transformer'
# Where Debian's copy of Fashion-MNIST is installed (as `make system-deps`
# installs it), the book must train on it; elsewhere on the stand-in.
SYSTEM_COPY = all((pathlib.Path(fashion_mnist.SYSTEM_FOLDERS[0]) / name).exists()
                  for name, _ in fashion_mnist.FILES.values())
DATASET = 'Fashion-MNIST' if SYSTEM_COPY else 'UCI digits (offline stand-in)'
DATA_LINE = ('Fashion-MNIST from the system copy' if SYSTEM_COPY
             else 'Fashion-MNIST is not available offline')
# The section's reference run, with the parameters what-vit-learns loads
SECTION_REFERENCE = reference_runs.parameters_path('vision-transformer', 'vit', 'pytorch').exists()


def notebook(book, folder, page=SECTION):
    return json.loads((book / 'build' / folder / f'{page}.ipynb').read_text())


def outputs(nb):
    texts = []
    for cell in nb['cells']:
        for out in cell.get('outputs', []):
            assert out['output_type'] != 'error', out
            texts.append(''.join(out.get('text', '')) +
                         ''.join(out.get('data', {}).get('text/plain', '')))
    return '\n'.join(texts)


def test_the_library_is_in_step_with_the_book(book):
    for module in ('torch.py', 'jax.py'):
        assert (book / 'd2l_extras' / module).read_text() == (ROOT / 'd2l_extras' / module).read_text(), (
            f'd2l_extras/{module} differs from what `d2lbook build lib` writes: run `make lib` and commit')


@pytest.mark.parametrize('folder, framework_line', [('eval', 'import torch'), ('eval_jax', 'import jax')])
def test_each_tab_evaluates_in_quick_mode_on_the_real_data(book, folder, framework_line):
    nb = notebook(book, folder)
    sources = '\n'.join(''.join(cell['source']) for cell in nb['cells'] if cell['cell_type'] == 'code')
    assert framework_line in sources
    text = outputs(nb)
    assert 'Quick mode: 2 of 10 epochs' in text
    assert DATA_LINE in text
    # The section's model learns in quick mode: at least three times chance
    accuracy = float(re.search(rf'validation accuracy (\d\.\d+) on {re.escape(DATASET)}', text)[1])
    assert accuracy > 0.3
    # ... and shows the reference run of the full settings beside its own
    if SECTION_REFERENCE:
        assert re.search(r'Reference run \(PyTorch, .*: 10 epochs on 60,000 Fashion-MNIST training '
                         r'images, validated on 10,000, .* validation accuracy 0\.\d{3}\.', text)
    else:
        assert 'No reference run is recorded for vision-transformer (vit) yet' in text
    # ... and is saved for the analysis section, next to the notebook
    assert (book / 'build' / folder / 'chapter_vit' / 'vit.params').stat().st_size > 20e6


@pytest.mark.skipif(not SYSTEM_COPY, reason="Debian's dataset-fashion-mnist is not installed")
@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_no_page_trains_on_the_standin_while_the_real_data_is_installed(book, folder):
    pages = sorted((book / 'build' / folder / 'chapter_vit').glob('*.ipynb'))
    assert len(pages) >= 8
    for page in pages:
        text = outputs(json.loads(page.read_text()))
        assert 'Fashion-MNIST is not available offline' not in text, f'{page.name} used the stand-in'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_no_page_prints_a_warning_or_a_folder_of_the_machine_that_built_it(book, folder):
    for page in sorted((book / 'build' / folder / 'chapter_vit').glob('*.ipynb')):
        text = outputs(json.loads(page.read_text()))
        warning = re.search(r'\w+Warning: .*', text)
        assert not warning, f'{page.name} ({folder}) prints {warning[0]!r}'
        for folder_here in (ROOT, book):
            assert str(folder_here) not in text, f'{page.name} ({folder}) prints {folder_here}'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
@pytest.mark.parametrize('page', ['exercise-pooling', 'exercise-accuracy', 'position-embeddings',
                                  'vit-vs-cnn', 'training-recipe', 'deit', 'swin',
                                  'masked-autoencoder', 'fine-tuning'])
def test_each_page_that_trains_shows_its_reference_run_or_says_there_is_none(book, folder, page):
    text = outputs(notebook(book, folder, f'chapter_vit/{page}'))
    recorded = sorted(reference_runs.FOLDER.glob(f'{page}--*.json'))
    if recorded:
        assert 'Reference run (' in text, f'{page} ({folder}) does not show {recorded}'
    else:
        assert re.search(rf'^No reference run is recorded for {page} \(.*\) yet', text, re.MULTILINE)


# What each exercise notebook prints, in both tabs, and what only one tab prints.
EXERCISES = {
    'chapter_vit/exercise-pooling': (
        ['Quick mode: 2 of 10 epochs on at most 512 training', 'pooling   val loss',
         'mean pooling minus class token'],
        {'eval': [], 'eval_jax': []}),
    'chapter_vit/exercise-image-size': (
        ['Quick mode: minibatches of 8', 'ms per step', 'c0 =', 'GFLOP/s'],
        {'eval': [], 'eval_jax': ['compiled in']}),
    'chapter_vit/exercise-accuracy': (
        ['Quick mode: 1 of 10 epochs on at most 256 training and 256 validation',
         # where d2l's settings end: the section's reference run
         'Reference run (PyTorch, ' if SECTION_REFERENCE
         else 'No reference run is recorded for vision-transformer (vit) yet',
         '1 of 10 epochs, quick mode',
         '+ label smoothing'],
        {'eval': [], 'eval_jax': []}),
    'chapter_vit/position-embeddings': (
        # the jigsaw: without position embeddings nothing changes (up to rounding)
        [re.compile(r"posemb='none': class token output changes by \d\.\de-0[5-9], "
                    r'patch outputs by \d\.\de-0[5-9]'),
         re.compile(r"posemb='learn': class token output changes by \d\.\de[+-]0[0-2]"),
         'sincos2d: neighbours 0.986', 'Quick mode: 1 of 10 epochs on at most 128 training',
         'posemb     val acc', 'No reference run is recorded for position-embeddings',
         re.compile(r'interpolated: neighbours 0\.99\d\d'), 'recomputed: neighbours 0.9862'],
        {'eval': [], 'eval_jax': []}),
    'chapter_vit/masked-autoencoder': (
        # 12 of 49 patches kept; un-shuffling restores the order
        ['(49, 12)', '[37., 37., 37., 37., 37., 37., 37., 37.]',
         re.compile(r'13, 512.*49, 16.*8, 49', re.DOTALL),
         # the loss ignores a changed visible patch, and not a masked one
         re.compile(r'as predicted: (\d\.\d{4})\n\s+visible: \1\n\s+masked: (?!\1)'),
         'Quick mode: 2 of 40 epochs on at most 1024 training',
         'Quick mode: 2 of 50 epochs', 'fine-tune, 600 labels',
         'linear probe, 600 labels', 'scratch, 600 labels',
         'No reference run is recorded for masked-autoencoder'],
        {'eval': [], 'eval_jax': []}),
    'chapter_vit/fine-tuning': (
        # offline: no download, the section's ViT fine-tuned onto the digits
        ['Offline: not downloading vit_small_patch16_224.augreg_in21k_ft_in1k',
         'Loaded the trained parameters from',
         'UCI digits from scikit-learn: 1,413 training and 384 validation images',
         'Quick mode: 2 of 20 epochs on at most 256 training',
         re.compile(r'fine-tuned on UCI digits\s+0\.\d{3}'),
         re.compile(r'from scratch on UCI digits\s+0\.\d{3}')],
        {'eval': ['cannot convert a timm VisionTransformer with init_values (LayerScale)'],
         'eval_jax': ["cannot load 'pre_logits/kernel' into the chapter's ViT"]}),
    'chapter_vit/distributed': (
        # data parallelism takes the step of one device with the whole minibatch
        ['Quick mode: 1 of 10 epochs on at most 1024 training and 256 validation',
         re.compile(r'vs 128 (in|on) one: largest difference '
                    r'(\d\.\de-(0[6-9]|[1-9]\d)|0\.0e\+00)'),
         'ViT-B/16: 86,567,656 parameters',
         '2 device(s): parameters 165.1 MiB, gradients 165.1 MiB, AdamW 330.2 MiB'],
        {'eval': ['process 0 vs process 1: 0.0e+00',
                  # one process and two, the cores shared among them
                  re.compile(r'1 process\(es\) on cpu, \d+ thread\(s\) each, 128 examples'),
                  re.compile(r'2 process\(es\) on cpu, \d+ thread\(s\) each, 64 examples'),
                  # FSDP2 halves everything: measured as computed
                  '86,420,200 parameters, 2 processes',
                  'process 0: parameters 164.8 MiB, gradients 164.8 MiB, AdamW 329.7 MiB',
                  'computed for 2 devices: 164.8 MiB, 164.8 MiB, 329.7 MiB'],
         'eval_jax': [re.compile(r'all-reduce of \d+ arrays, from jit\(train_step\)'),
                      re.compile(r'tensor-parallel vs replicated logits: largest difference '
                                 r'\d\.\de-(0[5-9]|[1-9]\d)'),
                      'all-reduce of 1 array, from jit(<lambda>)/ViT/blks_0/mlp/dense2/dot_general',
                      'all-reduce of 1 array, from jit(<lambda>)/ViT/blks_1/mlp/dense2/dot_general',
                      '1 device: ', '2 devices: ']}),
}


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
@pytest.mark.parametrize('page', sorted(EXERCISES))
def test_each_exercise_evaluates_in_both_tabs_in_quick_mode(book, page, folder):
    text = outputs(notebook(book, folder, page))  # fails on any error output
    both, own = EXERCISES[page]
    for expected in both + own[folder]:
        found = expected.search(text) if isinstance(expected, re.Pattern) else expected in text
        assert found, f'{page} ({folder}) does not print {expected!r}'


ANALYSIS = 'chapter_vit/what-vit-learns'


def figure_cells(nb):
    """The code cells whose output the next Markdown cell captions as a figure."""
    cells = nb['cells']
    return [cell for cell, caption in zip(cells, cells[1:]) if cell['cell_type'] == 'code'
            and caption['cell_type'] == 'markdown' and ''.join(caption['source']).startswith('**Figure:**')]


def has_image(cell):
    return any(key.startswith('image/') for out in cell.get('outputs', [])
               for key in out.get('data', {}))


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_the_analysis_section_evaluates_in_both_tabs_with_every_figure(book, folder):
    nb = notebook(book, folder, ANALYSIS)
    text = outputs(nb)  # fails on any error output
    # The build runs the analysis after the section, so it loads the section's model
    loaded = 'Loaded the trained parameters from ' + (
        'd2l_extras/reference_runs/vision-transformer--vit--pytorch.npz'
        if SECTION_REFERENCE else 'vit.params')
    for expected in ['Quick mode: 2 of 10 epochs', loaded,
                     'validation accuracy', 'the first 28 explain',
                     'neighbours minus the rest', 'uniform attention: 49.3 pixels', 'block 2:', '(14, 12)']:
        assert expected in text, f'{ANALYSIS} ({folder}) does not print {expected!r}'
    figures = figure_cells(nb)
    assert len(figures) == 8, 'patches, filters, positions, 2 attention, distance, 2 photograph'
    missing = [''.join(cell['source']).splitlines()[0] for cell in figures if not has_image(cell)]
    assert not missing, f'{ANALYSIS} ({folder}): no picture from the cells starting {missing}'


def test_the_analysis_section_shows_its_figures_in_both_tabs_of_the_html(book):
    html = (book / 'build' / 'html' / f'{ANALYSIS}.html').read_text()
    assert html.count('mdl-tabs__tab-bar code') >= 10
    # 8 captioned figures, once per framework (the model is loaded: no training curves)
    assert html.count('<img') >= 2 * 8
    assert html.count('<strong>Figure:</strong>') == 8
    assert '>Abnar and Zuidema, 2020</a>' in html and '>Lippe, 2022</a>' in html  # resolved :cite:


SWIN = 'chapter_vit/swin'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_the_swin_section_evaluates_in_both_tabs_with_every_figure(book, folder):
    nb = notebook(book, folder, SWIN)
    text = outputs(nb)  # fails on any error output
    for expected in ['such as 6 or 8', 'masked pairs per window: [0, 128, 128, 192]',
                     'PatchMerging: tokens (8, 8, 64)', 'SwinBlock: tokens (4, 4, 128)',
                     '567,814 parameters', '4096 tokens: global', 'Quick mode: 2 of 10 epochs']:
        assert expected in text, f'{SWIN} ({folder}) does not print {expected!r}'
    # Measured, not computed: the memory of global attention grows as n^2, of windows as n
    slopes = {name: (float(time), float(memory)) for name, time, memory in re.findall(
        r'(global|windowed): time grows as n\^([\d.]+), memory as n\^([\d.]+)', text)}
    assert slopes['global'][1] > 1.8 and 0.8 < slopes['windowed'][1] < 1.2, slopes
    # The small Swin learns in quick mode: above chance (0.1)
    accuracy = float(re.search(rf'validation accuracy (\d\.\d+) on {re.escape(DATASET)}', text)[1])
    assert accuracy > 0.15
    figures = figure_cells(nb)
    assert len(figures) == 2, 'the shifted-window mask and the cost of attention'
    missing = [''.join(cell['source']).splitlines()[0] for cell in figures if not has_image(cell)]
    assert not missing, f'{SWIN} ({folder}): no picture from the cells starting {missing}'


def test_the_swin_section_shows_both_tabs_and_its_figures_in_the_html(book):
    html = (book / 'build' / 'html' / f'{SWIN}.html').read_text()
    assert html.count('mdl-tabs__tab-bar code') >= 15
    # 2 captioned figures and the training curves, once per framework
    assert html.count('<img') >= 2 * 3
    assert html.count('<strong>Figure:</strong>') == 2
    assert 'Liu <em>et al.</em>, 2021' in html and 'Dao <em>et al.</em>, 2022' in html  # resolved :cite:
    assert 'href="swin.html' in (book / 'build' / 'html' / 'chapter_vit' / 'index.html').read_text()


def test_the_exercises_are_pages_of_the_book_linked_from_the_section(book):
    html = book / 'build' / 'html' / 'chapter_vit'
    section = (html / 'vision-transformer.html').read_text()
    for page in EXERCISES:
        name = page.split('/')[-1]
        assert f'href="{name}.html' in section, f'the section does not link to {name}'
        assert (html / f'{name}.html').read_text().count('mdl-tabs__tab-bar code') >= 5
    log = (book / 'build' / 'make.log').read_text()
    assert 'undefined label' not in log


def test_tab_notebooks_hold_only_their_own_framework(book):
    torch_code = json.dumps(notebook(book, 'eval'))
    jax_code = json.dumps(notebook(book, 'eval_jax'))
    assert 'flax' not in torch_code and 'torch.' not in jax_code


def test_html_shows_both_tabs_on_every_code_block(book):
    html = (book / 'build' / 'html' / f'{SECTION}.html').read_text()
    groups = html.count('mdl-tabs__tab-bar code')
    assert groups >= 10
    assert html.count('href="#pytorch-') >= groups and html.count('href="#jax-') >= groups
    assert 'vit.svg' in html and (book / 'build' / 'html' / '_images' / 'vit.svg').exists()
    assert 'Dosovitskiy <em>et al.</em>, 2021' in html  # a resolved :cite:
    log = (book / 'build' / 'make.log').read_text()
    assert 'could not open bibtex file' not in log and 'could not find bibtex key' not in log
    assert 'Dosovitskiy' in (book / 'build' / 'html' / 'chapter_references' / 'zreferences.html').read_text()


@pytest.mark.parametrize('folder, needs_d2l', [('colab', True), ('colab_jax', False)])
def test_colab_notebooks_start_with_their_install_cell(book, folder, needs_d2l):
    nb = json.loads((book / 'build' / folder / f'{SECTION}.ipynb').read_text())
    install = next(''.join(cell['source']) for cell in nb['cells'] if cell['cell_type'] == 'code')
    assert 'pip install "d2l-extras @ git+https://github.com/' in install
    assert ('d2l==1.0.3 --no-deps' in install) is needs_d2l  # the library it builds on


VIT_VS_CNN = 'chapter_vit/vit-vs-cnn'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_the_vit_vs_cnn_page_evaluates_in_both_tabs_with_every_figure(book, folder):
    nb = notebook(book, folder, VIT_VS_CNN)
    text = outputs(nb)  # fails on any error output
    for expected in ['ViT: 6,458,890 parameters', 'ResNet-18: 6,291,754 parameters',  # of similar size
                     'ViT: 3,190,538 parameters', 'ResNet-18: 2,799,114 parameters',
                     'Quick mode: 2 of 10 epochs on at most 256 training and 128 validation',
                     'Quick mode: 1 of 20 epochs on at most 256 training and 128 validation',
                     DATA_LINE, 'CIFAR-10 is not available offline',
                     'UCI digits, each in a random colour', '[26, 77]']:
        assert expected in text, f'{VIT_VS_CNN} ({folder}) does not print {expected!r}'
    # The table of final accuracies: both models, at the three training-set sizes
    rows = re.findall(r'^(26|77|256) +(\d\.\d{3}) +(\d\.\d{3})$', text, re.MULTILINE)
    assert [row[0] for row in rows] == ['26', '77', '256']
    assert all(0 <= float(acc) <= 1 for row in rows for acc in row[1:])
    for dataset in [DATASET, 'UCI digits in colour (offline stand-in)']:
        for model in ['ViT', 'ResNet-18']:
            assert re.search(rf'{model}: validation accuracy \d\.\d{{3}} on {re.escape(dataset)}', text)
    figures = figure_cells(nb)
    assert len(figures) == 4, 'Fashion-MNIST curves, accuracy against data size, CIFAR-10 images and curves'
    missing = [''.join(cell['source']).splitlines()[0] for cell in figures if not has_image(cell)]
    assert not missing, f'{VIT_VS_CNN} ({folder}): no picture from the cells starting {missing}'


def test_the_vit_vs_cnn_page_shows_its_figures_and_citations_in_the_html(book):
    html = (book / 'build' / 'html' / f'{VIT_VS_CNN}.html').read_text()
    assert html.count('mdl-tabs__tab-bar code') >= 10
    assert html.count('<strong>Figure:</strong>') == 4
    assert '>Krizhevsky, 2009</a>' in html and '>Lippe, 2022</a>' in html  # resolved :cite:


DEIT = 'chapter_vit/deit'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_the_deit_section_evaluates_in_both_tabs_with_every_figure(book, folder):
    nb = notebook(book, folder, DEIT)
    text = outputs(nb)  # fails on any error output
    for expected in ['Quick mode: 1 of 10 epochs on at most 128 training', 'teacher: 6,291,754 parameters',
                     'student 6,465,044 parameters, ViT 6,458,890, difference 6,154',
                     "got 'medium'", 'the temperature must be positive', 'between 0 and 1',
                     'class head dist. head', 'no teacher', 'hard distillation', 'soft distillation',
                     'teacher (ResNet-18)', 'quick mode)', 'embeddings', 'block 2']:
        assert expected in text, f'{DEIT} ({folder}) does not print {expected!r}'
    # The losses agree with their values computed by hand
    checks = re.findall(r': (\d+\.\d{4}) \(by hand (\d+\.\d{4})\)', text)
    assert len(checks) == 3 and all(loss == by_hand for loss, by_hand in checks), checks
    figures = figure_cells(nb)
    assert len(figures) == 3, 'curves, accuracy of the heads, token similarity'
    missing = [''.join(cell['source']).splitlines()[0] for cell in figures if not has_image(cell)]
    assert not missing, f'{DEIT} ({folder}): no picture from the cells starting {missing}'


def test_the_deit_section_is_in_the_book_with_its_diagram_and_references(book):
    html = (book / 'build' / 'html' / f'{DEIT}.html').read_text()
    assert html.count('mdl-tabs__tab-bar code') >= 10
    assert html.count('<strong>Figure:</strong>') == 3
    assert 'deit.svg' in html and (book / 'build' / 'html' / '_images' / 'deit.svg').exists()
    assert 'Touvron <em>et al.</em>, 2021' in html and 'Hinton <em>et al.</em>, 2015' in html
    chapter = (book / 'build' / 'html' / 'chapter_vit' / 'index.html').read_text()
    assert 'href="deit.html' in chapter


RECIPE = 'chapter_vit/training-recipe'


@pytest.mark.parametrize('folder', ['eval', 'eval_jax'])
def test_the_training_recipe_page_evaluates_in_both_tabs(book, folder):
    nb = notebook(book, folder, RECIPE)
    text = outputs(nb)  # fails on any error output
    for expected in ['Mixup, first image:', 'CutMix, first image:', 'rows sum to 1.0000 to 1.0000',
                     'sum 1.0000', 'evaluation: identity True', '[0.0, 0.1]',
                     'evaluation: same function True', 'training: two passes agree False',
                     'Quick mode: 1 of 10 epochs on at most 128 training and 128 validation',
                     '1 of 10 epochs, quick mode', 'val acc  change', '+ stochastic depth']:
        assert expected in text, f'{RECIPE} ({folder}) does not print {expected!r}'
    # CutMix: the label weight of the pasted image is the pasted area
    white, black_weight, white_weight = map(float, re.search(
        r'white: (\d\.\d{4}) of the black image; its label: (\d\.\d{4}) black, '
        r'(\d\.\d{4}) white', text).groups())
    assert 0 < white < 1 and white_weight == white and black_weight == pytest.approx(1 - white, abs=2e-4)
    # drop path keeps the expectation
    mean = float(re.search(r'mean over 100,000 examples: (\d\.\d{3})', text)[1])
    assert abs(mean - 1) < 0.02
    # the five recipes, each with an accuracy
    rows = re.findall(r'^(exercise-accuracy|\+ [A-Za-z, ]+?) +(\d\.\d{3})', text, re.MULTILINE)
    assert [name for name, _ in rows] == ['exercise-accuracy', '+ RandAugment', '+ Mixup, CutMix',
                                          '+ random erasing', '+ stochastic depth']
    # the minibatch before and after each augmentation, and the learning rate
    assert sum(map(has_image, nb['cells'])) >= 6


def test_the_training_recipe_page_is_in_the_book_with_its_references(book):
    html = (book / 'build' / 'html' / f'{RECIPE}.html').read_text()
    assert html.count('mdl-tabs__tab-bar code') >= 10
    for cited in ['Touvron <em>et al.</em>, 2021', 'Beyer <em>et al.</em>, 2022', 'Cubuk <em>et al.</em>, 2020',
                  'Yun <em>et al.</em>, 2019', 'Huang <em>et al.</em>, 2016']:
        assert cited in html, cited  # resolved :cite:
    chapter = (book / 'build' / 'html' / 'chapter_vit' / 'index.html').read_text()
    assert 'href="training-recipe.html' in chapter
