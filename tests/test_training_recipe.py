"""What the training recipe section (chapter_vit/training-recipe.md) claims
about its pieces, in both frameworks: the augmentations do what they say,
Mixup and CutMix mix labels as they mix pixels, drop path keeps the
expectation and is the identity in evaluation, and PyTorch and JAX compute the
same numbers when their randomness is given the same draws.

The notebook itself is evaluated in both tabs by test_book.py.
"""
import jax
import numpy as np
import optax
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS, fit, randomize

# A small ViT: 16x16 images, patches of 8, width 16, 2 blocks, no dropout
SMALL = (16, 8, 16, 32, 2, 2, 0.0, 0.0)


def clothes(num_images=16, size=28, seed=0):
    """uint8 images with no zero pixel, so that any pixel moved in from the
    background (0) shows."""
    return np.random.default_rng(seed).integers(1, 256, (num_images, size, size)).astype(np.uint8)


# RandAugment

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_warp_with_the_identity_or_a_whole_pixel_shift_moves_pixels_exactly(lib):
    images = clothes(3)
    identity = np.broadcast_to(np.eye(2), (3, 2, 2))
    np.testing.assert_array_equal(lib.warp(images, identity, np.zeros((3, 2))), images)
    # output (r, c) takes input (r + 2, c - 3): each image moves up 2, right 3;
    # the others' own offsets leave them alone
    shifted = lib.warp(images, identity, np.array([[2, -3], [0, 0], [0, 0]]))
    np.testing.assert_array_equal(shifted[0, :-2, 3:], images[0, 2:, :-3])
    assert (shifted[0, -2:] == 0).all() and (shifted[0, :, :3] == 0).all()  # background
    np.testing.assert_array_equal(shifted[1:], images[1:])


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_each_image_gets_its_own_level(lib):
    images = clothes(2)
    levels = np.array([0.0, 1.0])
    for name in ('rotate', 'shear_x', 'shear_y', 'translate_x', 'translate_y', 'contrast', 'brightness'):
        out = lib.augment_op(images, name, levels)
        assert out.shape == images.shape and out.dtype == images.dtype
        np.testing.assert_array_equal(out[0], images[0])  # level 0: unchanged
        assert not np.array_equal(out[1], images[1]), name
        np.testing.assert_array_equal(out[1:], lib.augment_op(images[1:], name, 1.0))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_translations_move_by_up_to_45_percent_of_the_side(lib):
    image = np.zeros((1, 20, 20), np.uint8)
    image[0, 10, 10] = 255
    moved = lib.augment_op(image, 'translate_x', 1.0)
    assert np.argwhere(moved[0]).tolist() == [[10, 1]]  # 9 = 0.45 * 20 columns
    moved = lib.augment_op(image, 'translate_y', -1.0)
    assert np.argwhere(moved[0]).tolist() == [[19, 10]]


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_a_rotation_by_zero_and_a_quarter_turn_of_a_square_image(lib):
    images = clothes(1)
    np.testing.assert_array_equal(lib.augment_op(images, 'rotate', 0.0), images)
    # level 1 is 30 degrees; a quarter turn is a level of 3 (beyond RandAugment's range)
    turned = lib.augment_op(images, 'rotate', 3.0)[0]
    assert any(np.array_equal(turned, np.rot90(images[0], k)) for k in (1, 3))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('name', ['contrast', 'brightness'])
def test_contrast_and_brightness_stay_in_the_pixel_range(lib, name):
    images = clothes(4)
    for level in (-1.0, -0.5, 0.0, 0.5, 1.0):
        out = lib.augment_op(images, name, level)
        assert out.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255
    np.testing.assert_array_equal(lib.augment_op(images, name, 0.0), images)
    assert lib.augment_op(images, name, -1.0).std() < images.std()  # factor 0.1
    with pytest.raises(ValueError, match='unknown operation'):
        lib.augment_op(images, 'solarize', 0.5)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_rand_augment_changes_about_three_quarters_of_the_images_and_repeats(lib):
    images = clothes(400, 16)
    augmented = lib.rand_augment(images, np.random.default_rng(0))
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    changed = (augmented != images).any(axis=(1, 2)).mean()
    # each of 2 operations happens with probability 1/2: 3/4 change (a few
    # operations at a tiny level change nothing)
    assert 0.65 < changed < 0.82, changed
    np.testing.assert_array_equal(images, clothes(400, 16))  # the input is kept
    np.testing.assert_array_equal(augmented, lib.rand_augment(images, np.random.default_rng(0)))


