"""What the Swin section (chapter_vit/swin.md) claims about its parts: window
partition and reverse are inverses, the shifted-window mask blocks exactly the
pairs from different regions, one window over the whole grid is global
attention, PyTorch and JAX compute the same numbers for the same weights, the
measured memory grows quadratically for global and linearly for windowed
attention, and bad sizes are refused with the fix.

The notebook itself is evaluated in both tabs by test_book.py.
"""
import itertools

import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS, randomize



def to_lib(lib, array):
    return torch.tensor(np.asarray(array)) if lib is torch_lib else jnp.asarray(array)


def jax_output(jax_module, torch_module, *inputs):
    """The JAX module's output for the PyTorch module's weights."""
    variables = jax_lib.params_from_torch(torch_module)
    return np.asarray(jax.jit(jax_module.apply)(variables, *inputs))


# Window partition and reverse

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('batch, grid, window, channels',
                         [(2, (8, 8), 4, 3), (1, (12, 8), 4, 1), (3, (6, 6), 6, 2), (2, (6, 9), 3, 5)])
def test_window_partition_and_reverse_are_inverses(lib, batch, grid, window, channels):
    X = np.random.default_rng(0).normal(size=(batch, *grid, channels)).astype(np.float32)
    windows = np.asarray(lib.window_partition(to_lib(lib, X), window))
    windows_per_image = grid[0] // window * (grid[1] // window)
    assert windows.shape == (batch * windows_per_image, window, window, channels)
    # Windows go image by image and, in an image, row by row
    per_row = grid[1] // window
    for k in (0, 1, windows_per_image - 1, batch * windows_per_image - 1):
        image, (row, col) = k // windows_per_image, divmod(k % windows_per_image, per_row)
        np.testing.assert_array_equal(
            windows[k], X[image, row * window:(row + 1) * window, col * window:(col + 1) * window])
    back = np.asarray(lib.window_reverse(to_lib(lib, windows), window, grid))
    np.testing.assert_array_equal(back, X)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_a_grid_that_windows_do_not_tile_is_refused_with_the_fix(lib):
    X = to_lib(lib, np.zeros((1, 24, 24, 8), np.float32))
    with pytest.raises(ValueError, match=r'24x24 grid .* windows of 7x7 .*such as 6 or 8'):
        lib.window_partition(X, 7)
    with pytest.raises(ValueError, match='windows of 5x5'):
        lib.window_reverse(to_lib(lib, np.zeros((4, 5, 5, 8), np.float32)), 5, (12, 12))


# Relative position bias

