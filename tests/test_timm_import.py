"""timm's VisionTransformer and the chapter's ViT are the same network.

vit_from_timm copies a timm model into the chapter's PyTorch ViT and both give
the same logits; params_from_torch takes the weights on to JAX and
params_to_torch back again, unchanged. Every timm option that the chapter's
model cannot express is refused with an error that names it.
"""
from functools import partial

import jax
import numpy as np
import pytest
import timm
import torch
from jax import numpy as jnp
from timm.layers import RmsNorm, SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

TIMM_CONFIGS = [
    # img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, global_pool
    (8, 2, 3, 40, 4, 5, 1.6, True, 'token'),  # patch 2, 5 heads of width 8, depth 4
    (8, 2, 3, 40, 4, 5, 1.6, False, 'avg'),
    (32, 16, 1, 30, 2, 6, 2.0, False, 'token'),  # patch 16, 6 heads of width 5
    (32, 16, 1, 30, 2, 6, 2.0, True, 'avg'),
    (32, 4, 3, 48, 1, 3, 4.0, True, 'avg'),  # 3 heads of width 16, depth 1
    (28, 4, 1, 36, 3, 4, 0.5, False, 'token'),  # an MLP narrower than the width, depth 3
    ((16, 24), 4, 3, 32, 2, 2, 4.0, True, 'token'),  # rectangular images
]


def timm_vit(config=TIMM_CONFIGS[0], **options):
    """A small timm ViT with every parameter perturbed, so that no zero or
    one initialization (biases, class token, LayerNorm scales) hides a
    mismatch."""
    img_size, patch_size, in_chans, dim, depth, heads, mlp_ratio, qkv_bias, pool = config
    kwargs = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=dim,
                  depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  global_pool=pool, num_classes=7)
    if pool == 'avg':
        kwargs['class_token'] = False  # what the chapter's pool='mean' is
    torch.manual_seed(0)  # timm initializes from the global generator: whatever ran before
    model = VisionTransformer(**dict(kwargs, **options))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def images(config, batch_size=3):
    img_size, in_chans = config[0], config[2]
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    return torch.rand(batch_size, in_chans, height, width, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize('config', TIMM_CONFIGS)
def test_timm_and_the_converted_vit_give_the_same_logits(config):
    timm_model = timm_vit(config)
    ours = torch_lib.vit_from_timm(timm_model)
    assert isinstance(ours, torch_lib.ViT) and not ours.training
    assert ours.pool == ('cls' if config[8] == 'token' else 'mean')
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in timm_model.parameters())
    X = images(config)
    with torch.no_grad():
        expected, logits = timm_model(X).numpy(), ours(X).numpy()
    assert logits.shape == (3, 7)
    assert np.abs(logits - expected).max() < 1e-5
    assert np.abs(expected).max() > 0.5  # a real signal, not two zero outputs


@pytest.mark.parametrize('config', TIMM_CONFIGS)
def test_timm_weights_go_on_to_jax_and_back_unchanged(config):
    ours = torch_lib.vit_from_timm(timm_vit(config))
    jax_model = jax_lib.ViT(**ours.hparams)  # the same configuration
    variables = jax_lib.params_from_torch(ours)
    X = images(config)
    with torch.no_grad():
        expected = ours(X).numpy()
    logits = np.asarray(jax.jit(jax_model.apply)(variables, jnp.asarray(X.numpy().transpose(0, 2, 3, 1))))
    assert np.abs(logits - expected).max() < 1e-5
    back = jax_lib.params_to_torch(variables, torch_lib.ViT(**ours.hparams))
    for (name, a), (_, b) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_named_timm_model_converts():
    timm_model = timm.create_model('vit_tiny_patch16_224', pretrained=False, img_size=64).eval()
    ours = torch_lib.vit_from_timm(timm_model)
    assert (ours.num_hiddens, ours.num_heads, ours.num_blks) == (192, 3, 12)
    X = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert np.abs(ours(X).numpy() - timm_model(X).numpy()).max() < 1e-5


