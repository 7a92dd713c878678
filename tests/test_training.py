"""TrainState, optimiser schedule, EMA and the pure train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _multihost_worker import batches, tiny_problem
from _train_families import points, small_network
from flax import nnx

from diffusion_jax import training


def _setup(**step_options):
    network, loss_fn, optimizer, schedule, ema = tiny_problem()
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    step = training.make_train_step(
        parts, loss_fn, optimizer, ema_decays=ema, learning_rate=schedule, **step_options
    )
    return state, parts, loss_fn, optimizer, ema, step


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_ema_decays_closed_forms():
    half_life = training.ema_half_life(1000.0, 10)
    np.testing.assert_allclose(half_life(jnp.int32(5)), 0.5 ** (10 / 1000), rtol=1e-6)
    ramped = training.ema_half_life(1000.0, 10, rampup_ratio=0.5)
    # step 0: 10 images seen, half-life capped at 5 images -> beta = 0.5^2.
    np.testing.assert_allclose(ramped(jnp.int32(0)), 0.25, rtol=1e-6)
    np.testing.assert_allclose(ramped(jnp.int32(10_000)), 0.5 ** (10 / 1000), rtol=1e-6)
    power = training.ema_power(6.94)
    np.testing.assert_allclose(power(jnp.int32(0)), 0.0, atol=0)
    np.testing.assert_allclose(power(jnp.int32(9)), 0.9 ** 7.94, rtol=1e-6)
    with pytest.raises(ValueError, match="decay"):
        training.ema_constant(1.0)
    with pytest.raises(ValueError, match="half-life"):
        training.ema_half_life(0.0, 10)


def test_ema_update_is_geometric():
    params = {"w": jnp.full((3,), 2.0)}
    ema = {"w": jnp.zeros(3)}
    for _ in range(5):
        ema = training.ema_update(ema, params, 0.8)
    np.testing.assert_allclose(ema["w"], 2.0 * (1 - 0.8**5), rtol=1e-6)


def _polyak(ema, params, decay):
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def _reference_run(network, loss_fn, optimizer, ema_decays, data, key):
    """The train step from first principles (Flax ``nnx.split``/``merge``, ``jax.value_and_grad``
    of the minibatch mean, optax's update, Polyak's ``beta e + (1 - beta) p``), jitted; returns
    ``(params, ema, losses, grad_norms)`` after ``data``."""
    graphdef, params, rng_state, rest = nnx.split(network, nnx.Param, nnx.RngState, ...)
    dropout = any(isinstance(node, nnx.RngStream) for _, node in nnx.iter_graph(network))

    @jax.jit
    def step(params, opt_state, ema, batch, i):
        network_key, loss_key = jax.random.split(jax.random.fold_in(key, i))

        def mean_loss(p):
            net = nnx.merge(graphdef, p, rng_state, rest, copy=True)
            net.train()
            if dropout:  # the one stream, "dropout", gets fold_in(network_key, 0)
                nnx.reseed(net, dropout=jax.random.fold_in(network_key, 0))
            return jnp.mean(loss_fn(net, batch, loss_key))

        loss, grads = jax.value_and_grad(mean_loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema = {name: _polyak(ema[name], params, decay(i)) for name, decay in ema_decays.items()}
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        return params, opt_state, ema, loss, norm

    opt_state, ema = optimizer.init(params), {name: params for name in ema_decays}
    losses, norms = [], []
    for i, batch in enumerate(data):
        params, opt_state, ema, loss, norm = step(params, opt_state, ema, batch, jnp.int32(i))
        losses.append(loss)
        norms.append(norm)
    return params, ema, losses, norms


def _dropout_problem():
    network = small_network(4, dropout=0.5)

    def loss_fn(net, batch, key):
        return jnp.sum((net(batch["x"]) - 0.5 * batch["x"]) ** 2, axis=-1)

    optimizer, _ = training.make_optimizer(learning_rate=1e-2, warmup_steps=2)
    return network, loss_fn, optimizer, {"power": training.ema_power(6.94)}, points(3)


def _default_job_problem():
    network, loss_fn, optimizer, _, ema = tiny_problem()
    ema["default"] = training.ema_half_life(10000.0, 16, 0.05)  # the default job's EMA
    return network, loss_fn, optimizer, ema, batches(num_steps=4)


@pytest.mark.parametrize("problem", [_default_job_problem, _dropout_problem])
def test_single_network_step_is_bit_exact_with_first_principles(problem):
    """The existing recipes' numbers: every bit of params, EMAs, loss and grad norm."""
    network, loss_fn, optimizer, ema, data = problem()
    key = jax.random.key(11)
    params, ema_params, losses, norms = _reference_run(network, loss_fn, optimizer, ema, data, key)
    state, parts = training.create_train_state(network, optimizer, key=key, ema_names=tuple(ema))
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema))
    for batch, loss, norm in zip(data, losses, norms, strict=True):
        state, metrics = step(state, batch)
        np.testing.assert_array_equal(metrics["loss"], loss)
        np.testing.assert_array_equal(metrics["grad_norm"], norm)
    for a, b in zip(_leaves(state.params), _leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(state.ema), _leaves(ema_params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.max(jnp.abs(losses[-1] - losses[0]))) > 0  # it trained


def test_learning_rate_warmup_and_cosine():
    schedule = training.learning_rate_schedule(
        learning_rate=1.0, warmup_steps=4, total_steps=14, decay="cosine"
    )
    np.testing.assert_allclose([schedule(i) for i in range(5)], [0.25, 0.4375, 0.625, 0.8125, 1.0])
    np.testing.assert_allclose(schedule(9), 0.5, rtol=1e-6)  # half way through the cosine
    np.testing.assert_allclose(schedule(14), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="learning_rate"):
        training.learning_rate_schedule(learning_rate=-1.0)
    with pytest.raises(ValueError, match="total_steps"):
        training.learning_rate_schedule(learning_rate=1.0, decay="cosine")
    with pytest.raises(ValueError, match="decay"):
        training.learning_rate_schedule(learning_rate=1.0, decay="linear")


def test_step_is_one_optimizer_update_with_step_key():
    state, parts, loss_fn, optimizer, ema, step = _setup()
    batch = batches(num_steps=1)[0]
    new_state, metrics = jax.jit(step)(state, batch)
    # The same update by hand: gradient at key fold_in(key, step), optax, EMA formulas.
    loss, grads = training.make_loss_and_grad(parts, loss_fn)(
        state.params, state.buffers, batch, jax.random.fold_in(state.key, 0)
    )
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in _leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    for a, b in zip(_leaves(new_state.params), _leaves(params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    fast = training.ema_update(state.params, params, 0.5)
    for a, b in zip(_leaves(new_state.ema["fast"]), _leaves(fast), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(new_state.step) == 1
    # keys differ between steps: the loss at the same params changes with the step
    loss_step1, _ = training.make_loss_and_grad(parts, loss_fn)(
        state.params, state.buffers, batch, jax.random.fold_in(state.key, 1)
    )
    assert abs(float(loss_step1) - float(loss)) > 1e-4


def test_multi_step_dispatch_equals_single_steps():
    state, *_, single = _setup()
    *_, multi = _setup(steps_per_call=3)
    data = batches(num_steps=3)
    one_by_one = state
    losses = []
    for batch in data:
        one_by_one, metrics = jax.jit(single)(one_by_one, batch)
        losses.append(float(metrics["loss"]))
    stacked, metrics = jax.jit(multi)(state, training.stack_batches(data))
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    assert int(stacked.step) == 3
    for a, b in zip(_leaves(stacked.params), _leaves(one_by_one.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_training_decreases_held_out_loss():
    state, parts, loss_fn, *_, step = _setup()
    evaluate = jax.jit(training.make_loss_and_grad(parts, loss_fn))
    held_out = batches(num_steps=1, batch_size=2048, seed=7)[0]
    key = jax.random.key(42)
    initial, _ = evaluate(state.params, state.buffers, held_out, key)
    step = jax.jit(step)
    for batch in batches(num_steps=150, batch_size=64, seed=1):
        state, metrics = step(state, batch)
    trained, _ = evaluate(state.params, state.buffers, held_out, key)
    trained_ema, _ = evaluate(state.ema["slow"], state.buffers, held_out, key)
    assert float(trained) < 0.8 * float(initial), (float(initial), float(trained))
    assert float(trained_ema) < 0.8 * float(initial), (float(initial), float(trained_ema))


def test_bfloat16_compute_keeps_float32_state():
    state, *_, step32 = _setup()
    *_, step16 = _setup(compute_dtype=jnp.bfloat16)
    step32, step16 = jax.jit(step32), jax.jit(step16)
    data = batches(num_steps=4, batch_size=64)
    for batch in data[:3]:  # leave the zero-initialised output layer (F = 0 is exact in bf16)
        state, _ = step32(state, batch)
    new32, metrics32 = step32(state, data[3])
    new16, metrics16 = step16(state, data[3])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new16.ema))
    np.testing.assert_allclose(metrics16["loss"], metrics32["loss"], rtol=0.03)
    assert float(metrics16["loss"]) != float(metrics32["loss"])  # really ran in bfloat16


class _DropoutNet(nnx.Module):
    def __init__(self, rngs):
        self.linear = nnx.Linear(2, 2, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x, c_noise, cond=None):
        return self.dropout(self.linear(x))


def test_dropout_reseeded_from_step_key_and_off_for_sampling():
    network = _DropoutNet(nnx.Rngs(params=0, dropout=1))
    parts = training.split_network(network)

    def loss_fn(net, batch, key):
        return jnp.sum(net(batch["x"], jnp.zeros(batch["x"].shape[0])) ** 2, axis=-1)

    loss_and_grad = jax.jit(training.make_loss_and_grad(parts, loss_fn))
    batch = {"x": jnp.ones((64, 2))}
    loss_a, _ = loss_and_grad(parts.params, parts.buffers, batch, jax.random.key(1))
    loss_a2, _ = loss_and_grad(parts.params, parts.buffers, batch, jax.random.key(1))
    loss_b, _ = loss_and_grad(parts.params, parts.buffers, batch, jax.random.key(2))
    assert float(loss_a) == float(loss_a2)
    assert float(loss_a) != float(loss_b)
    evaluation = training.merge_network(parts)
    out1 = evaluation(batch["x"], None)
    np.testing.assert_allclose(out1, network.linear(batch["x"]), rtol=1e-6)


def test_bad_inputs():
    network, loss_fn, optimizer, *_ = tiny_problem()
    with pytest.raises(ValueError, match="typed key"):
        training.create_train_state(network, optimizer, key=jax.random.PRNGKey(0))
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0))
    with pytest.raises(ValueError, match="steps_per_call"):
        training.make_train_step(parts, loss_fn, optimizer, steps_per_call=0)
    with pytest.raises(ValueError, match="grad_clip_norm"):
        training.make_optimizer(learning_rate=1e-3, grad_clip_norm=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        training.stack_batches([])