def test_both_tabs_share_the_numpy_augmentations():
    """`%%tab all` code: one function, saved into both libraries, so the same
    generator state gives the same images in PyTorch and in JAX."""
    images, labels = clothes(32), np.arange(32) % 10
    for name in ('rand_augment', 'random_erasing'):
        np.testing.assert_array_equal(getattr(torch_lib, name)(images, np.random.default_rng(3)),
                                      getattr(jax_lib, name)(images, np.random.default_rng(3)))
    for torch_out, jax_out in zip(torch_lib.mixup_cutmix(images, labels, np.random.default_rng(3)),
                                  jax_lib.mixup_cutmix(images, labels, np.random.default_rng(3))):
        np.testing.assert_array_equal(torch_out, jax_out)


# Random erasing

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_random_erasing_boxes_lie_inside_the_image_at_the_stated_sizes(lib):
    rng = np.random.default_rng(0)
    for height, width in [(28, 28), (8, 8), (32, 20)]:
        for _ in range(300):
            box = lib.erasing_box(height, width, rng)
            assert box is not None
            top, left, h, w = box
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert 1 <= h < height and 1 <= w < width
            # between 2% and a third of the area, up to the rounding of the sides
            assert (np.sqrt(0.02 * height * width) - 1) ** 2 <= h * w
            assert h * w <= (np.sqrt(height * width / 3) + 1) ** 2
    # a box that cannot fit is given up after the attempts
    assert lib.erasing_box(2, 2, rng, area=(0.9, 0.9)) is None


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_random_erasing_changes_one_rectangle_of_a_quarter_of_the_images(lib):
    images = np.full((400, 28, 28), 7, np.uint8)  # noise around 7 rarely gives 7
    images[:, ::2] = 200
    erased = lib.random_erasing(images, np.random.default_rng(0))
    assert erased.dtype == np.uint8 and erased.shape == images.shape
    changed = (erased != images).any(axis=(1, 2))
    assert 0.18 < changed.mean() < 0.32, changed.mean()
    for original, result in zip(images[changed], erased[changed]):
        rows, cols = np.nonzero(result != original)
        # every change inside one rectangle within the image, of at most a third of it
        assert (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1) <= 784 / 3 + 2 * 28
    assert lib.random_erasing(images, np.random.default_rng(0), prob=0).tolist() == images.tolist()


# Mixup and CutMix

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('switch_prob', [0.0, 0.5, 1.0])
def test_mixed_labels_are_distributions_over_the_two_classes(lib, switch_prob):
    images, labels = clothes(10), np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    for seed in range(20):
        mixed, soft = lib.mixup_cutmix(images, labels, np.random.default_rng(seed),
                                       switch_prob=switch_prob)
        assert mixed.dtype == np.float32 and mixed.shape == images.shape
        assert soft.dtype == np.float32 and soft.shape == (10, 10)
        np.testing.assert_allclose(soft.sum(axis=1), 1, rtol=1e-6)
        assert (soft >= 0).all()
        for i in range(10):  # the weight is on the image's class and its partner's
            assert set(np.flatnonzero(soft[i])) <= {labels[i], labels[::-1][i]}


