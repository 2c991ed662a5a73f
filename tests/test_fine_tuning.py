"""What the fine-tuning section (chapter_vit/fine-tuning.md) claims about its
loaders and steps, in both tabs: a published timm model, read from a file in
timm's own format the way the page reads it from the hub, becomes the
chapter's ViT with the same logits; an .npz with the real checkpoints' names
and shapes becomes the chapter's Flax ViT, computing what timm's own loader of
those files computes, and anything that does not map is refused by name; the
new head is zero and the new image size interpolates the position
embeddings, with the same shapes in both tabs; the fine-tuning model gives
the same logits in both tabs for the same weights; offline, the page's
download says so in one line and the digits load without a network."""
import io

import jax
import numpy as np
import pytest
import timm
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib
from d2l_extras.convert.from_npz import params_from_npz
from d2l_extras.run import reference_runs
from helpers import randomize

CHECKPOINT = 'vit_small_patch16_224.augreg_in21k_ft_in1k'
# ViT-S/16: what the page's published checkpoint is
VIT_S = dict(img_size=224, patch_size=16, num_hiddens=384, mlp_num_hiddens=1536,
             num_heads=6, num_blks=12, use_bias=True, num_classes=1000,
             num_channels=3, pool='cls', posemb='learn')
# A small model of the same kind, for the tests that compute
SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4,
             mlp_ratio=2.0, num_classes=5)


def timm_vit(seed=0, **kwargs):
    torch.manual_seed(seed)
    return randomize(timm.create_model(CHECKPOINT, pretrained=False, **kwargs),
                     seed)


def vit_jax_arrays(timm_model):
    """The timm model's weights under the names, layouts and shapes of the
    ViT paper's .npz checkpoints (what timm's _load_weights reads)."""
    state = {k: v.detach().numpy() for k, v in timm_model.state_dict().items()}
    width = timm_model.embed_dim
    arrays = {'embedding/kernel': state['patch_embed.proj.weight'].transpose(2, 3, 1, 0),
              'embedding/bias': state['patch_embed.proj.bias'],
              'cls': state['cls_token'],
              'Transformer/posembed_input/pos_embedding': state['pos_embed'],
              'Transformer/encoder_norm/scale': state['norm.weight'],
              'Transformer/encoder_norm/bias': state['norm.bias'],
              'head/kernel': state['head.weight'].T, 'head/bias': state['head.bias']}
    for i, block in enumerate(timm_model.blocks):
        heads = block.attn.num_heads
        b, t = f'Transformer/encoderblock_{i}/', f'blocks.{i}.'
        attention = b + 'MultiHeadDotProductAttention_1/'
        qkv_w = state[t + 'attn.qkv.weight'].reshape(3, width, width)
        qkv_b = state[t + 'attn.qkv.bias'].reshape(3, heads, -1)
        for j, name in enumerate(('query', 'key', 'value')):
            arrays[f'{attention}{name}/kernel'] = qkv_w[j].T.reshape(width, heads, -1)
            arrays[f'{attention}{name}/bias'] = qkv_b[j]
        arrays[attention + 'out/kernel'] = state[t + 'attn.proj.weight'].T.reshape(
            heads, -1, width)
        arrays[attention + 'out/bias'] = state[t + 'attn.proj.bias']
        for ours, theirs in (('LayerNorm_0', 'norm1'), ('LayerNorm_2', 'norm2')):
            arrays[f'{b}{ours}/scale'] = state[f'{t}{theirs}.weight']
            arrays[f'{b}{ours}/bias'] = state[f'{t}{theirs}.bias']
        for r in range(2):
            arrays[f'{b}MlpBlock_3/Dense_{r}/kernel'] = state[f'{t}mlp.fc{r + 1}.weight'].T
            arrays[f'{b}MlpBlock_3/Dense_{r}/bias'] = state[f'{t}mlp.fc{r + 1}.bias']
    return arrays


