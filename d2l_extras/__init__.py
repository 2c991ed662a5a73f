"""d2l_extras: the library of the Vision Transformers chapter.

``d2l_extras.torch`` adds to ``from d2l import torch as d2l``;
``d2l_extras.jax`` replaces d2l's JAX module (``from d2l_extras import jax as d2l``).
"""
__version__ = '0.1.0'
