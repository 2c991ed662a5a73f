"""d2l's training API (Module, DataModule, Trainer, Classifier) for today's JAX.

Same names and signatures as ``d2l.jax`` 1.0.3, which cannot be used here: it
imports TensorFlow, calls the removed ``jax.random.PRNGKeyArray`` and breaks on
Python 3.12. Two deliberate differences, both so that a whole training step
runs as one ``jax.jit``-compiled function:

* ``training_step`` and ``validation_step`` are pure: they return the loss (and
  gradients, or the metrics) and the Trainer plots them, instead of plotting
  from inside the step.
* The train state carries a static ``training`` flag; models take ``training``
  as a keyword of ``__call__`` and switch dropout (and batch norm) with it.
"""
import inspect
import random
from dataclasses import field
from typing import Any

import flax
import jax
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

from d2l_extras.data.loader import ArrayLoader
from d2l_extras.d2l_jax.plotting import ProgressBoard


def get_seed():
    """A fresh random seed (d2l's version passes a float to randint, which
    Python 3.12 rejects)."""
    return random.randint(0, 10**6)


def get_key():
    """A fresh JAX random key."""
    return jax.random.key(get_seed())


class HyperParameters:
    """The base class of hyperparameters."""
    def save_hyperparameters(self, ignore=[]):
        """Save function arguments into class attributes."""
        frame = inspect.currentframe().f_back
        _, _, _, local_vars = inspect.getargvalues(frame)
        self.hparams = {k: v for k, v in local_vars.items()
                        if k not in set(ignore + ['self']) and not k.startswith('_')}
        for k, v in self.hparams.items():
            setattr(self, k, v)


class Module(nn.Module, HyperParameters):
    """The base class of models.

    Subclasses are Flax modules whose ``__call__`` takes ``training`` (default
    False) as a keyword, so ``model.apply(variables, X)`` is deterministic.
    """
    # Flax modules are dataclasses: these are fields, not constructor arguments.
    plot_train_per_epoch: int = field(default=2, init=False)
    plot_valid_per_epoch: int = field(default=1, init=False)
    # A new board for every model, so each run draws its own curves.
    board: ProgressBoard = field(default_factory=ProgressBoard, init=False)

    def loss(self, params, X, Y, state, averaged=True):
        """Return (loss, auxiliary updates such as batch statistics)."""
        raise NotImplementedError

    def plot(self, key, value, train):
        """Plot a point in animation."""
        assert hasattr(self, 'trainer'), 'Trainer is not inited'
        self.board.xlabel = 'epoch'
        if train:
            x = self.trainer.train_batch_idx / self.trainer.num_train_batches
            n = self.trainer.num_train_batches / self.plot_train_per_epoch
        else:
            x = self.trainer.epoch + 1
            n = self.trainer.num_val_batches / self.plot_valid_per_epoch
        self.board.draw(x, float(value), ('train_' if train else 'val_') + key,
                        every_n=max(int(n), 1))

    def training_step(self, params, batch, state):
        """Return ((loss, auxiliary updates), gradients); pure, so it can be jitted."""
        return jax.value_and_grad(self.loss, has_aux=True)(
            params, batch[:-1], batch[-1], state)

    def validation_step(self, params, batch, state):
        """Return a dict of metrics to plot; pure, so it can be jitted."""
        return {'loss': self.loss(params, batch[:-1], batch[-1], state)[0]}

    def apply_init(self, dummy_input, key):
        """Initialise the variables from a dummy input batch (a tuple)."""
        # One program, which XLA's persistent cache can keep, instead of one
        # per operation (benchmarks/README.md, "Initializing a model")
        init = jax.jit(self.init).lower(key, *dummy_input)
        # It runs once, so on a CPU LLVM's optimizations cost more than they
        # save; the values differ at most in the last bit of some samples
        options = ({'xla_backend_optimization_level': 0}
                   if jax.default_backend() == 'cpu' else None)
        return init.compile(compiler_options=options)(key, *dummy_input)

    def configure_optimizers(self):
        return optax.sgd(self.lr)


class DataModule(HyperParameters):
    """The base class of data."""
    def __init__(self, root='../data'):
        self.save_hyperparameters()

    def get_dataloader(self, train):
        raise NotImplementedError

    def train_dataloader(self):
        return self.get_dataloader(train=True)

    def val_dataloader(self):
        return self.get_dataloader(train=False)

    def get_tensorloader(self, tensors, train, indices=slice(0, None)):
        tensors = tuple(np.asarray(a)[indices] for a in tensors)
        return ArrayLoader(tensors, self.batch_size, shuffle=train)


class TrainState(train_state.TrainState):
    """Parameters, optimizer state and what a step needs besides."""
    batch_stats: Any
    dropout_rng: jax.Array
    # Static, so the jitted training and validation steps each compile once.
    training: bool = flax.struct.field(pytree_node=False, default=False)


