"""Parameters from one library into another.

``from_timm``: a timm ``VisionTransformer`` into the chapter's PyTorch ``ViT``;
``torch_flax``: the chapter's PyTorch models into the Flax ones and back.
"""