def save_npz(arrays, path):
    np.savez(path, **arrays)
    return path


def images(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_published_timm_file_loads_like_the_hub(tmp_path):
    """The page's timm.create_model(checkpoint, pretrained=True), with the
    weights from a local file in timm's own format (safetensors, as on the
    hub) instead of the hub: vit_from_timm gives the same logits."""
    from safetensors.torch import save_file
    published = timm_vit()
    path = tmp_path / 'model.safetensors'
    save_file(published.state_dict(), str(path))
    loaded = timm.create_model(CHECKPOINT, pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path))).eval()
    model = torch_lib.vit_from_timm(loaded).eval()
    assert {k: v for k, v in model.hparams.items()
            if k in VIT_S} == VIT_S
    X = torch.from_numpy(images((2, 3, 224, 224)))
    with torch.no_grad():
        expected, got = published(X), model(X)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_npz_with_vit_s_names_and_shapes():
    """An archive with the ViT-S/16 checkpoint's names and shapes gives
    ViT-S/16's hyperparameters and exactly the Flax ViT's parameter tree."""
    arrays = vit_jax_arrays(timm.create_model(CHECKPOINT, pretrained=False))
    assert 'Transformer/encoderblock_11/MlpBlock_3/Dense_1/kernel' in arrays
    assert arrays['embedding/kernel'].shape == (16, 16, 3, 384)
    assert arrays[('Transformer/encoderblock_0/MultiHeadDotProductAttention_1/'
                   'query/kernel')].shape == (384, 6, 64)
    hparams, params = params_from_npz(arrays)
    assert hparams == VIT_S
    model = jax_lib.ViT(emb_dropout=0.0, blk_dropout=0.0, **hparams)
    expected = jax.eval_shape(model.init, jax.random.key(0),
                              jnp.zeros((1, 224, 224, 3)))['params']
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)
    assert shapes(params) == shapes(expected)


def test_npz_computes_what_timms_loader_computes(tmp_path):
    """timm's own reader of the paper's files (_load_weights) and
    vit_from_npz, given the same file, give the same logits."""
    path = save_npz(vit_jax_arrays(timm_vit(**SMALL)), tmp_path / 'vit.npz')
    by_timm = timm.create_model(CHECKPOINT, pretrained=False, **SMALL)
    by_timm.load_pretrained(str(path))
    model, params = jax_lib.vit_from_npz(path)
    X = images((2, 32, 32, 3))
    with torch.no_grad():
        expected = by_timm.eval()(torch.from_numpy(X).permute(0, 3, 1, 2))
    got = model.apply({'params': params}, X)
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), atol=1e-4, rtol=1e-4)


def big_vision_names(arrays, stacked=False):
    """The same model under big_vision's names: its own numbering of a
    block's layers, and optionally the blocks stacked on a leading axis."""
    renamed = {}
    for key, value in arrays.items():
        for old, new in (('MultiHeadDotProductAttention_1', 'MultiHeadDotProductAttention_0'),
                         ('LayerNorm_2', 'LayerNorm_1'), ('MlpBlock_3', 'MlpBlock_0')):
            key = key.replace(old, new)
        renamed['params/' + key] = value
    if stacked:
        blocks = sorted({k.split('/', 3)[3] for k in renamed if 'encoderblock_' in k})
        depth = len({k.split('/')[2] for k in renamed if 'encoderblock_' in k})
        for name in blocks:
            renamed[f'params/Transformer/encoderblock/{name}'] = np.stack(
                [renamed.pop(f'params/Transformer/encoderblock_{i}/{name}')
                 for i in range(depth)])
    return renamed


@pytest.mark.parametrize('stacked', [False, True], ids=['per-block', 'stacked'])
def test_big_vision_names_give_the_same_parameters(stacked):
    arrays = vit_jax_arrays(timm_vit(**SMALL))
    _, expected = params_from_npz(arrays)
    _, got = params_from_npz(big_vision_names(arrays, stacked))
    jax.tree.map(np.testing.assert_array_equal, got, expected)


