"""d2l_extras.jax keeps d2l's JAX API: the pieces the chapter relies on."""
import jax.numpy as jnp
import numpy as np
import pytest

from d2l_extras import jax as d2l


class Ranges(d2l.DataModule):
    def __init__(self, batch_size=4):
        super().__init__()
        self.save_hyperparameters()

    def get_dataloader(self, train):
        return self.get_tensorloader((np.arange(10), 2 * np.arange(10)), train)


def test_save_hyperparameters_and_tensorloader_batches():
    data = Ranges(batch_size=4)
    assert data.batch_size == 4 and data.root == '../data'
    batches = list(data.val_dataloader())
    assert len(data.val_dataloader()) == 3
    np.testing.assert_array_equal(batches[2][0], [8, 9])
    np.testing.assert_array_equal(batches[2][1], [16, 18])
    train = np.concatenate([x for x, _ in data.train_dataloader()])
    assert sorted(train) == list(range(10))


def test_gradient_clipping_bounds_the_global_norm():
    trainer = d2l.Trainer(max_epochs=1, gradient_clip_val=1.0)
    grads = {'a': jnp.full((3,), 4.0), 'b': jnp.full((4,), 3.0)}
    clipped = trainer.clip_gradients(1.0, grads)
    norm = np.sqrt(sum(float((g**2).sum()) for g in clipped.values()))
    assert norm == pytest.approx(1.0, rel=1e-5)
    small = {'a': jnp.full((2,), 0.1)}
    np.testing.assert_allclose(trainer.clip_gradients(1.0, small)['a'], 0.1)


def test_progress_board_averages_every_n_points():
    board = d2l.ProgressBoard(display=False)
    for x, y in [(1, 1.0), (2, 3.0), (3, 5.0), (4, 7.0)]:
        board.draw(x, y, 'loss', every_n=2)
    assert [tuple(p) for p in board.data['loss']] == [(1.5, 2.0), (3.5, 6.0)]


def test_masked_softmax_ignores_positions_past_the_valid_length():
    scores = jnp.zeros((2, 1, 4))
    weights = d2l.masked_softmax(scores, jnp.array([2, 3]))
    np.testing.assert_allclose(weights[0, 0], [0.5, 0.5, 0, 0], atol=1e-6)
    np.testing.assert_allclose(weights[1, 0], [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-6)


def test_get_key_works_on_every_python():
    """d2l's get_seed passed a float to random.randint, which Python 3.12 rejects."""
    assert isinstance(d2l.get_seed(), int)
    assert d2l.get_key().shape == ()