@pytest.mark.parametrize('window', [1, 2, 3, 4, 7])
def test_relative_position_index_numbers_the_offsets(window):
    index = torch_lib.relative_position_index(window)
    assert index.shape == (window**2, window**2)
    offsets = {}
    for i, j in itertools.product(range(window**2), repeat=2):
        offset = (i // window - j // window, i % window - j % window)  # query minus key
        offsets.setdefault(offset, set()).add(int(index[i, j]))
    # One index per offset, and the (2M - 1)^2 offsets use every index once
    assert all(len(indices) == 1 for indices in offsets.values())
    assert sorted(i for (i,) in offsets.values()) == list(range((2 * window - 1)**2))
    np.testing.assert_array_equal(jax_lib.relative_position_index(window), index)


@pytest.mark.parametrize('window', [2, 7])
def test_relative_position_index_is_swins_so_that_its_tables_load(window):
    from timm.models.swin_transformer import get_relative_position_index
    np.testing.assert_array_equal(torch_lib.relative_position_index(window),
                                  get_relative_position_index(window, window).numpy())


# The shifted-window mask

def brute_force_blocked(grid, window, shift):
    """For each window of the rolled grid, which pairs (query, key) come from
    different regions of the image. A token's region: whether the roll by
    `shift` carried it across the bottom border, and across the right one."""
    height, width = grid
    wrapped = lambda position, size: position + shift >= size  # in the rolled grid
    blocked = []
    for top, left in itertools.product(range(0, height, window), range(0, width, window)):
        tokens = [(top + r, left + c) for r in range(window) for c in range(window)]
        regions = [(wrapped(r, height), wrapped(c, width)) for r, c in tokens]
        blocked.append([[a != b for b in regions] for a in regions])
    return np.array(blocked)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
@pytest.mark.parametrize('grid, window, shift',
                         [((8, 8), 4, 2), ((12, 12), 6, 3), ((16, 16), 4, 2), ((8, 12), 4, 2),
                          ((12, 12), 4, 1), ((9, 9), 3, 1)])
def test_shifted_window_mask_blocks_exactly_the_pairs_from_different_regions(lib, grid, window, shift):
    mask = np.asarray(lib.shifted_window_mask(grid, window, shift))
    assert mask.shape == (grid[0] * grid[1] // window**2, window**2, window**2)
    assert set(np.unique(mask)) <= {0.0, -100.0}
    np.testing.assert_array_equal(mask != 0, brute_force_blocked(grid, window, shift))


def test_the_masked_pairs_of_the_sections_example():
    """8x8 grid, windows of 4x4, shift 2: one, two, two and four regions."""
    mask = np.asarray(jax_lib.shifted_window_mask((8, 8), 4, 2))
    assert [int((m != 0).sum()) for m in mask] == [0, 128, 128, 192]
    np.testing.assert_array_equal(torch_lib.shifted_window_mask((8, 8), 4, 2).numpy(), mask)


def shifted_window_reference(X, qkv_weight, qkv_bias, proj_weight, proj_bias, table, window, shift,
                             num_heads):
    """Attention of every token over the tokens of its shifted window in the
    image, computed token by token without a roll or a mask: the windows are
    displaced by `shift` rows and columns, and the strips that this leaves
    along the top and the left form windows of their own."""
    batch, height, width, dim = X.shape
    head_width = dim // num_heads
    band = lambda position: (position - shift) // window  # -1 for the first strip
    QKV = X @ qkv_weight.T + qkv_bias
    Q, K, V = (QKV[..., k * dim:(k + 1) * dim].reshape(batch, height, width, num_heads, head_width)
               for k in range(3))
    H = np.zeros((batch, height, width, num_heads, head_width))
    for r, c in itertools.product(range(height), range(width)):
        keys = [(r2, c2) for r2, c2 in itertools.product(range(height), range(width))
                if band(r2) == band(r) and band(c2) == band(c)]
        # Swin's offset: the query's row and column minus the key's
        offsets = [(r - r2 + window - 1) * (2 * window - 1) + (c - c2 + window - 1) for r2, c2 in keys]
        scores = np.einsum('bhd,bkhd->bhk', Q[:, r, c], np.stack([K[:, r2, c2] for r2, c2 in keys], 1))
        scores = scores / np.sqrt(head_width) + table[offsets].T
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        H[:, r, c] = np.einsum('bhk,bkhd->bhd', weights, np.stack([V[:, r2, c2] for r2, c2 in keys], 1))
    return H.reshape(batch, height, width, dim) @ proj_weight.T + proj_bias


@pytest.mark.parametrize('grid, window, shift', [((8, 8), 4, 2), ((8, 12), 4, 1)])
def test_shifted_window_block_attends_inside_the_shifted_windows_of_the_image(grid, window, shift):
    """Roll, partition, masked attention, reverse and roll back compute
    attention inside the paper's shifted windows, relative position bias
    included; a test of the whole mechanism against its definition."""
    torch.manual_seed(0)
    blk = torch_lib.SwinBlock(16, 32, 2, grid, window, shift, dropout=0)
    X = torch.randn(2, *grid, 16)
    blk(X)  # builds the lazy MLP
    randomize(blk)
    attention = {k: v.numpy().astype(np.float64) for k, v in blk.attention.state_dict().items()}
    with torch.no_grad():
        normed = blk.ln1(X).numpy().astype(np.float64)
        Y = X + torch.tensor(shifted_window_reference(
            normed, attention['qkv.weight'], attention['qkv.bias'], attention['proj.weight'],
            attention['proj.bias'], attention['relative_position_bias_table'], window, shift, 2),
            dtype=torch.float32)
        expected = Y + blk.mlp(blk.ln2(Y))
        np.testing.assert_allclose(blk(X).numpy(), expected.numpy(), atol=1e-5)


# One window over the whole grid is global attention

@pytest.mark.parametrize('grid', [4, 6])
def test_one_window_over_the_grid_is_global_attention(grid):
    """The same qkv and proj weights, the relative position bias set to zero
    (global attention has none): WindowAttention on one window of the whole
    grid computes ViTAttention, in both frameworks."""
    torch.manual_seed(0)
    windowed = torch_lib.WindowAttention(24, 3, 0, window_size=grid).eval()
    with torch.no_grad():
        windowed.relative_position_bias_table.zero_()
    global_attention = torch_lib.ViTAttention(24, 3, 0, qkv_bias=True).eval()
    global_attention.load_state_dict(windowed.state_dict(), strict=False)
    X = torch.randn(2, grid * grid, 24)
    with torch.no_grad():
        expected = global_attention(X)[0].numpy()
        np.testing.assert_allclose(windowed(X).numpy(), expected, atol=1e-5)
    # JAX: the same weights in the Flax modules
    params = jax_lib.params_from_torch(windowed)['params']
    out = jax_lib.WindowAttention(24, 3, 0.0, window_size=grid).apply(
        {'params': params}, jnp.asarray(X.numpy()))
    global_out, _ = jax_lib.ViTAttention(24, 3, 0.0, qkv_bias=True).apply(
        {'params': {'qkv': params['qkv'], 'proj': params['proj']}}, jnp.asarray(X.numpy()))
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(global_out), expected, atol=1e-5)


def test_a_swin_block_whose_window_covers_the_grid_is_a_vit_block():
    """A window larger than the grid shrinks to it and does not shift; with a
    zero bias, the block is the chapter's ViTBlock (with q/k/v biases)."""
    torch.manual_seed(0)
    swin = torch_lib.SwinBlock(24, 48, 3, 4, window_size=6, shift_size=3, dropout=0)
    assert (swin.window_size, swin.shift_size, swin.attention_mask) == (4, 0, None)
    X = torch.randn(2, 4, 4, 24)
    swin(X)
    randomize(swin)
    with torch.no_grad():
        swin.attention.relative_position_bias_table.zero_()
    vit = torch_lib.ViTBlock(24, 48, 3, 0, use_bias=True).eval()
    vit(X.reshape(2, 16, 24))  # builds the lazy MLP
    vit.load_state_dict(swin.state_dict(), strict=False)
    with torch.no_grad():
        np.testing.assert_allclose(swin(X).numpy(), vit(X.reshape(2, 16, 24)).reshape(2, 4, 4, 24).numpy(),
                                   atol=1e-5)


# PyTorch and JAX agree for the same weights

@pytest.mark.parametrize('with_mask', [False, True])
def test_window_attention_parity(with_mask):
    torch.manual_seed(0)
    torch_attention = randomize(torch_lib.WindowAttention(32, 4, 0, window_size=4))
    X = torch.randn(2 * 4, 16, 32)  # two images of 8x8 tokens: 4 windows each
    mask = torch_lib.shifted_window_mask((8, 8), 4, 2) if with_mask else None
    with torch.no_grad():
        expected = torch_attention(X, mask).numpy()
    jax_mask = None if mask is None else jnp.asarray(mask.numpy())
    out = jax_output(jax_lib.WindowAttention(32, 4, 0.0, window_size=4), torch_attention,
                     jnp.asarray(X.numpy()), jax_mask)
    assert np.abs(out - expected).max() < 1e-5
    if with_mask:  # the mask changes the output of the windows it masks, only those
        with torch.no_grad():
            unmasked = torch_attention(X).numpy().reshape(2, 4, 16, 32)
        changed = np.abs(unmasked - expected.reshape(2, 4, 16, 32)).max(axis=(0, 2, 3)) > 1e-4
        assert changed.tolist() == [False, True, True, True]


@pytest.mark.parametrize('grid, window, shift', [(8, 4, 0), (8, 4, 2), ((12, 8), 4, 2), (6, 3, 1)])
def test_swin_block_parity(grid, window, shift):
    torch.manual_seed(0)
    torch_blk = torch_lib.SwinBlock(24, 40, 3, grid, window, shift, dropout=0.1)
    height, width = (grid, grid) if isinstance(grid, int) else grid
    X = torch.randn(2, height, width, 24)
    torch_blk(X)
    randomize(torch_blk)
    with torch.no_grad():
        expected = torch_blk(X).numpy()
    out = jax_output(jax_lib.SwinBlock(24, 40, 3, grid, window, shift, 0.1), torch_blk,
                     jnp.asarray(X.numpy()))
    assert np.abs(out - expected).max() < 1e-5


def test_patch_merging_parity_and_order():
    torch.manual_seed(0)
    torch_merge = randomize(torch_lib.PatchMerging(8))
    X = torch.randn(2, 6, 4, 8)
    with torch.no_grad():
        expected = torch_merge(X).numpy()
        # The order of Swin's code: top left, bottom left, top right, bottom right
        groups = torch.cat([X[:, 0::2, 0::2], X[:, 1::2, 0::2], X[:, 0::2, 1::2], X[:, 1::2, 1::2]], -1)
        np.testing.assert_allclose(torch_merge.reduction(torch_merge.norm(groups)).numpy(), expected,
                                   atol=1e-6)
    assert expected.shape == (2, 3, 2, 16)
    out = jax_output(jax_lib.PatchMerging(8), torch_merge, jnp.asarray(X.numpy()))
    assert np.abs(out - expected).max() < 1e-5


SWIN_CONFIGS = [
    dict(),  # the section's model
    dict(img_size=(96, 48), num_hiddens=16, depths=(2, 1, 1), num_heads=(2, 2, 4)),  # not square
    dict(img_size=32, patch_size=2, num_hiddens=8, depths=(1, 3), num_heads=(1, 2), num_channels=3),
]


@pytest.mark.parametrize('config', SWIN_CONFIGS)
def test_pytorch_and_jax_swins_give_the_same_logits(config):
    torch.manual_seed(0)
    torch_model = randomize(torch_lib.SwinTransformer(**config))
    img_size = config.get('img_size', 96)
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    X = torch.rand(3, config.get('num_channels', 1), height, width)
    with torch.no_grad():
        expected = torch_model(X).numpy()
    logits = jax_output(jax_lib.SwinTransformer(**config), torch_model,
                        jnp.asarray(X.numpy().transpose(0, 2, 3, 1)))
    assert np.abs(logits - expected).max() < 1e-5
    assert np.abs(expected).max() > 0.5  # a real signal, not two zero outputs


def test_jax_swin_weights_copied_into_pytorch_give_the_same_logits():
    config = SWIN_CONFIGS[2]
    jax_model = jax_lib.SwinTransformer(**config)
    X = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
    variables = jax.jit(jax_model.init)(jax.random.key(1), X)
    variables['params']['head']['kernel'] = 0.1 * jax.random.normal(
        jax.random.key(2), variables['params']['head']['kernel'].shape)  # not zero
    torch_model = torch_lib.SwinTransformer(**config)
    jax_lib.params_to_torch(variables, torch_model).eval()
    with torch.no_grad():
        torch_logits = torch_model(torch.tensor(np.asarray(X).transpose(0, 3, 1, 2))).numpy()
    assert np.abs(np.asarray(jax.jit(jax_model.apply)(variables, X)) - torch_logits).max() < 1e-5


def test_both_tabs_initialize_the_swin_the_same_way():
    """Xavier weights (qkv as three matrices), zero biases and head, relative
    position bias tables with std 0.02; the same parameters in both tabs."""
    torch.manual_seed(0)
    torch_params = jax_lib.params_from_torch(torch_lib.SwinTransformer())['params']
    model = jax_lib.SwinTransformer()
    jax_params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 96, 96, 1)))['params']
    assert jax.tree.map(np.shape, torch_params) == jax.tree.map(np.shape, jax_params)
    for params in (torch_params, jax_params):
        assert np.all(np.asarray(params['head']['kernel']) == 0)
        tables = [params[f'blks_{i}']['attention']['relative_position_bias_table'] for i in (0, 1, 3, 4)]
        assert np.std(np.concatenate([np.ravel(t) for t in tables])) == pytest.approx(0.02, rel=0.1)
        stage2 = params['blks_3']  # width 64, after the first patch merging
        for W in np.split(np.asarray(stage2['attention']['qkv']['kernel']), 3, axis=1):
            assert np.std(W) == pytest.approx(np.sqrt(2 / (64 + 64)), rel=0.05)
        assert np.all(np.asarray(stage2['attention']['qkv']['bias']) == 0)
        assert np.std(stage2['mlp']['dense1']['kernel']) == pytest.approx(np.sqrt(2 / (64 + 256)), rel=0.05)
        reduction = np.asarray(params['blks_2']['reduction']['kernel'])  # (4 * 32, 64)
        assert np.std(reduction) == pytest.approx(np.sqrt(2 / (128 + 64)), rel=0.05)
    # The untrained model predicts the uniform distribution: first loss log 10
    logits = jax.jit(model.apply)({'params': jax_params}, jnp.ones((2, 96, 96, 1)))
    assert np.all(np.asarray(logits) == 0)


