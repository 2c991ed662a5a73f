"""Claims of the section about patch embedding, checked in both frameworks."""
import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.checks import patch_grid


@pytest.mark.parametrize('img_size, patch_size, channels', [(96, 16, 1), (32, 4, 3), ((24, 32), 8, 2)])
def test_torch_patch_embedding_shape(img_size, patch_size, channels):
    emb = torch_lib.PatchEmbedding(img_size, patch_size, 64, channels)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    Y = emb(torch.randn(2, channels, h, w))
    assert emb.num_patches == (h // patch_size) * (w // patch_size)
    assert Y.shape == (2, emb.num_patches, 64)


@pytest.mark.parametrize('img_size, patch_size, channels', [(96, 16, 1), (32, 4, 3), ((24, 32), 8, 2)])
def test_jax_patch_embedding_shape(img_size, patch_size, channels):
    emb = jax_lib.PatchEmbedding(img_size, patch_size, 64, channels)
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    Y, _ = emb.init_with_output(jax.random.key(0), jnp.ones((2, h, w, channels)))
    assert Y.shape == (2, (h // patch_size) * (w // patch_size), 64)


def test_torch_conv_patch_embedding_equals_reshape_plus_linear():
    emb = torch_lib.PatchEmbedding(32, 8, 48, num_channels=3)
    X = torch.randn(5, 3, 32, 32)
    W = emb.conv.weight.reshape(48, -1)
    Y_linear = torch_lib.patchify(X, 8) @ W.T + emb.conv.bias
    assert torch.allclose(emb(X), Y_linear, atol=1e-5)


def test_jax_conv_patch_embedding_equals_reshape_plus_linear():
    emb = jax_lib.PatchEmbedding(32, 8, 48, num_channels=3)
    X = jax.random.normal(jax.random.key(0), (5, 32, 32, 3))
    Y, variables = emb.init_with_output(jax.random.key(1), X)
    conv = variables['params']['conv']
    Y_linear = jax_lib.patchify(X, 8) @ conv['kernel'].reshape(-1, 48) + conv['bias']
    np.testing.assert_allclose(Y, Y_linear, atol=1e-5)


def test_patchify_keeps_each_patch_together_in_both_layouts():
    X = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
    torch_patches = torch_lib.patchify(torch.from_numpy(X), 4).numpy()
    jax_patches = np.asarray(jax_lib.patchify(jnp.asarray(X.transpose(0, 2, 3, 1)), 4))
    # Patch (row 0, col 1) of image 1 is the pixels [4:8] of rows [0:4].
    np.testing.assert_array_equal(torch_patches[1, 1], X[1, :, 0:4, 4:8].reshape(-1))
    np.testing.assert_array_equal(jax_patches[1, 1], X[1, :, 0:4, 4:8].transpose(1, 2, 0).reshape(-1))


@pytest.mark.parametrize('img_size, patch_size', [(100, 16), ((96, 90), 16), (30, 7)])
def test_size_not_divisible_by_patch_size_is_refused(img_size, patch_size):
    with pytest.raises(ValueError, match='not divisible by the patch size'):
        patch_grid(img_size, patch_size)
    with pytest.raises(ValueError, match='silently dropped'):
        torch_lib.PatchEmbedding(img_size, patch_size)
    with pytest.raises(ValueError, match='Resize the images to a multiple'):
        jax_lib.PatchEmbedding(img_size, patch_size).init(jax.random.key(0), jnp.ones((1, 112, 112, 1)))
    with pytest.raises(ValueError, match='not divisible'):
        torch_lib.ViT(img_size, patch_size, 32, 64, 2, 1, 0.0, 0.0)


def test_wrong_channel_count_names_the_fix():
    model = torch_lib.ViT(32, 8, 32, 64, 2, 1, 0.0, 0.0)
    with pytest.raises(ValueError, match=r'expects 1 channel\(s\).*num_channels=3'):
        model(torch.randn(2, 3, 32, 32))
    jax_model = jax_lib.ViT(32, 8, 32, 64, 2, 1, 0.0, 0.0)
    with pytest.raises(ValueError, match=r'expects 1 channel\(s\).*num_channels=3'):
        jax_model.init(jax.random.key(0), jnp.ones((2, 32, 32, 3)))


def test_nhwc_images_given_to_pytorch_are_explained():
    model = torch_lib.ViT(32, 8, 32, 64, 2, 1, 0.0, 0.0, num_channels=3)
    with pytest.raises(ValueError, match='NCHW, not NHWC'):
        model(torch.randn(2, 32, 32, 3))


def test_wrong_image_size_names_the_fix():
    model = torch_lib.ViT(32, 8, 32, 64, 2, 1, 0.0, 0.0)
    with pytest.raises(ValueError, match='built for 32x32 images but got 64x64'):
        model(torch.randn(2, 1, 64, 64))
    jax_model = jax_lib.ViT(32, 8, 32, 64, 2, 1, 0.0, 0.0)
    with pytest.raises(ValueError, match='built for 32x32 images but got 64x64'):
        jax_model.init(jax.random.key(0), jnp.ones((2, 64, 64, 1)))
