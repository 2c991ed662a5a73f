"""Give every saved function and class of the chapter's library its whole docstring.

`d2lbook build lib` adds a line "Defined in :numref:`...`" to each saved
object's docstring, but merges it only into a one-line docstring: before a
multi-line one it inserts a docstring of its own, and the page's docstring
becomes a dead string that `help()` never shows. `make lib` runs this script
after d2lbook to move that line to the end of the page's docstring.

    python tools/merge_saved_docstrings.py d2l_extras/torch.py d2l_extras/jax.py
"""
import argparse
import os
import pathlib
import re
import tempfile

# d2lbook's inserted docstring, then the page's own on the next line, at the
# same indentation
SPLIT_DOCSTRING = re.compile(
    r'^(?P<indent>[ \t]*)"""(?P<location>Defined in :numref:`[^`]+`)"""\n'
    r'(?P=indent)"""(?P<doc>.*?)"""', re.MULTILINE | re.DOTALL)


def merge(source):
    """`source` with each split docstring made one: the page's docstring,
    a blank line, then d2lbook's "Defined in" line."""
    return SPLIT_DOCSTRING.sub(
        lambda m: (f'{m["indent"]}"""{m["doc"].rstrip()}\n\n'
                   f'{m["indent"]}{m["location"]}"""'), source)


def write_atomically(path, text):
    with tempfile.NamedTemporaryFile('w', dir=path.parent, delete=False,
                                     prefix=f'.{path.name}.') as f:
        f.write(text)
    os.replace(f.name, path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('libraries', nargs='+', type=pathlib.Path)
    for path in parser.parse_args().libraries:
        if not path.is_file():
            parser.error(f'{path} does not exist: run `d2lbook build lib` '
                         'first, or name the files of config.ini\'s lib_file')
        source = path.read_text()
        merged = merge(source)
        if merged != source:
            write_atomically(path, merged)


if __name__ == '__main__':
    main()
