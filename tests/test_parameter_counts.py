"""The section's parameter counts: the paper's three sizes, built from the
chapter's model in both frameworks, have exactly as many parameters as timm's
models of the same names, and the numbers the text quotes are right."""
import jax
import pytest
import timm
import torch
from jax import numpy as jnp

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

SIZES = {  # patch_size, num_hiddens, mlp_num_hiddens, num_heads, num_blks
    'ViT-B/16': (16, 768, 3072, 12, 12), 'ViT-L/16': (16, 1024, 4096, 16, 24),
    'ViT-H/14': (14, 1280, 5120, 16, 32)}
TIMM_NAMES = {'ViT-B/16': 'vit_base_patch16_224', 'ViT-L/16': 'vit_large_patch16_224',
              'ViT-H/14': 'vit_huge_patch14_224'}
PAPER_MILLIONS = {'ViT-B/16': 86, 'ViT-L/16': 307, 'ViT-H/14': 632}


def count_torch(size, img_size=224, num_classes=1000):
    with torch.device('meta'):  # shapes only, as in the section
        model = torch_lib.ViT(img_size, *size, 0, 0, use_bias=True, num_classes=num_classes,
                              num_channels=3)
    return sum(p.numel() for p in model.parameters())


def count_jax(size, img_size=224, num_classes=1000):
    model = jax_lib.ViT(img_size, *size, 0, 0, use_bias=True, num_classes=num_classes,
                        num_channels=3)
    images = jax.ShapeDtypeStruct((1, img_size, img_size, 3), jnp.float32)
    return sum(p.size for p in jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0), images)))


@pytest.mark.parametrize('name', SIZES)
def test_both_tabs_count_exactly_the_parameters_of_timms_model(name):
    with torch.device('meta'):
        timm_model = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=1000)
    expected = sum(p.numel() for p in timm_model.parameters())
    assert count_torch(SIZES[name]) == expected
    assert count_jax(SIZES[name]) == expected


def test_the_counts_the_text_quotes():
    assert count_torch(SIZES['ViT-B/16']) == 86_567_656  # timm's vit_base_patch16_224
    millions = {name: count_torch(size) / 1e6 for name, size in SIZES.items()}
    assert {name: round(m, 1) for name, m in millions.items()} == {
        'ViT-B/16': 86.6, 'ViT-L/16': 304.3, 'ViT-H/14': 632.0}
    # "ViT-B and ViT-H match the paper's figures cut to whole millions"; ViT-L does not
    for name in ('ViT-B/16', 'ViT-H/14'):
        assert int(millions[name]) == PAPER_MILLIONS[name]
    assert int(millions['ViT-L/16']) != PAPER_MILLIONS['ViT-L/16']


def test_the_papers_307m_for_vit_l_is_the_count_of_vit_l32():
    size = (32,) + SIZES['ViT-L/16'][1:]
    count = count_torch(size)
    assert count == 306_535_400 == count_jax(size)
    assert round(count / 1e6) == PAPER_MILLIONS['ViT-L/16']
    # "its ViT-B figure, 86M, is ViT-B/16's 86.6M cut, not rounded"
    assert round(count_torch(SIZES['ViT-B/16']) / 1e6) != PAPER_MILLIONS['ViT-B/16']