def black_and_white(size=28):
    return np.stack([np.zeros((size, size)), np.full((size, size), 255.0)])


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_cutmix_weight_is_the_area_that_stays(lib):
    areas = []
    for seed in range(200):
        mixed, soft = lib.mixup_cutmix(black_and_white(), np.array([0, 1]),
                                       np.random.default_rng(seed), switch_prob=1)
        white = (mixed[0] == 255).mean()  # pasted from the white partner
        assert set(np.unique(mixed)) <= {0, 255}  # pasted, not blended
        assert soft[0, 0] == pytest.approx(1 - white, abs=1e-6)
        assert soft[0, 1] == pytest.approx(white, abs=1e-6)
        # the box is a rectangle, and the partner gets the same box
        rows, cols = np.nonzero(mixed[0] == 255)
        if len(rows):
            assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        np.testing.assert_array_equal(mixed[1] == 0, mixed[0] == 255)
        areas.append(white)
    # lambda ~ Beta(1, 1): pasted areas of all sizes, a third on average
    # (less than a half: boxes are clipped at the borders)
    assert min(areas) < 0.05 and max(areas) > 0.7 and 0.2 < np.mean(areas) < 0.5


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_mixup_blends_images_and_labels_with_one_weight(lib):
    lams = []
    for seed in range(200):
        mixed, soft = lib.mixup_cutmix(black_and_white(4), np.array([0, 1]),
                                       np.random.default_rng(seed), switch_prob=0)
        lam = soft[0, 0]
        np.testing.assert_allclose(mixed[0], 255 * (1 - lam), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(mixed[1], 255 * lam, rtol=1e-5, atol=1e-3)
        lams.append(lam)
    # lambda ~ Beta(0.8, 0.8): mean 1/2, more often near 0 or 1 than uniform
    assert abs(np.mean(lams) - 0.5) < 0.06
    assert np.mean((np.array(lams) < 0.1) | (np.array(lams) > 0.9)) > 0.2


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_cutmix_boxes_are_clipped_to_the_image(lib):
    rng = np.random.default_rng(0)
    for lam in np.linspace(0, 1, 41):
        top, bottom, left, right = lib.cutmix_box(28, 20, lam, rng)
        assert 0 <= top <= bottom <= 28 and 0 <= left <= right <= 20
        # before clipping the box covers 1 - lam of the image, up to rounding
        assert (bottom - top) * (right - left) <= (1 - lam) * 28 * 20 + 1e-9


# Drop path

def torch_drop_path(X, p, training, keep=None):
    return torch_lib.drop_path(torch.as_tensor(X), p, training,
                               keep=None if keep is None else torch.as_tensor(keep)).numpy()


def jax_drop_path(X, p, training, keep=None, key=jax.random.key(0)):
    return np.asarray(jax_lib.drop_path(jnp.asarray(X), p, training, key,
                                        keep=None if keep is None else jnp.asarray(keep)))


DROP_PATHS = [torch_drop_path, jax_drop_path]


def test_drop_path_gives_the_same_numbers_in_both_frameworks_for_the_same_draws():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 5, 8)).astype(np.float32)
    for p in (0.1, 0.5, 0.9):
        keep = rng.random(64) < 1 - p
        expected = X * keep[:, None, None] / np.float32(1 - p)
        torch_out, jax_out = torch_drop_path(X, p, True, keep), jax_drop_path(X, p, True, keep)
        np.testing.assert_array_equal(torch_out, jax_out)
        np.testing.assert_allclose(torch_out, expected, rtol=1e-6)


@pytest.mark.parametrize('drop', DROP_PATHS, ids=TAB_IDS)
def test_drop_path_zeroes_whole_examples_and_keeps_the_expectation(drop):
    p = 0.25
    X = np.random.default_rng(1).standard_normal((50_000, 2, 3)).astype(np.float32)
    Y = drop(X, p, True)
    dropped = (Y == 0).all(axis=(1, 2))
    kept = np.isclose(Y, X / (1 - p), rtol=1e-6).all(axis=(1, 2))
    assert (dropped | kept).all()  # each example is dropped or scaled whole
    assert abs(dropped.mean() - p) < 0.01
    # E[Y] = X: averaged over examples, ones stay ones
    ones = drop(np.ones((200_000, 1), np.float32), p, True)
    assert abs(ones.mean() - 1) < 0.01


@pytest.mark.parametrize('drop', DROP_PATHS, ids=TAB_IDS)
def test_drop_path_is_the_identity_in_evaluation_and_at_rate_zero(drop):
    X = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    np.testing.assert_array_equal(drop(X, 0.5, False), X)
    np.testing.assert_array_equal(drop(X, 0.0, True), X)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_drop_path_rates_rise_linearly_from_zero_to_the_rate(lib):
    assert lib.drop_path_rates(0.1, 2) == [0.0, 0.1]
    rates = lib.drop_path_rates(0.1, 12)
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(rates), 0.1 / 11)
    assert lib.drop_path_rates(0.3, 1) == [0.0]


# The model

def test_the_pytorch_recipe_vit_starts_from_the_vits_weights_with_drop_path_blocks():
    torch.manual_seed(0)
    recipe = torch_lib.RecipeViT(*SMALL, drop_path_rate=0.2)
    draws_after_recipe = torch.rand(3)
    torch.manual_seed(0)
    tuned = torch_lib.TunedViT(*SMALL)
    draws_after_tuned = torch.rand(3)
    assert [type(blk).__name__ for blk in recipe.blks] == ['DropPathBlock'] * 2
    assert [blk.drop_prob for blk in recipe.blks] == [0.0, 0.2]
    assert recipe.state_dict().keys() == tuned.state_dict().keys()
    for name, value in tuned.state_dict().items():
        assert torch.equal(recipe.state_dict()[name], value), name
    # ... and leaves the generator where the ViT leaves it: training draws the same
    assert torch.equal(draws_after_recipe, draws_after_tuned)


