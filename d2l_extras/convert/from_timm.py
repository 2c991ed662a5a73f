"""Build the chapter's PyTorch ViT from a timm ``VisionTransformer``, weights included.

timm's ViT and the chapter's are the same network under other names: timm's
``blocks.0.attn.qkv`` is our ``blks.0.attention.qkv``, its ``mlp.fc1`` our
``mlp.dense1``, and so on, with the same tensor layouts. timm offers many
options beyond the ViT paper's model (LayerScale, register tokens, query/key
normalization, attention pooling, ...). The chapter's model has none of them,
so a timm model that uses one is refused with a ValueError that names the
option, instead of being converted into a model that computes something else.
"""
from torch import nn

# What the chapter's ViT fixes and timm leaves open: the layer norms' epsilon.
LAYER_NORM_EPS = 1e-6


def _refuse(option, why, fix):
    raise ValueError(f'cannot convert a timm VisionTransformer with {option}: {why}. {fix}')


def _check_layer_norm(norm, where):
    from timm.layers import LayerNorm as TimmLayerNorm

    if type(norm) not in (nn.LayerNorm, TimmLayerNorm):
        _refuse(f'norm_layer={type(norm).__name__}', f"its {where} is not a LayerNorm, "
                "which the chapter's ViT uses everywhere",
                'Build the timm model with the default norm_layer.')
    if norm.eps != LAYER_NORM_EPS:
        _refuse(f'LayerNorm eps={norm.eps}', f"the chapter's ViT uses eps={LAYER_NORM_EPS} "
                f'(in {where} too)', "Build the timm model with timm's default LayerNorm.")
    if norm.weight is None or norm.bias is None:
        _refuse('a LayerNorm without scale or shift', f"the chapter's ViT has both (in "
                f'{where} too)', "Build the timm model with timm's default LayerNorm.")


def _check_block(i, block, num_hiddens):
    from timm.layers import Attention, Mlp
    from timm.layers.activations import GELU as TimmGELU
    from timm.models.vision_transformer import Block

    if type(block) is not Block:
        _refuse(f'block_fn={type(block).__name__}', "the chapter's encoder block is timm's "
                'pre-normalization Block', 'Build the timm model with the default block_fn.')
    attn, mlp = block.attn, block.mlp
    if type(attn) is not Attention:
        _refuse(f'attn_layer={type(attn).__name__}', "the chapter's attention is timm's "
                'Attention', 'Build the timm model with the default attn_layer.')
    if not (isinstance(attn.q_norm, nn.Identity) and isinstance(attn.k_norm, nn.Identity)):
        _refuse('qk_norm=True', "the chapter's attention does not normalize queries and keys",
                'Build the timm model with qk_norm=False.')
    if not isinstance(attn.norm, nn.Identity):
        _refuse('scale_attn_norm=True', "the chapter's attention does not normalize its "
                'output', 'Build the timm model with scale_attn_norm=False.')
    if getattr(attn, 'gate', None) is not None:
        _refuse('gated attention', "the chapter's attention has no output gate",
                'Build the timm model without gating.')
    if attn.num_heads * attn.head_dim != num_hiddens:
        _refuse(f'attn_head_dim={attn.head_dim}', f'{attn.num_heads} heads of width '
                f'{attn.head_dim} do not split the width {num_hiddens}; the chapter\'s '
                'heads always do', 'Build the timm model without attn_head_dim.')
    if not (isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)):
        _refuse('init_values (LayerScale)', "the chapter's block has no LayerScale",
                'Build the timm model with init_values=None.')
    if type(mlp) is not Mlp or not isinstance(mlp.fc1, nn.Linear):
        _refuse(f'mlp_layer={type(mlp).__name__}', "the chapter's MLP is timm's Mlp with "
                'linear layers', 'Build the timm model with the default mlp_layer.')
    if attn.proj.bias is None or mlp.fc1.bias is None or mlp.fc2.bias is None:
        _refuse('proj_bias=False', "the chapter's output projection and MLP layers "
                'always have biases', 'Build the timm model with proj_bias=True.')
    if not isinstance(mlp.norm, nn.Identity):
        _refuse('scale_mlp_norm=True', "the chapter's MLP has no normalization inside",
                'Build the timm model with scale_mlp_norm=False.')
    exact_gelu = (type(mlp.act) is TimmGELU or
                  (type(mlp.act) is nn.GELU and mlp.act.approximate == 'none'))
    if not exact_gelu:
        _refuse(f'act_layer={type(mlp.act).__name__}', "the chapter's MLP uses the exact "
                'GELU', "Build the timm model with act_layer='gelu' (the default).")
    _check_layer_norm(block.norm1, f'blocks.{i}.norm1')
    _check_layer_norm(block.norm2, f'blocks.{i}.norm2')


