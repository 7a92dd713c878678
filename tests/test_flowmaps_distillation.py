"""Progressive distillation's exactness, and every flow-map objective inside the library's train
step (``training.make_train_step(with_context=True)``: EMA target, stop-gradient target, frozen
teacher, curriculum read from the step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from diffusion_jax import training
from diffusion_jax.analytic import GaussianMixture
from diffusion_jax.denoisers import EDMPreconditioning, PreconditionedDenoiser
from diffusion_jax.flowmaps import (
    base,
    consistency,
    ctm,
    curricula,
    exact,
    parameterisations,
    progressive,
)
from diffusion_jax.networks.mlp import MLP
from diffusion_jax.processes import Cosine
from diffusion_jax.samplers import karras_sigmas
from diffusion_jax.samplers.steps import ddim_step, euler_update

MEAN, VARIANCE = np.array([0.5, -0.2]), 0.3  # numpy: float64 under x64


def gaussian(dtype=jnp.float32):
    return GaussianMixture.create(MEAN[None].astype(dtype), variances=jnp.full((1, 2), VARIANCE,
                                                                             dtype))


def nonlinear_teacher(x, sigma, cond=None):
    """Any denoiser will do for the exactness of the target: a nonlinear one."""
    sigma = base.per_example(sigma, x)[:, None]
    return jnp.tanh(x) / (1.0 + sigma) + 0.1 * jnp.sin(3.0 * x * sigma)


# -- progressive distillation ------------------------------------------------------------------


def test_one_student_step_reproduces_two_teacher_ddim_steps(x64):
    x = 3.0 * jax.random.normal(jax.random.key(0), (5, 2))
    sigma, sigma_mid = jnp.array([8.0, 2.0, 1.0, 0.5, 0.1]), jnp.array([3.0, 1.0, 0.4, 0.2, 0.05])
    for sigma_to in (jnp.array([1.0, 0.5, 0.1, 0.1, 0.01]), jnp.zeros(5)):
        two_steps = ddim_step(
            nonlinear_teacher, ddim_step(nonlinear_teacher, x, sigma, sigma_mid), sigma_mid,
            sigma_to,
        )
        target = progressive.progressive_target(x, sigma, two_steps, sigma_to)
        np.testing.assert_allclose(euler_update(x, target, sigma, sigma_to), two_steps,
                                   rtol=1e-12, atol=1e-12)


def test_progressive_target_is_the_papers_vp_formula(x64):
    """Salimans & Ho 2022, Alg. 2 in the cosine VP frame: x~ = (z'' - (s''/s) z) / (a'' - (s''/s)
    a) equals the VE-frame target."""
    process = Cosine()
    t, t_to = jnp.array([0.9, 0.5]), jnp.array([0.6, 0.1])
    alpha, sigma = process.alpha(t), process.sigma(t)
    alpha_to, sigma_to = process.alpha(t_to), process.sigma(t_to)
    z = jax.random.normal(jax.random.key(1), (2, 3))
    z_to = jax.random.normal(jax.random.key(2), (2, 3))
    ratio = (sigma_to / sigma)[:, None]
    paper = (z_to - ratio * z) / (alpha_to[:, None] - ratio * alpha[:, None])
    ve = progressive.progressive_target(
        z / alpha[:, None], sigma / alpha, z_to / alpha_to[:, None], sigma_to / alpha_to
    )
    np.testing.assert_allclose(ve, paper, rtol=1e-12)


def test_progressive_loss_is_zero_for_the_two_step_student(x64):
    teacher_sigmas = karras_sigmas(8, sigma_min=0.02, sigma_max=20.0)
    levels = progressive.student_sigmas(teacher_sigmas)

    def two_step_student(x, sigma, cond=None):
        """The exact minimiser: looks its step up on the student grid."""
        index = jnp.argmin(jnp.abs(levels[None, :] - sigma[:, None]), axis=1)
        sigma_mid, sigma_to = teacher_sigmas[2 * index + 1], teacher_sigmas[2 * index + 2]
        x_mid = ddim_step(nonlinear_teacher, x, sigma, sigma_mid)
        x_to = ddim_step(nonlinear_teacher, x_mid, sigma_mid, sigma_to)
        return progressive.progressive_target(x, sigma, x_to, sigma_to)

    x0 = jax.random.normal(jax.random.key(0), (64, 2))
    key = jax.random.key(3)
    losses = progressive.progressive_distillation_loss(
        two_step_student, x0, key, teacher=nonlinear_teacher, teacher_sigmas=teacher_sigmas
    )
    assert float(jnp.max(losses)) < 1e-24
    one_step = progressive.progressive_distillation_loss(
        nonlinear_teacher, x0, key, teacher=nonlinear_teacher, teacher_sigmas=teacher_sigmas
    )
    assert float(jnp.mean(one_step)) > 1e-4


def test_progressive_weight_is_truncated_snr(x64):
    """w = max(1 / s^2, 1): a student off by a constant c has loss w c^2."""
    teacher_sigmas = jnp.array([4.0, 2.0, 0.5, 0.25, 0.0])
    x0 = jnp.zeros((2000, 1))

    def student(x, sigma, cond=None):
        x_mid = ddim_step(lambda x, s, c=None: jnp.zeros_like(x), x, sigma, sigma)
        return x_mid * 0.0 + 0.1

    losses = progressive.progressive_distillation_loss(
        student, x0, jax.random.key(0), teacher=lambda x, s, c=None: jnp.zeros_like(x),
        teacher_sigmas=teacher_sigmas,
    )
    np.testing.assert_allclose(np.unique(np.round(np.asarray(losses), 12)),
                               [0.01, 0.01 / 0.25], rtol=1e-9)


def test_progressive_rejects_an_even_teacher_grid():
    with pytest.raises(ValueError, match="odd number"):
        progressive.student_sigmas(jnp.array([4.0, 1.0, 0.5, 0.0]))


# -- the objectives in the train step ----------------------------------------------------------


def train(network, loss_fn, *, ema=None, frozen=None, steps=3):
    optimizer = training.make_optimizer(learning_rate=1e-3)[0]
    ema = ema or {}
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    step = jax.jit(training.make_train_step(
        parts, loss_fn, optimizer, ema_decays=ema, with_context=True
    ))
    batch = {"x": MEAN + jnp.sqrt(VARIANCE) * jax.random.normal(jax.random.key(1), (32, 2))}
    losses = []
    for _ in range(steps):
        state, metrics = step(state, batch, frozen)
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)), losses
    return state, losses


def consistency_model(network):
    return parameterisations.ConsistencyModel(network)


TOTAL = 1000


@pytest.mark.parametrize("name", ["cd", "ict"])
def test_consistency_objectives_run_in_the_train_step(name):
    """CD (EMA target, NNX teacher in ``frozen``) and iCT (stop-gradient target, curriculum read
    from the traced step); CT and ECT run through the same paths in the recipes' tests."""
    def loss_fn(network, batch, key, context):
        student, x0 = consistency_model(network), batch["x"]
        if name == "cd":
            teacher = base.TeacherFlowMap(context.frozen, sampler="heun", num_steps=1)
            return consistency.consistency_distillation_loss(
                student, x0, key, target=consistency_model(context.ema["target"]),
                teacher=teacher,
            )
        return consistency.ict_loss(
            student, x0, key, target=consistency_model(context.detached),
            num_levels=curricula.ict_num_levels(context.step, total_steps=TOTAL),
        )

    network = MLP(2, hidden_dim=32, num_layers=2, embedding_dim=16, rngs=nnx.Rngs(0))
    ema = {"target": training.ema_constant(0.95)} if name == "cd" else None
    teacher = PreconditionedDenoiser(  # an NNX teacher: per-example steps vmap over it
        MLP(2, hidden_dim=16, num_layers=1, embedding_dim=8, rngs=nnx.Rngs(1)),
        EDMPreconditioning(),
    )
    train(network, loss_fn, ema=ema, frozen=teacher if name == "cd" else None)