def test_the_stages_shrink_the_grid_and_widen_the_tokens():
    model = torch_lib.SwinTransformer().eval()
    shapes = []
    X = model.patch_norm(model.patch_embedding(torch.zeros(1, 1, 96, 96))).reshape(1, 16, 16, -1)
    with torch.no_grad():
        for blk in model.blks:
            X = blk(X)
            shapes.append(tuple(X.shape[1:]))
    assert shapes == [(16, 16, 32)] * 2 + [(8, 8, 64)] * 3 + [(4, 4, 128)] * 3
    # The last stage is one window over its 4x4 grid: no shift, no mask
    assert [(blk.window_size, blk.shift_size) for blk in model.blks if hasattr(blk, 'shift_size')] == \
        [(4, 0), (4, 2), (4, 0), (4, 2), (4, 0), (4, 0)]


# Bad sizes are refused with the fix

@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_sizes_that_do_not_fit_are_refused_with_the_fix(lib):
    def build(**config):
        if lib is torch_lib:
            return lib.SwinTransformer(**config)
        img_size = config.get('img_size', 96)
        return lib.SwinTransformer(**config).init(jax.random.key(0), jnp.zeros((1, img_size, img_size, 1)))

    with pytest.raises(ValueError, match=r'16x16 grid of tokens does not split into windows of 5x5'):
        build(window_size=5)
    with pytest.raises(ValueError, match=r'patch merging joins 2x2 .* 15x15: choose an image size'):
        build(img_size=90, window_size=5)  # 15x15 tokens: fine for windows, odd for merging
    with pytest.raises(ValueError, match='one number per stage'):
        build(depths=(2, 2), num_heads=(2, 4, 8))
    with pytest.raises(ValueError, match='not divisible by num_heads'):
        build(num_heads=(3, 6, 12))  # 32 / 3


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_a_block_refuses_a_grid_it_was_not_built_for(lib):
    X = np.zeros((1, 12, 12, 16), np.float32)
    with pytest.raises(ValueError, match=r'built for a \(8, 8\) grid .* got \(12, 12\)'):
        if lib is torch_lib:
            lib.SwinBlock(16, 32, 2, 8, 4, 2)(torch.tensor(X))
        else:
            lib.SwinBlock(16, 32, 2, 8, 4, 2).init(jax.random.key(0), jnp.asarray(X))
    with pytest.raises(ValueError, match='patch merging joins 2x2'):
        if lib is torch_lib:
            lib.PatchMerging(16)(torch.zeros(1, 5, 6, 16))
        else:
            lib.PatchMerging(16).init(jax.random.key(0), jnp.zeros((1, 5, 6, 16)))