def _check_model(m):
    """Refuse every timm option that the chapter's ViT cannot express; return
    the chapter's pool ('cls' or 'mean') and the name of timm's final norm."""
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    if type(m) is not VisionTransformer:
        raise ValueError(f'expected a timm VisionTransformer, got {type(m).__name__}: '
                         'its subclasses (distilled, hybrid, ...) compute something else. '
                         "Create the model with timm.create_model('vit_...').")
    if m.dynamic_img_size:
        _refuse('dynamic_img_size=True', "the chapter's ViT is built for one image size",
                'Build the timm model with dynamic_img_size=False; change the size '
                'afterwards with ViT.with_img_size.')
    embed = m.patch_embed
    if type(embed) is not PatchEmbed:
        _refuse(f'embed_layer={type(embed).__name__}', "the chapter's patch embedding is "
                "timm's PatchEmbed", 'Build the timm model with the default embed_layer.')
    if embed.dynamic_img_pad:
        _refuse('dynamic_img_pad=True', "the chapter's ViT never pads images",
                'Build the timm model with dynamic_img_pad=False.')
    if not isinstance(m.norm_pre, nn.Identity):
        _refuse('pre_norm=True', "the chapter's ViT has no LayerNorm before the blocks "
                '(nor a patch embedding without bias)', 'Build the timm model with '
                'pre_norm=False.')
    if not isinstance(embed.norm, nn.Identity):
        _refuse('embed_norm_layer', "the chapter's patch embedding is not normalized",
                'Build the timm model without embed_norm_layer.')
    if embed.proj.bias is None:
        _refuse('a patch embedding without bias', "the chapter's patch embedding has a bias",
                'Build the timm model with the default patch embedding.')
    if m.reg_token is not None:
        _refuse(f'reg_tokens={m.num_reg_tokens}', "the chapter's ViT has no register tokens",
                'Build the timm model with reg_tokens=0.')
    if m.no_embed_class:
        _refuse('no_embed_class=True', "the chapter's class token has a position embedding",
                'Build the timm model with no_embed_class=False.')
    if m.pos_embed is None:
        _refuse("pos_embed='none'", "the chapter's ViT has learned position embeddings",
                "Build the timm model with pos_embed='learn'.")
    if m.attn_pool is not None or m.global_pool not in ('token', 'avg'):
        _refuse(f'global_pool={m.global_pool!r}', "the chapter's ViT pools with the class "
                "token (global_pool='token') or the mean of the patches (global_pool='avg')",
                "Build the timm model with global_pool='token' or 'avg'.")
    final_norms = {name: norm for name, norm in (('norm', m.norm), ('fc_norm', m.fc_norm))
                   if not isinstance(norm, nn.Identity)}
    if not final_norms:
        _refuse('final_norm=False', "the chapter's head starts with a LayerNorm",
                'Build the timm model with final_norm=True.')
    if m.global_pool == 'token':
        if not m.has_class_token:
            _refuse("class_token=False and global_pool='token'", 'there is no class token '
                    'to pool', "Build the timm model with class_token=True or global_pool='avg'.")
        pool = 'cls'
    else:
        if m.has_class_token:
            _refuse("global_pool='avg' with class_token=True", 'timm averages the patches '
                    'while its class token still takes part in attention, but the chapter\'s '
                    "pool='mean' has no class token", 'Build the timm model with '
                    'class_token=False.')
        if 'fc_norm' not in final_norms:
            _refuse("global_pool='avg' without fc_norm", "the chapter's pool='mean' "
                    'normalizes the mean of the patches (timm: fc_norm), not each patch '
                    'before averaging', 'Build the timm model with fc_norm=None (the '
                    "default for 'avg') or True.")
        pool = 'mean'
    (norm_name, norm), = final_norms.items()  # timm has at most one of the two
    _check_layer_norm(norm, norm_name)
    if isinstance(m.head, nn.Identity):
        _refuse('num_classes=0', "the chapter's ViT ends in a linear classification head",
                'Build the timm model with num_classes >= 1.')
    if not isinstance(m.head, nn.Linear):
        _refuse(f'a head of type {type(m.head).__name__}', "the chapter's head is one "
                'linear layer', 'Build the timm model with its default head (no layers '
                'added to it).')
    if m.head.bias is None:
        _refuse('a head without bias', "the chapter's head has a bias",
                'Build the timm model with the default head.')
    for i, block in enumerate(m.blocks):
        _check_block(i, block, m.embed_dim)
    heads = {block.attn.num_heads for block in m.blocks}
    mlp_widths = {block.mlp.fc1.out_features for block in m.blocks}
    qkv_biases = {block.attn.qkv.bias is not None for block in m.blocks}
    if len(m.blocks) == 0 or len(heads) * len(mlp_widths) * len(qkv_biases) != 1:
        raise ValueError('the chapter\'s ViT needs at least one block and the same heads, '
                         f'MLP width and qkv bias in every block; got {len(m.blocks)} blocks '
                         f'with heads {heads}, MLP widths {mlp_widths}, qkv biases {qkv_biases}')
    return pool, norm_name