def test_the_jax_recipe_vit_starts_from_the_vits_parameters():
    X = jnp.ones((2, 16, 16, 1))
    recipe = jax_lib.RecipeViT(*SMALL, drop_path_rate=0.2)
    # initialized as the trainer does, in one compiled program
    params = recipe.apply_init((X,), jax.random.key(0))['params']
    expected = jax_lib.TunedViT(*SMALL).apply_init((X,), jax.random.key(0))['params']
    assert jax.tree.structure(params) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(a, b)
    blocks = recipe.bind({'params': params}).blks
    assert [type(blk).__name__ for blk in blocks] == ['DropPathBlock'] * 2
    assert [blk.drop_prob for blk in blocks] == [0.0, 0.2]


def test_in_evaluation_both_tabs_compute_the_vits_function():
    torch_model = randomize(torch_lib.RecipeViT(*SMALL, drop_path_rate=0.5))
    X = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        expected = torch_model(X).numpy()
        plain = torch_lib.ViT(*SMALL)
        plain.load_state_dict(torch_model.state_dict())
        np.testing.assert_array_equal(plain.eval()(X).numpy(), expected)
    params = jax_lib.params_from_torch(torch_model)['params']
    got = jax_lib.RecipeViT(*SMALL, drop_path_rate=0.5).apply(
        {'params': params}, jnp.asarray(X.numpy().transpose(0, 2, 3, 1)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_in_training_drop_path_makes_the_blocks_random_in_both_tabs():
    torch_model = randomize(torch_lib.RecipeViT(*SMALL, drop_path_rate=0.5)).train()
    X = torch.rand(8, 1, 16, 16)
    with torch.no_grad():
        assert not torch.equal(torch_model(X), torch_model(X))
    jax_model = jax_lib.RecipeViT(*SMALL, drop_path_rate=0.5)
    Xj = jnp.asarray(X.numpy().transpose(0, 2, 3, 1))
    params = jax_lib.params_from_torch(torch_model)['params']  # no zero head
    apply = jax.jit(jax_model.apply, static_argnames='training')
    outputs = [apply({'params': params}, Xj, training=True,
                     rngs={'dropout': jax.random.key(seed)}) for seed in (1, 2, 1)]
    assert not np.array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])  # the key decides
    # without drop path (and without dropout) training is deterministic
    jax_plain = jax_lib.RecipeViT(*SMALL)
    apply = jax.jit(jax_plain.apply, static_argnames='training')
    plain = [apply({'params': params}, Xj, training=True,
                   rngs={'dropout': jax.random.key(seed)}) for seed in (1, 2)]
    np.testing.assert_array_equal(plain[0], plain[1])


def jax_loss(torch_model, X, Y, label_smoothing):
    jax_model = jax_lib.RecipeViT(*SMALL, label_smoothing=label_smoothing)
    state = jax_lib.TrainState.create(
        apply_fn=jax_model.apply, params=jax_lib.params_from_torch(torch_model)['params'],
        batch_stats={}, dropout_rng=jax.random.key(0), tx=optax.sgd(0.1))
    loss, _ = jax_model.loss(state.params, (jnp.asarray(X.numpy().transpose(0, 2, 3, 1)),),
                             jnp.asarray(Y.numpy()), state)
    return float(loss)