def test_ctm_objective_runs_in_the_train_step():
    def loss_fn(network, batch, key, context):
        student = parameterisations.CTMFlowMap(network)
        return ctm.ctm_loss(
            student, batch["x"], key, target=parameterisations.CTMFlowMap(context.ema["target"]),
            teacher=base.TeacherFlowMap(context.frozen, sampler="heun", num_steps=2),
            denoiser=student.denoiser,
        )

    network = MLP(2, hidden_dim=32, num_layers=2, embedding_dim=16, two_time=True,
                  rngs=nnx.Rngs(0))
    train(network, loss_fn,
          ema={"target": training.ema_constant(0.95)}, frozen=gaussian())


class ToyNetwork(nnx.Module):
    """The parametric Gaussian flow map as an NNX module (parameters: mean, log variance)."""

    def __init__(self, mean, log_variance):
        self.mean = nnx.Param(jnp.asarray(mean))
        self.log_variance = nnx.Param(jnp.asarray(log_variance))

    def __call__(self, x, sigma, sigma_to, cond=None):
        sigma, sigma_to = base.per_example(sigma, x), base.per_example(sigma_to, x)
        ratio = exact.gaussian_ratio(jnp.exp(self.log_variance[...]), sigma, sigma_to)
        return self.mean[...] + (x - self.mean[...]) * base.expand(ratio, x)


@pytest.mark.parametrize("teacher_kind, num_levels, rtol", [("exact", 18, 0.01), ("heun", 40, 0.05)])
def test_consistency_distillation_learns_the_exact_map(teacher_kind, num_levels, rtol):
    """CD from a wrong start converges to the exact map's parameters: exactly with the exact
    teacher; with a one-step Heun teacher up to its discretisation bias (measured: variance 0.342
    at 18 levels, 0.307 at 40, for the true 0.3)."""

    def loss_fn(network, batch, key, context):
        if teacher_kind == "exact":
            teacher = exact.ExactGaussianFlowMap(context.frozen)
        else:
            teacher = base.TeacherFlowMap(context.frozen, sampler="heun", num_steps=1)
        return consistency.consistency_distillation_loss(
            network, batch["x"], key, target=context.ema["target"], teacher=teacher,
            num_levels=num_levels,
        )

    network = ToyNetwork(MEAN + 0.4, jnp.log(VARIANCE) + 0.7)
    optimizer = training.make_optimizer(learning_rate=3e-2)[0]
    ema = {"target": training.ema_constant(0.0)}
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0),
                                               ema_names=("target",))
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema,
                                            with_context=True))
    for i in range(300):
        x = MEAN + jnp.sqrt(VARIANCE) * jax.random.normal(jax.random.key(10 + i), (256, 2))
        state, _ = step(state, {"x": x}, gaussian())
    learned = training.merge_network(parts, state.params)
    np.testing.assert_allclose(learned.mean[...], MEAN, atol=0.01)
    np.testing.assert_allclose(jnp.exp(learned.log_variance[...]), VARIANCE, rtol=rtol)