def _state_name(name, norm_name):
    """The timm state-dict name of one of our parameters."""
    renames = [('patch_embedding.conv.', 'patch_embed.proj.'), ('pos_embedding', 'pos_embed'),
               ('head.0.', f'{norm_name}.'), ('head.1.', 'head.'), ('blks.', 'blocks.'),
               ('.ln1.', '.norm1.'), ('.ln2.', '.norm2.'), ('.attention.', '.attn.'),
               ('.mlp.dense1.', '.mlp.fc1.'), ('.mlp.dense2.', '.mlp.fc2.')]
    for ours, theirs in renames:
        name = name.replace(ours, theirs)
    return name


def _size(pair):
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def vit_from_timm(timm_model, emb_dropout=0.0, blk_dropout=0.0, lr=0.1):
    """Return the chapter's PyTorch ``ViT`` computing what ``timm_model`` computes.

    ``timm_model`` is a ``timm.models.vision_transformer.VisionTransformer`` of
    any image size, patch size, number of channels, depth, width, heads and MLP
    width, with or without qkv bias, pooling with the class token
    (``global_pool='token'``) or with the mean of the patches
    (``global_pool='avg'``, ``class_token=False``). Every weight is copied, so
    both models give the same logits in eval mode. Options the chapter's model
    cannot express raise a ValueError that names them.

    Dropout, stochastic depth and patch dropout act only in training and are
    not copied: the new model uses ``emb_dropout`` and ``blk_dropout`` (0 by
    default, like timm's rates). It is on the device of ``timm_model``, in
    float32, in the same train/eval mode.
    """
    from d2l_extras.torch import ViT  # defined below the WARNING marker there

    pool, norm_name = _check_model(timm_model)
    embed, block = timm_model.patch_embed, timm_model.blocks[0]
    model = ViT(_size(embed.img_size), _size(embed.patch_size), timm_model.embed_dim,
                block.mlp.fc1.out_features, block.attn.num_heads, len(timm_model.blocks),
                emb_dropout, blk_dropout, lr, use_bias=block.attn.qkv.bias is not None,
                num_classes=timm_model.head.out_features,
                num_channels=embed.proj.in_channels, pool=pool)
    timm_state = timm_model.state_dict()
    state, used = {}, set()
    for name, ours in model.state_dict().items():
        timm_name = _state_name(name, norm_name)
        if timm_name not in timm_state or timm_state[timm_name].shape != ours.shape:
            raise ValueError(f'the timm model has no parameter {timm_name} of shape '
                             f'{tuple(ours.shape)} for our {name}: unknown timm layout')
        state[name] = timm_state[timm_name].detach().float().cpu()
        used.add(timm_name)
    if set(timm_state) - used:
        raise ValueError(f'the chapter\'s ViT has no place for the timm parameters '
                         f'{sorted(set(timm_state) - used)}: an option it cannot express')
    model.load_state_dict(state)
    return model.to(timm_model.head.weight.device).train(timm_model.training)
