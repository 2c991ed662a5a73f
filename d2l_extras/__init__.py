"""d2l_extras: the library of the Vision Transformers chapter.

Both tabs use it under d2l's name: ``from d2l_extras import torch as d2l``
(d2l's PyTorch library plus the chapter's code) and
``from d2l_extras import jax as d2l`` (a replacement of d2l's JAX library plus
the chapter's code). Each of the two modules is written by hand above its
WARNING marker; below it, ``make lib`` writes the chapter's ``#@save`` code:
never edit that part, edit the page.

Where to look for what:

- ``torch``, ``jax``: the two libraries, the only modules the pages import;
- ``data``: the datasets (download with checksums, Fashion-MNIST, CIFAR-10,
  offline stand-ins), minibatches and the data module of both tabs;
- ``d2l_jax``: d2l's JAX API (Trainer, Module, Classifier, plotting) for
  today's JAX and Flax;
- ``convert``: parameters from timm, and between PyTorch and Flax;
- ``run``: quick mode, environment switches, saved parameters and the
  reference runs, whose records live in ``reference_runs/``;
- ``checks``: the input checks of the models (image sizes, patch and window
  grids), with errors that name the fix.
"""
__version__ = '0.1.0'