def broken(arrays, change):
    arrays = dict(arrays)
    change(arrays)
    return arrays


BROKEN = {  # what is wrong -> (how to make it, the key the error must name)
    'representation layer': (lambda a: a.update({'pre_logits/kernel': np.zeros((48, 48)),
                                                 'pre_logits/bias': np.zeros(48)}),
                             'pre_logits/kernel'),
    'unknown array': (lambda a: a.update({'Transformer/extra/kernel': np.zeros(3)}),
                      'Transformer/extra/kernel'),
    'missing array': (lambda a: a.pop('Transformer/encoder_norm/scale'),
                      'Transformer/encoder_norm/scale'),
    'wrong shape': (lambda a: a.update(cls=np.zeros((1, 1, 47))), 'cls'),
    'no class token': (lambda a: a.pop('cls'), 'cls'),
    'MAP head': (lambda a: a.update({'MAPHead_0/probe': np.zeros((1, 1, 48))}),
                 'MAPHead_0/probe'),
}


@pytest.mark.parametrize('what', BROKEN)
def test_npz_that_does_not_map_is_refused_by_name(what, tmp_path):
    change, key = BROKEN[what]
    path = save_npz(broken(vit_jax_arrays(timm_vit(**SMALL)), change), tmp_path / 'x.npz')
    with pytest.raises(ValueError, match=f"'{key}'") as error:
        jax_lib.vit_from_npz(path)
    assert 'chapter' in str(error.value)


def test_not_a_vit_checkpoint_is_refused():
    archive = io.BytesIO()
    np.savez(archive, **{'conv1/kernel': np.zeros(3)})
    archive.seek(0)
    with pytest.raises(ValueError, match='embedding/kernel'):
        jax_lib.vit_from_npz(archive)


def small_torch_vit(num_classes=10):
    torch.manual_seed(0)
    model = torch_lib.ViT(96, 16, 64, 128, 4, 2, 0.0, 0.0, use_bias=True,
                          num_classes=num_classes)
    return randomize(model)


def test_new_head_is_zero_and_new_size_interpolates():
    """with_num_classes then with_img_size, as the page does: the head is new
    and zero, the position embeddings fit the 4 x 4 grid, every other
    parameter is copied; the JAX tab's steps give the same parameters."""
    pretrained = small_torch_vit()
    start = pretrained.with_num_classes(7).with_img_size(64)
    state, old = start.state_dict(), pretrained.state_dict()
    assert state['head.1.weight'].shape == (7, 64)
    assert not state['head.1.weight'].any() and not state['head.1.bias'].any()
    assert state['pos_embedding'].shape == (1, 1 + 16, 64)
    for name, value in state.items():
        if not name.startswith('head.1.') and name != 'pos_embedding':
            assert torch.equal(value, old[name]), name
    model = jax_lib.ViT(96, 16, 64, 128, 4, 2, 0.0, 0.0, use_bias=True)
    params = jax_lib.params_from_torch(pretrained)['params']
    jax_start, jax_params = model.with_num_classes(params, 7)
    jax_start, jax_params = jax_start.with_img_size(jax_params, 64)
    assert (jax_start.num_classes, jax_start.img_size) == (7, 64)
    expected = jax_lib.params_from_torch(start)['params']
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
                 jax.device_get(jax_params), expected)


def test_fine_tuned_logits_are_the_same_in_both_tabs():
    """The fine-tuning model of the page (a TunedViT with the pretrained
    weights, new head and size), its head made non-zero as after training:
    the same weights give the same logits in PyTorch and in JAX."""
    start = small_torch_vit().with_num_classes(7).with_img_size(64)
    torch_model = torch_lib.TunedViT(**dict(start.hparams, lr=3e-4), adamw=True)
    torch_model.load_state_dict(start.state_dict())
    randomize(torch_model, seed=1)
    jax_model = jax_lib.TunedViT(**dict(start.hparams, lr=3e-4), adamw=True)
    X = images((4, 1, 64, 64))
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(X)).numpy()
    got = jax_model.apply(jax_lib.params_from_torch(torch_model), X.transpose(0, 2, 3, 1))
    assert np.abs(expected).max() > 0.1  # the head is not zero any more
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-4, rtol=1e-4)


