"""Datasets as NumPy arrays, for both tabs, and their minibatches.

``download``: files fetched into a cache, checked against published MD5 sums;
``fashion_mnist``, ``cifar10``: the two datasets, from a cache, a system copy
or a download; ``standins``: their offline stand-ins (the UCI digits);
``arrays``: a dataset in memory; ``resize``: resizing in NumPy;
``loader``: minibatches from arrays; ``modules``: the data module of both
datasets, which each library completes with d2l's ``DataModule``.
"""