class Trainer(HyperParameters):
    """The base class for training models with data.

    JAX runs on its default device (a GPU when there is one), so ``num_gpus``
    is accepted for d2l's signature and otherwise unused.
    """
    def __init__(self, max_epochs, num_gpus=0, gradient_clip_val=0):
        self.save_hyperparameters()

    def prepare_data(self, data):
        self.train_dataloader = data.train_dataloader()
        self.val_dataloader = data.val_dataloader()
        self.num_train_batches = len(self.train_dataloader)
        self.num_val_batches = (len(self.val_dataloader)
                                if self.val_dataloader is not None else 0)

    def prepare_model(self, model):
        model.trainer = self
        model.board.xlim = [0, self.max_epochs]
        self.model = model

    def prepare_batch(self, batch):
        return batch

    def clip_gradients(self, grad_clip_val, grads):
        norm = optax.tree.norm(grads)
        scale = jax.numpy.minimum(1.0, grad_clip_val / (norm + 1e-12))
        return jax.tree.map(lambda g: g * scale, grads)

    def init_state(self, model, key, batch=None):
        """Parameters, optimizer state and dropout key, initialized for the
        shapes of `batch` (by default, the first training minibatch)."""
        params_key, dropout_key = jax.random.split(key)
        if batch is None:
            batch = next(iter(self.train_dataloader))
        dummy_input = self.prepare_batch(batch)[:-1]
        variables = model.apply_init(
            dummy_input, key={'params': params_key, 'dropout': dropout_key})
        return TrainState.create(
            apply_fn=model.apply, params=variables['params'],
            batch_stats=variables.get('batch_stats', {}),
            dropout_rng=dropout_key, tx=model.configure_optimizers())

    def make_train_step(self):
        model, clip_val = self.model, self.gradient_clip_val

        def train_step(state, batch):
            # A new dropout key for every step, derived from the step count.
            step_state = state.replace(
                dropout_rng=jax.random.fold_in(state.dropout_rng, state.step),
                training=True)
            (loss, updates), grads = model.training_step(state.params, batch, step_state)
            if clip_val > 0:
                grads = self.clip_gradients(clip_val, grads)
            state = state.apply_gradients(grads=grads)
            if 'batch_stats' in updates:
                state = state.replace(batch_stats=updates['batch_stats'])
            return state, loss

        return jax.jit(train_step, donate_argnums=0)

    def fit(self, model, data, key=None):
        self.prepare_data(data)
        self.prepare_model(model)
        self.state = self.init_state(model, get_key() if key is None else key)
        self.train_step = self.make_train_step()
        self.eval_step = jax.jit(
            lambda state, batch: model.validation_step(state.params, batch, state))
        self.epoch = 0
        self.train_batch_idx = 0
        self.val_batch_idx = 0
        for self.epoch in range(self.max_epochs):
            self.fit_epoch()

    def fit_epoch(self):
        for batch in self.train_dataloader:
            self.state, loss = self.train_step(self.state, self.prepare_batch(batch))
            # Plotted before counting the batch, as d2l's PyTorch training_step is
            self.model.plot('loss', loss, train=True)
            self.train_batch_idx += 1
        if self.val_dataloader is None:
            return
        for batch in self.val_dataloader:
            metrics = self.eval_step(self.state, self.prepare_batch(batch))
            self.val_batch_idx += 1
            # jit returns dicts sorted by key; plot the loss first, as d2l does
            for name in sorted(metrics, key=lambda name: name != 'loss'):
                self.model.plot(name, metrics[name], train=False)


class Classifier(Module):
    """The base class of classification models."""
    def forward_logits(self, params, X, state):
        """Return (logits, updates); batch statistics update only in training."""
        variables = {'params': params}
        mutable = False
        if state.batch_stats:
            variables['batch_stats'] = state.batch_stats
            mutable = ['batch_stats'] if state.training else False
        output = state.apply_fn(variables, *X, training=state.training,
                                rngs={'dropout': state.dropout_rng}, mutable=mutable)
        return output if mutable else (output, {})

    def loss(self, params, X, Y, state, averaged=True):
        Y_hat, updates = self.forward_logits(params, X, state)
        Y_hat = Y_hat.reshape((-1, Y_hat.shape[-1]))
        losses = optax.softmax_cross_entropy_with_integer_labels(Y_hat, Y.reshape(-1))
        return (losses.mean() if averaged else losses), updates

    def accuracy(self, params, X, Y, state, averaged=True):
        """Compute the fraction (or, not averaged, the indicators) of correct
        predictions."""
        Y_hat, _ = self.forward_logits(params, X, state)
        preds = Y_hat.reshape((-1, Y_hat.shape[-1])).argmax(axis=1)
        compare = (preds == Y.reshape(-1)).astype(jax.numpy.float32)
        return compare.mean() if averaged else compare

    def validation_step(self, params, batch, state):
        X, Y = batch[:-1], batch[-1]
        return {'loss': self.loss(params, X, Y, state)[0],
                'acc': self.accuracy(params, X, Y, state)}