# The measured cost: quadratic against linear

def windowed_layer(lib, attention, window):
    def layer(*args):
        X = args[-1]
        windows = lib.window_partition(X, window).reshape(-1, window**2, X.shape[-1])
        if lib is torch_lib:
            windows = attention(windows)
        else:
            windows = attention.apply({'params': args[0]}, windows)
        return lib.window_reverse(windows.reshape(-1, window, window, X.shape[-1]), window, X.shape[1:3])
    return layer


def test_measured_memory_of_global_attention_is_quadratic_and_of_windows_linear_torch():
    torch.manual_seed(0)
    global_attention = torch_lib.ViTAttention(16, 2, 0, qkv_bias=True)
    windowed = torch_lib.WindowAttention(16, 2, 0, window_size=4)
    memory = {'global': [], 'windowed': []}
    for side in (8, 16, 32):
        X = torch.randn(1, side, side, 16)
        memory['global'].append(torch_lib.attention_cost(
            lambda X: global_attention(X.reshape(1, -1, 16), return_weights=True)[0],
            list(global_attention.parameters()), X, num_repeats=1)[1])
        memory['windowed'].append(torch_lib.attention_cost(
            windowed_layer(torch_lib, windowed, 4), list(windowed.parameters()), X, num_repeats=1)[1])
        # At least the 2 heads' n x n attention weights in float32
        assert memory['global'][-1] >= 2 * side**4 * 4
    # Four times the tokens: four times the memory in windows, about 16 times globally
    assert np.allclose(np.diff(np.log(memory['windowed'])) / np.log(4), 1, atol=0.05)
    assert (np.diff(np.log(memory['global'])) / np.log(4))[-1] > 1.8


def test_measured_memory_of_global_attention_is_quadratic_and_of_windows_linear_jax():
    global_attention = jax_lib.ViTAttention(16, 2, 0.0, qkv_bias=True)
    windowed = jax_lib.WindowAttention(16, 2, 0.0, window_size=4)
    X = jnp.zeros((1, 16, 16))
    global_params = global_attention.init(jax.random.key(0), X)['params']
    window_params = windowed.init(jax.random.key(1), X)['params']
    memory = {'global': [], 'windowed': []}
    for side in (16, 32):
        X = jax.random.normal(jax.random.key(2), (1, side, side, 16))
        memory['global'].append(jax_lib.attention_cost(
            lambda params, X: global_attention.apply({'params': params}, X.reshape(1, -1, 16),
                                                     return_weights=True)[0],
            global_params, X, num_repeats=1)[1])
        memory['windowed'].append(jax_lib.attention_cost(
            windowed_layer(jax_lib, windowed, 4), window_params, X, num_repeats=1)[1])
    ratio = {name: m[1] / m[0] for name, m in memory.items()}  # for four times the tokens
    assert 3 < ratio['windowed'] < 5 and ratio['global'] > 12, ratio