@pytest.mark.parametrize('label_smoothing', [0.0, 0.1])
def test_both_tabs_compute_the_same_loss_on_soft_and_on_integer_labels(label_smoothing):
    torch_model = randomize(torch_lib.RecipeViT(*SMALL, label_smoothing=label_smoothing))
    X = torch.rand(6, 1, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 9])
    _, soft = torch_lib.mixup_cutmix(np.zeros((6, 16, 16)), labels.numpy(),
                                     np.random.default_rng(0), switch_prob=0)
    soft = torch.from_numpy(soft)
    with torch.no_grad():
        logits = torch_model(X)
        hard_loss = float(torch_model.loss(logits, labels))
        soft_loss = float(torch_model.loss(logits, soft))
        # integer labels: the TunedViT's loss (PyTorch's label smoothing)
        assert hard_loss == pytest.approx(float(torch.nn.functional.cross_entropy(
            logits, labels, label_smoothing=label_smoothing)), rel=1e-5)
        # soft labels: smoothed, then cross-entropy, by hand
        targets = (1 - label_smoothing) * soft + label_smoothing / 10
        by_hand = float(-(targets * logits.log_softmax(-1)).sum(-1).mean())
        assert soft_loss == pytest.approx(by_hand, rel=1e-5)
        # one-hot soft labels are integer labels
        one_hot = torch.nn.functional.one_hot(labels, 10).float()
        assert float(torch_model.loss(logits, one_hot)) == pytest.approx(hard_loss, rel=1e-6)
    assert jax_loss(torch_model, X, labels, label_smoothing) == pytest.approx(hard_loss, rel=1e-5)
    assert jax_loss(torch_model, X, soft, label_smoothing) == pytest.approx(soft_loss, rel=1e-5)


# The data pipeline

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_mix_changes_the_training_minibatches_only(lib):
    calls = []

    def mix(images, labels, rng):
        calls.append((images.shape, labels.dtype))
        return lib.mixup_cutmix(images, labels, rng)

    data = lib.FashionMNIST(batch_size=32, num_train=64, num_val=64, mix=mix)
    X, y = next(iter(data.val_dataloader()))
    assert calls == [] and not np.issubdtype(np.asarray(y).dtype, np.floating)
    X, y = next(iter(data.train_dataloader()))
    assert len(calls) == 1 and calls[0][0][0] == 32  # raw images, integer labels
    assert np.issubdtype(calls[0][1], np.integer)
    y = np.asarray(y)
    assert y.shape == (32, 10) and y.dtype == np.float32
    np.testing.assert_allclose(y.sum(axis=1), 1, rtol=1e-6)
    # the images are resized and laid out as usual
    assert tuple(X.shape) == ((32, 28, 28, 1) if lib is jax_lib else (32, 1, 28, 28))
    assert 0 <= float(X.min()) and float(X.max()) <= 1


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_a_data_module_without_mix_keeps_the_hyperparameters_it_had(lib):
    """Reference runs and kept parameters were recorded before `mix`: an
    unused `mix` must not change the settings they are matched on."""
    assert 'mix' not in lib.FashionMNIST(num_train=64, num_val=64).hparams
    assert 'mix' in lib.FashionMNIST(num_train=64, num_val=64, mix=lib.mixup_cutmix).hparams


@pytest.mark.parametrize('bad_mix, message', [
    (lambda images, labels, rng: (images, labels), 'must return soft labels, floats of shape'),
    (lambda images, labels, rng: (images, np.full((len(labels), 10), 0.2, np.float32)),
     'sum to 1'),
    (lambda images, labels, rng: (images, np.eye(10, dtype=np.float32)[labels][:, :5] * 2),
     'sum to 1'),
    (lambda images, labels, rng: (images[:3], np.eye(10, dtype=np.float32)[labels]),
     'returned 3'),
])
def test_a_mix_that_returns_no_soft_labels_is_refused_with_the_reason(bad_mix, message):
    data = torch_lib.FashionMNIST(batch_size=8, num_train=16, num_val=16, mix=bad_mix)
    with pytest.raises(ValueError, match=message):
        next(iter(data.train_dataloader()))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_full_recipe_trains_a_small_model_on_soft_labels(lib):
    augment = lib.compose(lib.shift_and_flip, lib.rand_augment, lib.random_erasing)
    data = lib.FashionMNIST(batch_size=32, resize=(16, 16), num_train=64, num_val=32,
                            augment=augment, mix=lib.mixup_cutmix)
    model = lib.RecipeViT(*SMALL[:6], 0.1, 0.1, lr=1e-3, adamw=True, label_smoothing=0.1,
                          drop_path_rate=0.1)
    trainer = fit(lib, model, data, gradient_clip_val=1)
    accuracy = (lib.evaluate_accuracy(model, trainer.state.params, data) if lib is jax_lib
                else lib.evaluate_accuracy(model, data))
    # points are (x, y): d2l's named tuples in PyTorch, tuples in JAX
    losses = [point[1] for key in ('train_loss', 'val_loss') for point in model.board.data[key]]
    assert losses and np.isfinite(losses).all()
    assert 0 <= accuracy <= 1
