"""The parts of d2l's JAX API that the chapter uses, for today's JAX and Flax
(d2l 1.0.3's own module imports TensorFlow and fails on current JAX).

``training``: ``HyperParameters``, ``Module``, ``DataModule``, ``Trainer``,
``Classifier``; ``attention``: d2l's ``MultiHeadAttention``; ``plotting``:
``plot``, ``show_images`` and the ``ProgressBoard``. ``d2l_extras.jax`` gathers
them under d2l's names.
"""
