"""The chapter's sources and the library generated from them read well:
`help()` shows each saved object's own docstring, and no code line is too
long for the PDF's page."""
import ast
import importlib
import pathlib
import re
import subprocess

import pytest
from conftest import VENV, copy_sources

ROOT = pathlib.Path(__file__).resolve().parents[1]
MARKER = '#################   WARNING   ################'
LIBRARIES = ['d2l_extras.torch', 'd2l_extras.jax']
# The PDF's code blocks hold 79 characters; a longer line runs off the page.
MAX_CODE_LINE = 79


def saved_definitions(module_name):
    """The functions and classes (with their methods) that `d2lbook build
    lib` wrote below the WARNING marker, as (qualified name, AST node)."""
    path = ROOT / (module_name.replace('.', '/') + '.py')
    source = path.read_text()
    assert MARKER in source, f'{path} has no WARNING marker: run `make lib`'
    saved = source[source.index(MARKER):]
    found = []

    def visit(nodes, prefix):
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found.append((prefix + node.name, node))
                if isinstance(node, ast.ClassDef):
                    visit(node.body, prefix + node.name + '.')
    visit(ast.parse(saved).body, '')
    return found


def own_docstring(doc):
    """A docstring without the "Defined in :numref:" line d2lbook adds."""
    return re.sub(r'Defined in :numref:`[^`]+`', '', doc or '').strip()


@pytest.mark.parametrize('module_name', LIBRARIES)
def test_every_saved_object_keeps_its_whole_docstring(module_name):
    module = importlib.import_module(module_name)
    definitions = saved_definitions(module_name)
    assert len(definitions) > 40
    for name, node in definitions:
        # A string after the docstring is a docstring that help() never shows
        body = node.body[1:2]
        assert not (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)), (
            f'{module_name}.{name} has a second docstring that help() does not show: '
            'run `make lib` (tools/merge_saved_docstrings.py merges them)')
        obj = module
        for part in name.split('.'):
            obj = getattr(obj, part)
        # Saved on its own: a function or class, or a method added by
        # @d2l.add_to_class (d2lbook gave it the "Defined in" line)
        if '.' in name and 'Defined in' not in (obj.__doc__ or ''):
            continue
        assert own_docstring(obj.__doc__), (
            f'help({module_name}.{name}) shows no docstring of its own: give it one in its page')


def test_make_lib_leaves_the_committed_libraries_unchanged(tmp_path):
    """What `make test-fast` has instead of the book build's same check."""
    copy = copy_sources(tmp_path)
    result = subprocess.run(['make', 'lib', f'VENV={VENV}'], cwd=copy, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for module in ('torch.py', 'jax.py'):
        assert (copy / 'd2l_extras' / module).read_text() == (ROOT / 'd2l_extras' / module).read_text(), (
            f'd2l_extras/{module} differs from what `make lib` writes: run `make lib` and commit')


def code_lines(page):
    """(line number, line) of the code cells of a d2lbook page."""
    inside = False
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith('```'):
            inside = line.startswith('```{.python .input}') and not inside
            continue
        if inside:
            yield number, line


def test_no_code_line_in_a_cell_is_too_long_for_the_pdf():
    pages = sorted((ROOT / 'chapter_vit').glob('*.md'))
    assert len(pages) >= 9
    too_long = [f'{page.name}:{number} ({len(line)} characters)'
                for page in pages for number, line in code_lines(page)
                if len(line) > MAX_CODE_LINE]
    assert not too_long, (f'code lines longer than {MAX_CODE_LINE} characters run off the PDF\'s page; '
                          'wrap them:\n' + '\n'.join(too_long))


def test_both_tabs_import_the_library_as_d2l_and_nothing_else_from_it():
    """`from d2l_extras import torch as d2l` and `... jax as d2l`: the saved
    code reads `d2l.ViT` in both libraries, and no page reaches into a
    submodule of the library."""
    imports = re.compile(r'^\s*(from d2l\b|import d2l\b|from d2l_extras\b|import d2l_extras\b)')
    allowed = {'from d2l_extras import torch as d2l', 'from d2l_extras import jax as d2l'}
    pages = sorted((ROOT / 'chapter_vit').glob('*.md'))
    wrong = [f'{page.name}:{number}: {line.strip()}'
             for page in pages for number, line in code_lines(page)
             if (imports.match(line) and line.strip() not in allowed)
             or re.search(r'\bextras\.', line)]
    assert not wrong, ('import the chapter\'s library as `from d2l_extras import torch as d2l` '
                       '(or `jax as d2l`) and call it `d2l`:\n' + '\n'.join(wrong))
