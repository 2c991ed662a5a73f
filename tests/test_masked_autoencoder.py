"""The masked autoencoder (chapter_vit/masked-autoencoder.md), in both tabs:
the mask keeps exactly the requested number of patches of every example, and
un-shuffling restores their order; the encoder sees only the visible patches;
the loss ignores the visible patches; PyTorch and JAX give the same
reconstruction loss for the same weights and the same mask; the pretrained
encoder starts a classifier, whose linear probe trains only the head."""
import jax
import numpy as np
import optax
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS, randomize

# img_size, patch_size, encoder width, MLP, heads, blocks; decoder width, MLP, heads, blocks
SMALL = (28, 4, 32, 64, 4, 2, 16, 32, 2, 1)
NUM_PATCHES = 49


def as_array(lib, array):
    return torch.as_tensor(array) if lib is torch_lib else jnp.asarray(array)


def to_nhwc(X):
    return jnp.asarray(X.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('mask_ratio, num_keep', [(0.75, 12), (0.5, 24), (0.0, 49), (0.98, 0)])
def test_the_mask_keeps_the_requested_number_of_patches_of_every_example(lib, mask_ratio,
                                                                          num_keep):
    noise = as_array(lib, np.random.default_rng(0).random((5, NUM_PATCHES), dtype=np.float32))
    if num_keep == 0:
        with pytest.raises(ValueError, match='masks all 49 patches.*choose a ratio below 0.980'):
            lib.random_masking(noise, mask_ratio)
        return
    keep, restore, mask = (np.asarray(a) for a in lib.random_masking(noise, mask_ratio))
    assert keep.shape == (5, num_keep)
    np.testing.assert_array_equal(mask.sum(axis=1), NUM_PATCHES - num_keep)
    for k, m in zip(keep, mask):  # the kept patches are exactly the unmasked ones
        assert len(set(k)) == num_keep and not m[k].any()
    # the kept patches are those with the least noise
    kept_noise = np.take_along_axis(np.asarray(noise), keep, axis=1)
    masked_noise = np.where(mask == 1, np.asarray(noise), np.inf)
    assert (kept_noise.max(axis=1) < masked_noise.min(axis=1)).all()


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_unshuffling_restores_the_order_of_the_patches(lib):
    rng = np.random.default_rng(1)
    noise = as_array(lib, rng.random((4, NUM_PATCHES), dtype=np.float32))
    X = as_array(lib, rng.standard_normal((4, NUM_PATCHES, 3), dtype=np.float32))
    keep, restore, mask = lib.random_masking(noise, 0.75)
    shuffle = np.argsort(np.asarray(restore), axis=1)
    shuffled = lib.take_tokens(X, as_array(lib, shuffle))
    np.testing.assert_array_equal(np.asarray(shuffled)[:, :12],
                                  np.asarray(lib.take_tokens(X, keep)))
    np.testing.assert_array_equal(np.asarray(lib.take_tokens(shuffled, restore)), np.asarray(X))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_bad_mask_ratios_are_refused_with_the_fix(lib):
    noise = as_array(lib, np.zeros((1, NUM_PATCHES), dtype=np.float32))
    for ratio in (1.0, -0.1):
        with pytest.raises(ValueError, match=r'choose a number in \[0, 1\)'):
            lib.random_masking(noise, ratio)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_unpatchify_undoes_patchify(lib):
    X = np.random.default_rng(2).random((2, 3, 12, 12), dtype=np.float32)
    X = as_array(lib, X if lib is torch_lib else X.transpose(0, 2, 3, 1))
    patches = lib.patchify(X, 4)
    np.testing.assert_array_equal(np.asarray(lib.unpatchify(patches, 4, num_channels=3)),
                                  np.asarray(X))


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_loss_ignores_the_visible_patches(lib):
    rng = np.random.default_rng(3)
    pred = rng.standard_normal((2, NUM_PATCHES, 16), dtype=np.float32)
    target = rng.random((2, NUM_PATCHES, 16), dtype=np.float32)
    _, _, mask = lib.random_masking(as_array(lib, rng.random((2, NUM_PATCHES),
                                                             dtype=np.float32)), 0.75)
    mask = np.asarray(mask)
    for norm_pix_loss in (True, False):
        def loss(pred):
            return float(lib.masked_patch_loss(as_array(lib, pred), as_array(lib, target),
                                               as_array(lib, mask), norm_pix_loss))
        changed_visible = pred + 10 * (1 - mask[..., None])
        changed_masked = pred + 10 * mask[..., None]
        assert loss(changed_visible) == pytest.approx(loss(pred), rel=1e-6)
        assert loss(changed_masked) > loss(pred) + 1


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_normalized_pixel_loss_is_the_mse_of_standardized_patches(lib):
    rng = np.random.default_rng(4)
    target = rng.random((1, 4, 16)).astype(np.float32)
    mask = np.array([[1, 0, 1, 1]], dtype=np.float32)
    standardized = (target - target.mean(-1, keepdims=True)) / np.sqrt(
        target.var(-1, ddof=1, keepdims=True) + 1e-6)
    loss = lib.masked_patch_loss(as_array(lib, np.zeros_like(target)), as_array(lib, target),
                                 as_array(lib, mask))
    expected = (standardized ** 2).mean(-1)[mask == 1].mean()  # 15/16 for each patch
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert expected == pytest.approx(15 / 16, rel=1e-4)


def torch_and_jax_maes():
    """A PyTorch MAE with random weights everywhere, the JAX MAE and its
    parameters, the same weights."""
    torch.manual_seed(0)
    torch_mae = randomize(torch_lib.MaskedAutoencoder(*SMALL))
    jax_mae = jax_lib.MaskedAutoencoder(*SMALL)
    variables = jax_lib.params_from_torch(torch_mae)
    # The encoder's classification head is not part of the MAE's computation,
    # so Flax never creates it; PyTorch creates the whole ViT
    del variables['params']['encoder']['head']['layers_1']
    X = jnp.zeros((1, 28, 28, 1))
    shapes = jax.eval_shape(jax_mae.init, jax.random.key(0), X)
    assert jax.tree.structure(shapes) == jax.tree.structure(variables)
    return torch_mae, jax_mae, variables


def test_the_encoder_sees_only_the_visible_patches_and_the_class_token():
    torch_mae, _, _ = torch_and_jax_maes()
    X, noise = torch.rand(3, 1, 28, 28), torch.rand(3, NUM_PATCHES)
    with torch.no_grad():
        H, restore, mask = torch_mae.encode(X, noise)
        pred, _ = torch_mae(X, noise)
        # a masked patch's pixels do not reach the encoder
        X_changed = X.clone()
        patch = int(mask[0].nonzero()[0, 0])
        row, col = divmod(patch, 7)
        X_changed[0, :, 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 1
        H_changed, _, _ = torch_mae.encode(X_changed, noise)
    assert H.shape == (3, 1 + 12, 32) and pred.shape == (3, NUM_PATCHES, 16)
    torch.testing.assert_close(H_changed, H)


def test_pytorch_and_jax_give_the_same_reconstruction_loss_for_the_same_weights_and_mask():
    torch_mae, jax_mae, variables = torch_and_jax_maes()
    X, noise = torch.rand(4, 1, 28, 28), torch.rand(4, NUM_PATCHES)
    with torch.no_grad():
        pred, mask = torch_mae(X, noise)
        loss = torch_mae.loss(X, noise)
    jax_pred, jax_mask = jax_mae.apply(variables, to_nhwc(X), jnp.asarray(noise.numpy()))
    np.testing.assert_array_equal(np.asarray(jax_mask), mask.numpy())
    # PyTorch's patches are (channel, row, column), JAX's (row, column, channel): one
    # channel here, so the same order
    np.testing.assert_allclose(np.asarray(jax_pred), pred.numpy(), atol=2e-5)
    jax_loss = jax_lib.masked_patch_loss(jax_pred, jax_lib.patchify(to_nhwc(X), 4), jax_mask)
    assert float(jax_loss) == pytest.approx(float(loss), rel=1e-5)
    assert float(loss) > 0.1


def test_the_jax_training_loss_draws_a_new_mask_from_the_dropout_key():
    _, jax_mae, variables = torch_and_jax_maes()
    X = jnp.asarray(np.random.default_rng(5).random((2, 28, 28, 1), dtype=np.float32))
    state = jax_lib.TrainState.create(apply_fn=jax_mae.apply, params=variables['params'],
                                      tx=optax.sgd(0.1), batch_stats={},
                                      dropout_rng=jax.random.key(0))
    first, _ = jax_mae.loss(state.params, (X,), None, state)
    again, _ = jax_mae.loss(state.params, (X,), None, state)
    other, _ = jax_mae.loss(state.params, (X,), None,
                            state.replace(dropout_rng=jax.random.key(1)))
    assert float(first) == float(again) and float(first) != float(other)


def test_a_pretrained_encoder_starts_a_classifier_in_both_tabs():
    torch_mae, _, variables = torch_and_jax_maes()
    args = SMALL[:6] + (0.0, 0.0)
    torch_vit = torch_lib.FineTunedViT(*args, posemb='sincos2d').eval()
    torch_vit.load_state_dict(torch_mae.encoder.state_dict())
    nn = torch.nn
    nn.init.zeros_(torch_vit.head[1].weight), nn.init.zeros_(torch_vit.head[1].bias)
    jax_vit = jax_lib.FineTunedViT(*args, posemb='sincos2d')
    X = torch.rand(2, 1, 28, 28)
    trainer = jax_lib.PretrainedTrainer(variables['params']['encoder'], max_epochs=1)
    trainer.prepare_model(jax_vit)
    trainer.num_train_batches = 1
    state = trainer.init_state(jax_vit, jax.random.key(0), batch=(to_nhwc(X), jnp.zeros(2)))
    # every parameter but the new zero head's comes from the encoder, in both tabs
    expected = jax_lib.params_from_torch(torch_vit)['params']
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
                 state.params, expected)
    # with the same head, the same logits
    torch.manual_seed(1)
    with torch.no_grad():
        torch_vit.head[1].weight.normal_()
        logits = torch_vit(X).numpy()
    params = jax_lib.params_from_torch(torch_vit)['params']
    jax_logits = jax_vit.apply({'params': params}, to_nhwc(X))
    np.testing.assert_allclose(np.asarray(jax_logits), logits, atol=1e-4)
    assert np.abs(logits).max() > 0.1


def test_pretrained_parameters_that_do_not_fit_are_refused_with_the_fix():
    jax_vit = jax_lib.FineTunedViT(*SMALL[:6], 0.0, 0.0, posemb='sincos2d')
    wrong = {'cls_token': np.zeros((1, 1, 64), np.float32)}
    trainer = jax_lib.PretrainedTrainer(wrong, max_epochs=1)
    trainer.prepare_model(jax_vit)
    trainer.num_train_batches = 1
    with pytest.raises(ValueError, match="cls_token .*build the model with the pretrained"):
        trainer.init_state(jax_vit, jax.random.key(0),
                           batch=(jnp.zeros((1, 28, 28, 1)), jnp.zeros(1)))


def test_a_linear_probe_trains_only_the_head_in_both_tabs():
    args = SMALL[:6] + (0.0, 0.0)
    X, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    # PyTorch: one optimizer step changes the head's linear layer only
    torch.manual_seed(0)
    probe = torch_lib.FineTunedViT(*args, lr=0.1, adamw=True, posemb='sincos2d',
                                   linear_probe=True)
    probe.trainer = type('Trainer', (), {'max_epochs': 1, 'num_train_batches': 10})()
    before = {k: v.clone() for k, v in probe.state_dict().items()}
    optimizer = probe.configure_optimizers()
    for _ in range(2):  # the warm-up's first learning rate is zero
        optimizer.zero_grad()
        probe.loss(probe(X), y).backward()
        optimizer.step()
    changed = {k for k, v in probe.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {'head.1.weight', 'head.1.bias'}
    # JAX: the same with the optimizer of the train state
    jax_probe = jax_lib.FineTunedViT(*args, lr=0.1, adamw=True, posemb='sincos2d',
                                     linear_probe=True)
    trainer = jax_lib.Trainer(max_epochs=1)
    trainer.prepare_model(jax_probe)
    trainer.num_train_batches = 10
    batch = (to_nhwc(X), jnp.asarray(y.numpy()))
    state = trainer.init_state(jax_probe, jax.random.key(0), batch=batch)
    start = state.params
    for _ in range(2):
        (_, _), grads = jax_probe.training_step(state.params, batch, state)
        state = state.apply_gradients(grads=grads)
    changed = jax.tree_util.tree_leaves_with_path(jax.tree.map(
        lambda a, b: bool((a != b).any()), state.params, start))
    assert {jax.tree_util.keystr(path) for path, c in changed if c} == {
        "['head']['layers_1']['bias']", "['head']['layers_1']['kernel']"}
