"""DeiT's student (chapter_vit/deit.md): a distillation token, two heads, hard
and soft distillation from a CNN teacher, in both tabs.

Claims: the losses are the paper's formulas (checked by hand and in closed
form, with the teacher's own predictions as targets); the two tabs compute the
same logits for the same weights and the same losses for the same logits;
weights convert both ways; the teacher is never trained and, in JAX, reaches
the compiled step as an argument; bad settings are refused with a message
that says what to pass.
"""
import math

import jax
import numpy as np
import pytest
import torch
from jax import numpy as jnp
from torch.nn import functional as F

from d2l_extras import jax as jax_lib
from d2l_extras import torch as torch_lib

from helpers import LIBS, TAB_IDS, randomize

# img_size, patch_size, num_hiddens, mlp_num_hiddens, num_heads, num_blks,
# emb_dropout, blk_dropout: a small student, 16 patches, 2 blocks
SMALL = (32, 8, 24, 48, 3, 2, 0.1, 0.1)
KINDS = ['none', 'hard', 'soft']


def random_logits(seed, shape=(6, 5)):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32) * 2


def numpy_cross_entropy(logits, labels):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels].mean()


def both_losses(class_logits, dist_logits, labels, teacher_logits, *args, **kwargs):
    """The loss of each tab for the same NumPy inputs."""
    torch_loss = torch_lib.distillation_loss(
        *(torch.from_numpy(a) for a in (class_logits, dist_logits, labels, teacher_logits)),
        *args, **kwargs)
    jax_loss = jax_lib.distillation_loss(
        *(jnp.asarray(a) for a in (class_logits, dist_logits, labels, teacher_logits)),
        *args, **kwargs)
    return float(torch_loss), float(jax_loss)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_hard_distillation_is_half_cross_entropy_with_labels_and_half_with_the_teacher(lib):
    class_logits, dist_logits, teacher_logits = (random_logits(seed) for seed in (0, 1, 2))
    labels = np.array([0, 1, 2, 3, 4, 0])
    teacher_decisions = teacher_logits.argmax(1)
    assert (teacher_decisions != labels).any()  # the two targets differ
    expected = (numpy_cross_entropy(class_logits, labels) +
                numpy_cross_entropy(dist_logits, teacher_decisions)) / 2
    convert = torch.from_numpy if lib is torch_lib else jnp.asarray
    loss = lib.distillation_loss(*map(convert, (class_logits, dist_logits, labels, teacher_logits)),
                                 'hard')
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # With the teacher's own predictions as the labels, hard distillation is
    # training both heads on the labels
    targets = convert(teacher_decisions)
    same = [lib.distillation_loss(*map(convert, (class_logits, dist_logits)), targets,
                                  convert(teacher_logits), kind) for kind in ('hard', 'none')]
    assert float(same[0]) == pytest.approx(float(same[1]), rel=1e-6)


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_soft_distillation_matches_its_formula(lib):
    convert = torch.from_numpy if lib is torch_lib else jnp.asarray
    labels = convert(np.array([0]))
    zeros = convert(np.zeros((1, 2), np.float32))
    # Teacher logits (2 log 3, 0) at tau = 2 give (3/4, 1/4); a student at zero
    # gives (1/2, 1/2): KL = 3/4 log(3/2) + 1/4 log(1/2), times tau^2 = 4
    teacher = convert(np.array([[2 * math.log(3), 0.0]], np.float32))
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = lib.distillation_loss(zeros, zeros, labels, teacher, 'soft', temperature=2.0,
                                 teacher_weight=0.5)
    assert float(loss) == pytest.approx(0.5 * math.log(2) + 0.5 * 4 * kl, rel=1e-5)
    assert float(loss) == pytest.approx(0.608198, abs=1e-6)
    # The distillation head predicting the teacher's logits: the KL term is 0
    loss = lib.distillation_loss(zeros, teacher, labels, teacher, 'soft', temperature=2.0,
                                 teacher_weight=0.25)
    assert float(loss) == pytest.approx(0.75 * math.log(2), rel=1e-6)


@pytest.mark.parametrize('distillation, temperature, teacher_weight',
                         [('none', 1.0, 0.5), ('hard', 1.0, 0.5), ('hard', 3.0, 0.3),
                          ('soft', 1.0, 0.5), ('soft', 3.0, 0.1), ('soft', 0.5, 1.0)])
def test_both_tabs_compute_the_same_losses(distillation, temperature, teacher_weight):
    inputs = [random_logits(seed) for seed in (3, 4)] + [np.array([4, 3, 2, 1, 0, 4]),
                                                          random_logits(5)]
    torch_loss, jax_loss = both_losses(*inputs, distillation, temperature, teacher_weight)
    assert torch_loss == pytest.approx(jax_loss, rel=1e-5)
    assert torch_loss > 0.1


