"""The exercise notebooks' library code does what their text says.

The notebooks themselves are evaluated in both tabs by test_book.py.
"""
import types

import jax
import numpy as np
import optax
import pytest
import torch
from jax import numpy as jnp
from torch.utils.flop_counter import FlopCounterMode

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS



# Image size and training time

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_cost_model_recovers_known_coefficients(lib):
    num_tokens = np.array([5, 17, 37, 65, 145, 257])
    c0, c1, c2 = 0.03, 1.2e-3, 2.0e-5
    seconds = c0 + c1 * num_tokens + c2 * num_tokens**2
    np.testing.assert_allclose(lib.fit_step_cost(num_tokens, seconds), [c0, c1, c2], rtol=1e-6)
    # 2% timing noise moves the dominant coefficients by a few percent only
    noisy = seconds * (1 + 0.02 * np.random.default_rng(0).standard_normal(len(seconds)))
    fitted = lib.fit_step_cost(num_tokens, noisy)
    np.testing.assert_allclose(fitted[:2], [c0, c1], rtol=0.15)
    assert fitted[2] == pytest.approx(c2, rel=0.5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_cost_model_never_fits_negative_time(lib):
    num_tokens = np.array([5, 17, 37, 65, 145, 257])
    # Sublinear growth would need a negative quadratic term: it is held at zero
    seconds = 0.01 + 0.004 * np.sqrt(num_tokens)
    coefficients = lib.fit_step_cost(num_tokens, seconds)
    assert (coefficients >= 0).all() and coefficients[2] == 0


@pytest.mark.parametrize('img_size, patch_size, num_channels', [(96, 16, 1), (32, 4, 3)])
def test_the_operation_count_agrees_with_pytorchs_flop_counter(img_size, patch_size, num_channels):
    num_hiddens, mlp_num_hiddens, num_blks, batch_size = 64, 96, 2, 3
    model = torch_lib.ViT(img_size, patch_size, num_hiddens, mlp_num_hiddens, 4, num_blks,
                          0.1, 0.1, num_channels=num_channels).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        # The explicit attention path: the counter sees its two matrix
        # products, while it does not count the fused kernel on a CPU
        model(torch.rand(batch_size, num_channels, img_size, img_size), return_weights=True)
    linear, attention = torch_lib.vit_step_flops(img_size, patch_size, num_hiddens,
                                                 mlp_num_hiddens, num_blks, batch_size,
                                                 num_channels)
    # A training step is counted as three forward passes
    assert (linear + attention) == 3 * counter.get_total_flops()
    num_tokens = (img_size // patch_size) ** 2 + 1
    assert attention == 3 * batch_size * num_blks * 4 * num_tokens**2 * num_hiddens


def test_pytorch_timing_returns_one_time_per_repeat():
    model = torch_lib.ViT(16, 8, 16, 32, 2, 1, 0.1, 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    times = torch_lib.time_training_step(model, torch.rand(4, 1, 16, 16),
                                         torch.randint(0, 10, (4,)), num_repeats=3)
    assert times.shape == (3,) and (times > 0).all()
    # It timed real steps: the parameters were updated
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_jax_timing_reports_compilation_separately():
    model = jax_lib.ViT(16, 8, 16, 32, 2, 1, 0.1, 0.1)
    compile_seconds, times = jax_lib.time_training_step(
        model, jnp.ones((4, 16, 16, 1)), jnp.arange(4), num_repeats=3)
    assert compile_seconds > 0 and times.shape == (3,) and (times > 0).all()


# Improving the accuracy

@pytest.mark.parametrize('warmup_steps, total_steps', [(2, 16), (0, 10), (30, 300)])
def test_both_tabs_use_the_same_learning_rate_schedule(warmup_steps, total_steps):
    optax_schedule = optax.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps, total_steps)
    for step in range(total_steps + 3):
        assert 1e-3 * torch_lib.warmup_cosine(step, warmup_steps, total_steps) == pytest.approx(
            float(optax_schedule(step)), abs=1e-9)


def fake_trainer(max_epochs, num_train_batches):
    return types.SimpleNamespace(max_epochs=max_epochs, num_train_batches=num_train_batches)


def test_the_pytorch_optimizer_steps_the_schedule_with_every_update():
    model = torch_lib.TunedViT(16, 8, 16, 32, 2, 1, 0.1, 0.1, lr=1e-3, adamw=True, warmup=0.2)
    model.trainer = fake_trainer(max_epochs=2, num_train_batches=5)
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
    expected = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 2, 10)
    np.testing.assert_allclose(rates, [float(expected(s)) for s in range(10)], atol=1e-9)


def test_without_adamw_the_tuned_vit_trains_like_the_section():
    model = torch_lib.TunedViT(16, 8, 16, 32, 2, 1, 0.1, 0.1, lr=0.1)
    optimizer = model.configure_optimizers()
    assert type(optimizer) is torch.optim.SGD and optimizer.param_groups[0]['lr'] == 0.1


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_both_tabs_compute_the_same_smoothed_loss(label_smoothing):
    args = (16, 8, 16, 32, 2, 1, 0.1, 0.1)
    torch_vit = torch_lib.TunedViT(*args, label_smoothing=label_smoothing).eval()
    with torch.no_grad():
        for p in torch_vit.parameters():  # the zero head would make every loss log 10
            p.add_(0.3 * torch.randn(p.shape))
    X, y = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        expected = float(torch_vit.loss(torch_vit(X), y))
        plain = float(torch.nn.functional.cross_entropy(torch_vit(X), y))
    jax_vit = jax_lib.TunedViT(*args, label_smoothing=label_smoothing)
    variables = jax_lib.params_from_torch(torch_vit)
    state = jax_lib.TrainState.create(apply_fn=jax_vit.apply, params=variables['params'],
                                      batch_stats={}, dropout_rng=jax.random.key(0),
                                      tx=optax.sgd(0.1))
    loss, _ = jax_vit.loss(state.params, (jnp.asarray(X.numpy().transpose(0, 2, 3, 1)),),
                           jnp.asarray(y.numpy()), state)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert (expected != pytest.approx(plain)) is (label_smoothing > 0)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_shift_and_flip_moves_each_image_by_at_most_its_shift(lib):
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (40, 28, 28)).astype(np.uint8)  # no zero pixels
    augmented = lib.shift_and_flip(images, np.random.default_rng(0))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    shift, flipped = 2, 0  # round(0.07 * 28)
    for original, result in zip(images, augmented):
        padded = np.pad(original, shift)
        candidates = [(padded[r:r + 28, c:c + 28], flip)
                      for r in range(2 * shift + 1) for c in range(2 * shift + 1)
                      for flip in (False, True)]
        matches = [flip for window, flip in candidates
                   if np.array_equal(window[:, ::-1] if flip else window, result)]
        assert matches, 'an augmented image is not a shift (and flip) of its original'
        flipped += matches[0]
    assert 5 < flipped < 35  # about half are flipped
    # The same generator state gives the same images: runs repeat exactly
    np.testing.assert_array_equal(augmented, lib.shift_and_flip(images, np.random.default_rng(0)))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_augmentation_changes_the_training_images_only(lib):
    calls = []

    def record(images, rng):
        calls.append(images.shape)
        return images

    data = lib.FashionMNIST(batch_size=32, num_train=64, num_val=64, augment=record)
    next(iter(data.val_dataloader()))
    assert calls == []
    next(iter(data.train_dataloader()))
    assert len(calls) == 1 and calls[0][0] == 32
