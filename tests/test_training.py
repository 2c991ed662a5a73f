"""Training in quick mode on the offline stand-in learns, in both tabs.

These run the section's model and settings exactly as its training cell does.
"""
import torch
from d2l import torch as d2l

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

SECTION = dict(img_size=96, patch_size=16, num_hiddens=512, mlp_num_hiddens=2048,
               num_heads=8, num_blks=2, emb_dropout=0.1, blk_dropout=0.1, lr=0.1)
CHANCE = 0.1


def curves(model):
    return {name: [float(point[1]) for point in points]
            for name, points in model.board.data.items()}


def test_pytorch_vit_learns_in_quick_mode():
    torch.manual_seed(0)
    model = torch_lib.ViT(**SECTION)
    model.board.display = False
    run = torch_lib.run_size(max_epochs=10)
    data = torch_lib.FashionMNIST(batch_size=128, resize=(96, 96),
                                  num_train=run.num_train, num_val=run.num_val)
    assert data.arrays.name.startswith('UCI digits')
    trainer = d2l.Trainer(max_epochs=run.max_epochs, gradient_clip_val=1)
    trainer.fit(model, data)
    loss = curves(model)['train_loss']
    assert loss[-1] < 0.8 * loss[0]
    assert torch_lib.evaluate_accuracy(model, data) > 3 * CHANCE


def test_jax_vit_learns_in_quick_mode():
    import jax
    model = jax_lib.ViT(**SECTION)
    model.board.display = False
    run = jax_lib.run_size(max_epochs=10)
    data = jax_lib.FashionMNIST(batch_size=128, resize=(96, 96),
                                num_train=run.num_train, num_val=run.num_val)
    trainer = jax_lib.Trainer(max_epochs=run.max_epochs, gradient_clip_val=1)
    trainer.fit(model, data, key=jax.random.key(0))
    history = curves(model)
    assert history['train_loss'][-1] < 0.8 * history['train_loss'][0]
    assert history['val_acc'][-1] > 3 * CHANCE
    assert jax_lib.evaluate_accuracy(model, trainer.state.params, data) > 3 * CHANCE