def test_training_only_settings_are_not_copied_and_the_mode_is():
    timm_model = timm_vit(drop_rate=0.3, attn_drop_rate=0.3, drop_path_rate=0.3)
    ours = torch_lib.vit_from_timm(timm_model.train(), emb_dropout=0.2, blk_dropout=0.1)
    assert ours.training
    assert (ours.emb_dropout, ours.blk_dropout) == (0.2, 0.1)
    X = images(TIMM_CONFIGS[0])
    with torch.no_grad():
        assert np.abs(ours.eval()(X).numpy() - timm_model.eval()(X).numpy()).max() < 1e-5


def _class_token_without_a_class_token():
    # timm refuses this combination itself when building, so break a model afterwards
    model = timm_vit(TIMM_CONFIGS[1])
    model.global_pool = 'token'
    return model


def _extra_head_layers():
    model = timm_vit()
    model.head = nn.Sequential(nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 7))
    return model


REFUSED = [
    # (what the error names, how to build such a timm model)
    ('qk_norm=True', lambda: timm_vit(qk_norm=True)),
    ('init_values (LayerScale)', lambda: timm_vit(init_values=1e-5)),
    ('reg_tokens=4', lambda: timm_vit(reg_tokens=4)),
    ('no_embed_class=True', lambda: timm_vit(no_embed_class=True)),
    ('pre_norm=True', lambda: timm_vit(pre_norm=True)),
    ('proj_bias=False', lambda: timm_vit(proj_bias=False)),
    ("global_pool='map'", lambda: timm_vit(global_pool='map')),
    ("global_pool='max'", lambda: timm_vit(TIMM_CONFIGS[1], global_pool='max')),
    ("global_pool='avg' with class_token=True", lambda: timm_vit(TIMM_CONFIGS[1], class_token=True)),
    ("global_pool='avg' without fc_norm", lambda: timm_vit(TIMM_CONFIGS[1], fc_norm=False)),
    ("class_token=False and global_pool='token'", _class_token_without_a_class_token),
    ('act_layer=GELUTanh', lambda: timm_vit(act_layer='gelu_tanh')),
    ('act_layer=ReLU', lambda: timm_vit(act_layer=nn.ReLU)),
    ('norm_layer=RmsNorm', lambda: timm_vit(norm_layer=RmsNorm)),
    ('LayerNorm eps=1e-05', lambda: timm_vit(norm_layer=partial(nn.LayerNorm, eps=1e-5))),
    ('dynamic_img_size=True', lambda: timm_vit(dynamic_img_size=True)),
    ('num_classes=0', lambda: timm_vit(num_classes=0)),
    ('a head of type Sequential', _extra_head_layers),
    ('final_norm=False', lambda: timm_vit(final_norm=False)),
    ("pos_embed='none'", lambda: timm_vit(pos_embed='none')),
    ('embed_norm_layer', lambda: timm_vit(embed_norm_layer='layernorm')),
    ('scale_attn_norm=True', lambda: timm_vit(scale_attn_norm=True)),
    ('scale_mlp_norm=True', lambda: timm_vit(scale_mlp_norm=True)),
    ('mlp_layer=GluMlp', lambda: timm_vit(mlp_layer=SwiGLUPacked, act_layer='silu')),
]


@pytest.mark.parametrize('option, build', REFUSED, ids=[option for option, _ in REFUSED])
def test_a_timm_option_our_vit_cannot_express_is_refused_by_name(option, build):
    timm_model = build()
    with pytest.raises(ValueError) as error:
        torch_lib.vit_from_timm(timm_model)
    message = str(error.value)
    assert f'cannot convert a timm VisionTransformer with {option}:' in message
    assert 'Build the timm model with' in message  # and says what to do instead


def test_a_timm_model_that_is_not_a_plain_vision_transformer_is_refused():
    distilled = timm.create_model('deit_tiny_distilled_patch16_224', pretrained=False, img_size=32,
                                  patch_size=16)
    with pytest.raises(ValueError, match='expected a timm VisionTransformer, got VisionTransformerDistilled'):
        torch_lib.vit_from_timm(distilled)