def test_no_gradient_reaches_the_teacher():
    class_logits, dist_logits, teacher_logits = (
        torch.tensor(random_logits(seed), requires_grad=True) for seed in (6, 7, 8))
    labels = torch.arange(6) % 5
    for kind in KINDS:
        torch_lib.distillation_loss(class_logits, dist_logits, labels, teacher_logits,
                                    kind).backward()
        assert teacher_logits.grad is None, kind
        assert dist_logits.grad.abs().sum() > 0, kind
    for kind in KINDS:
        grad = jax.grad(lambda teacher: jax_lib.distillation_loss(
            jnp.asarray(class_logits.detach()), jnp.asarray(dist_logits.detach()),
            jnp.asarray(labels), teacher, kind), argnums=0)(jnp.asarray(teacher_logits.detach()))
        assert not np.asarray(grad).any(), kind


@pytest.mark.parametrize('lib', LIBS, ids=TAB_IDS)
def test_the_average_of_the_heads_is_the_mean_of_their_softmax_outputs(lib):
    a, b = random_logits(9), random_logits(10)
    convert = torch.from_numpy if lib is torch_lib else jnp.asarray
    averaged = np.asarray(lib.average_heads(convert(a), convert(b)))
    softmax = lambda z: np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax(averaged), (softmax(a) + softmax(b)) / 2, atol=1e-6)
    np.testing.assert_allclose(np.exp(averaged).sum(-1), 1, atol=1e-5)  # log-probabilities


def torch_student(**kwargs):
    torch.manual_seed(0)
    return torch_lib.DistillationViT(*SMALL, **kwargs)


def nhwc(X):
    return jnp.asarray(X.numpy().transpose(0, 2, 3, 1))


def test_pytorch_and_jax_students_give_the_same_logits_on_both_heads():
    torch_model = randomize(torch_student(), scale=0.3)
    jax_model = jax_lib.DistillationViT(*SMALL)
    X = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        expected = [Y.numpy() for Y in torch_model.heads(X)] + [torch_model(X).numpy()]
    variables = jax_lib.params_from_torch(torch_model)
    heads = jax_model.apply(variables, nhwc(X), method='heads')
    logits = [*heads, jax_model.apply(variables, nhwc(X))]
    for name, got, want in zip(['class head', 'distillation head', 'average'], logits, expected):
        assert np.abs(np.asarray(got) - want).max() < 1e-5, name
    assert np.abs(expected[0] - expected[1]).max() > 0.1  # the heads differ
    # The token outputs block by block agree too
    with torch.no_grad():
        torch_tokens = [Z.numpy() for Z in torch_model.encode(X)]
    jax_tokens = jax_model.apply(variables, nhwc(X), method='encode')
    assert len(torch_tokens) == len(jax_tokens) == 3
    for got, want in zip(jax_tokens, torch_tokens):
        assert np.abs(np.asarray(got) - want).max() < 1e-5


def test_student_weights_convert_both_ways_with_exactly_the_flax_structure():
    source = randomize(torch_student(), scale=0.3)
    variables = jax_lib.params_from_torch(source)
    assert variables['params']['dist_token'].shape == (1, 1, 24)
    assert variables['params']['pos_embedding'].shape == (1, 16 + 2, 24)
    assert variables['params']['head_dist']['kernel'].shape == (24, 10)
    shapes = jax.eval_shape(jax_lib.DistillationViT(*SMALL).init, jax.random.key(0),
                            jnp.zeros((1, 32, 32, 1)))
    shape_of = lambda tree: jax.tree.map(np.shape, tree)
    assert shape_of(variables) == shape_of(shapes)
    target = jax_lib.params_to_torch(variables, torch_student())
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    # A plain ViT has no place for the distillation token
    with pytest.raises(ValueError, match='same configuration'):
        jax_lib.params_to_torch(variables, torch_lib.ViT(*SMALL))


def test_both_tabs_build_the_student_of_the_text():
    """The ViT plus a distillation token, its position embedding and a head;
    zero heads, so that the untrained student starts at the loss log 10."""
    args = (96, 16, 512, 2048, 8, 2, 0.1, 0.1)
    torch_count = sum(p.numel() for p in torch_lib.DistillationViT(*args).parameters())
    vit_count = sum(p.numel() for p in torch_lib.ViT(*args).parameters())
    X = jnp.zeros((1, 96, 96, 1))
    shapes = jax.eval_shape(jax_lib.DistillationViT(*args).init, jax.random.key(0), X)
    assert torch_count == sum(x.size for x in jax.tree.leaves(shapes)) == vit_count + 512 + 512 + 5130
    student = torch_student()
    images, labels = torch.rand(8, 1, 32, 32), torch.arange(8)
    assert student.loss(student(images), labels).item() == pytest.approx(math.log(10))
    # The distillation token starts as DeiT's, N(0, 0.02^2), unlike the class token at 0
    assert 0.01 < torch_lib.DistillationViT(*args).dist_token.std().item() < 0.03


