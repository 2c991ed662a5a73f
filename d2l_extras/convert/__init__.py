"""Parameters from one library into another.

``from_timm``: a timm ``VisionTransformer`` into the chapter's PyTorch ``ViT``;
``from_npz``: the ViT paper's (and big_vision's) ``.npz`` checkpoints into the
chapter's Flax ``ViT``, with NumPy alone;
``torch_flax``: the chapter's PyTorch models into the Flax ones and back.
"""