def test_fold_normalization_takes_pixels_in_unit_range():
    """A model that expects (x - 0.5) / 0.5, folded, gives on x what it gave
    on (x - 0.5) / 0.5, in both tabs."""
    model = small_torch_vit()
    # A copy: some arrays share memory with the model, which folds in place
    params = jax.tree.map(np.array, jax_lib.params_from_torch(model)['params'])
    X = images((2, 1, 96, 96))
    with torch.no_grad():
        expected = model(torch.from_numpy((X - 0.5) / 0.5)).numpy()
        got = torch_lib.fold_normalization(model)(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    jax_model = jax_lib.ViT(96, 16, 64, 128, 4, 2, 0.0, 0.0, use_bias=True)
    jax_got = jax_model.apply({'params': jax_lib.fold_normalization(params)},
                              X.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(jax_got), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('lib', [torch_lib, jax_lib], ids=['pytorch', 'jax'])
def test_offline_download_says_so_in_one_line(lib, capsys, monkeypatch):
    """The offline switch stops the download before it starts; a download
    that fails is reported in one line too; both give None."""
    def download():
        raise AssertionError('must not be called offline')
    assert lib.try_download('a checkpoint', download, 'https://example.org/x') is None
    assert capsys.readouterr().out.count('\n') == 1
    monkeypatch.setenv('D2L_VIT_OFFLINE', '0')
    from d2l_extras.data import download as download_module
    monkeypatch.setattr(download_module, '_open_with_deadline',
                        lambda url, timeout: io.BytesIO())

    def failing():
        raise download_module.DownloadError('no route to host')
    assert lib.try_download('a checkpoint', failing, 'https://example.org/x') is None
    line = capsys.readouterr().out
    assert line.count('\n') == 1 and 'no route to host' in line


@pytest.mark.parametrize('lib', [torch_lib, jax_lib], ids=['pytorch', 'jax'])
def test_uci_digits_need_no_download(lib, capsys):
    data = lib.UCIDigits(batch_size=64, resize=(64, 64))
    X, y = next(iter(data.val_dataloader()))
    shape = (64, 1, 64, 64) if lib is torch_lib else (64, 64, 64, 1)
    assert tuple(X.shape) == shape and data.num_classes == 10
    assert (len(data.arrays.train_labels), len(data.arrays.val_labels)) == (1413, 384)
    assert data.arrays.name == 'UCI digits'
    assert 'UCI digits from scikit-learn' in capsys.readouterr().out


@pytest.mark.parametrize('framework', ['pytorch', 'jax'])
def test_the_reference_runs_show_what_the_discussion_says(framework):
    """Ahead after the first epoch, and at the end higher accuracy, lower loss,
    by one or two points: the Discussion's claims about the recorded runs."""
    fine, scratch = (reference_runs.read_record('fine-tuning', f'{name} on UCI digits',
                                                framework)
                     for name in ('fine-tuned', 'from scratch'))
    assert fine and scratch, f'the {framework} reference runs of fine-tuning are not committed'
    assert fine['dataset'] == scratch['dataset'] == {
        'name': 'UCI digits', 'num_train': 1413, 'num_val': 384}
    assert len(fine['history']['epoch']) == len(scratch['history']['epoch']) == 20
    (f_acc, f_loss), (s_acc, s_loss) = ((r['history']['val_acc'], r['history']['val_loss'])
                                        for r in (fine, scratch))
    assert f_acc[0] > s_acc[0] and f_loss[-1] < s_loss[-1]
    assert 0.01 <= f_acc[-1] - s_acc[-1] < 0.03