@pytest.mark.parametrize('settings, message', [
    (dict(distillation='medium'), "must be 'hard', 'soft' or 'none'"),
    (dict(distillation='soft', temperature=0.0), 'temperature must be positive'),
    (dict(temperature=-1.0), 'temperature must be positive'),
    (dict(teacher_weight=1.5), 'between 0 and 1'),
])
def test_bad_distillation_settings_are_refused_in_both_tabs(settings, message):
    with pytest.raises(ValueError, match=message):
        torch_lib.DistillationViT(*SMALL, **settings)
    with pytest.raises(ValueError, match=message):
        jax_lib.DistillationViT(*SMALL, **settings)
    arguments = dict(dict(distillation='hard', temperature=3.0, teacher_weight=0.5), **settings)
    logits, labels = random_logits(0), np.zeros(6, np.int64)
    with pytest.raises(ValueError, match=message):
        torch_lib.distillation_loss(*(torch.from_numpy(a) for a in (logits, logits, labels, logits)),
                                    **arguments)
    with pytest.raises(ValueError, match=message):
        jax_lib.distillation_loss(logits, logits, labels, logits, **arguments)


def test_the_student_needs_its_class_token():
    with pytest.raises(ValueError, match="pool must be 'cls'"):
        torch_lib.DistillationViT(*SMALL, pool='mean')
    with pytest.raises(ValueError, match="pool must be 'cls'"):
        jax_lib.DistillationViT(*SMALL, pool='mean').init(jax.random.key(0),
                                                          jnp.zeros((1, 32, 32, 1)))


class TinyData:
    """Two minibatches of random 32x32 images, for both tabs' data modules."""
    def __init__(self, channels_last):
        rng = np.random.default_rng(0)
        self.X = rng.random((16, 32, 32, 1) if channels_last else (16, 1, 32, 32), np.float32)
        self.y = rng.integers(0, 10, 16)
        self.torch = not channels_last

    def batches(self):
        for start in (0, 8):
            X, y = self.X[start:start + 8], self.y[start:start + 8]
            yield (torch.from_numpy(X), torch.from_numpy(y)) if self.torch else (X, y)

    def train_dataloader(self):
        return list(self.batches())

    val_dataloader = train_dataloader


def test_pytorch_training_step_runs_the_teacher_in_eval_mode_and_never_trains_it():
    torch.manual_seed(0)
    teacher = torch_lib.ResNet18(((1, 4), (1, 8)), small_images=True)
    with torch.no_grad():
        teacher.head[-1].weight.normal_()  # the zero head would predict class 0 only
    before = {name: t.clone() for name, t in teacher.state_dict().items()}
    student = torch_student(distillation='soft')
    trainer = torch_lib.DistillationTrainer(teacher, max_epochs=1)
    trainer.fit(student, TinyData(channels_last=False))
    for name, tensor in teacher.state_dict().items():  # weights and BN statistics
        assert torch.equal(tensor, before[name]), name
    assert not teacher.training
    # The training step's loss is the distillation loss of the student's heads
    X, y = next(TinyData(channels_last=False).batches())
    student.eval()  # no dropout, so the step is deterministic
    with torch.no_grad():
        expected = torch_lib.distillation_loss(*student.heads(X), y, teacher(X), 'soft')
        assert student.training_step((X, y)).item() == pytest.approx(expected.item(), rel=1e-6)


def test_jax_train_state_carries_the_teacher_as_an_argument_of_the_compiled_step():
    teacher = jax_lib.ResNet18(((1, 4), (1, 8)), small_images=True)
    X, y = next(TinyData(channels_last=True).batches())
    variables = teacher.init(jax.random.key(1), X[:1])
    variables['params']['head']['kernel'] = jax.random.normal(  # not the zero head
        jax.random.key(2), variables['params']['head']['kernel'].shape)
    student = jax_lib.DistillationViT(*SMALL[:6], 0.0, 0.0, distillation='hard')
    trainer = jax_lib.DistillationTrainer(teacher, variables, max_epochs=1)
    trainer.prepare_model(student)
    state = trainer.init_state(student, jax.random.key(0), (X, y))
    assert isinstance(state, jax_lib.DistillationState)
    train_step = trainer.make_train_step()
    # The compiled step holds no constants: the teacher's variables are leaves
    # of its argument. Closing over them would have made them constants.
    assert train_step.trace(state, (X, y)).jaxpr.consts == []
    closing = jax.jit(lambda X: teacher.apply(variables, X))
    assert len(closing.trace(X).jaxpr.consts) == len(jax.tree.leaves(variables))
    # One step: its loss is the distillation loss of the student's heads (no
    # dropout here); the teacher is unchanged; the step donates the state's
    # buffers, but the caller's teacher variables stay alive
    class_logits, dist_logits = student.apply({'params': state.params}, X, method='heads')
    expected = jax_lib.distillation_loss(class_logits, dist_logits, y, teacher.apply(variables, X),
                                         'hard')
    new_state, loss = train_step(state, (X, y))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(variables))
    for leaf, original in zip(jax.tree.leaves(new_state.teacher_variables),
                              jax.tree.leaves(variables)):
        np.testing.assert_array_equal(leaf, original)
    assert int(new_state.step) == 1
