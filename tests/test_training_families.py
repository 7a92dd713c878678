"""The train step for the families beyond plain denoising: a loss reading the EMA (consistency
training's target), a frozen teacher (distillation), several networks trained together."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _train_families import (
    autoencoder_loss,
    consistency_loss,
    distillation_loss,
    points,
    small_network,
)
from flax import nnx

from diffusion_jax import training


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_trees_close(a, b, **tolerance):
    for x, y in zip(_leaves(a), _leaves(b), strict=True):
        np.testing.assert_allclose(x, y, **tolerance)


def _max_diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(_leaves(a), _leaves(b), strict=True))


def _params(network):
    return nnx.state(network, nnx.Param)


def _apply(network, params, x):
    graphdef, _, rest = nnx.split(network, nnx.Param, ...)
    return nnx.merge(graphdef, params, rest)(x)


def _optimizer():
    return training.make_optimizer(learning_rate=1e-2)[0]


TARGET = {"target": training.ema_constant(0.9)}


def _context_step(network, loss_fn, optimizer, ema=TARGET):
    """Initial state, parts and the jitted context-reading step (EMAs ``ema``)."""
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    step = training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema, with_context=True)
    return state, parts, jax.jit(step)


def test_loss_reads_the_ema_without_gradient_into_it():
    network = small_network(1)
    optimizer = _optimizer()
    state, _, step = _context_step(network, consistency_loss, optimizer)
    data = points(3)
    for batch in data[:2]:
        state, _ = step(state, batch)
    # step 2 by hand: gradient of the minibatch mean with the EMA params held fixed
    key = jax.random.split(jax.random.fold_in(state.key, 2))[1]
    x = data[2]["x"]
    perturbed = x + 0.3 * jax.random.normal(key, x.shape)

    def mean_loss(params, target_params):
        diff = _apply(network, params, x) - _apply(network, target_params, perturbed)
        return jnp.mean(jnp.sum(diff**2, axis=-1))

    held = jax.grad(mean_loss)(state.params, state.ema["target"])
    flowing = jax.grad(lambda p: mean_loss(p, p))(state.params)  # what a leak would give
    assert _max_diff(held, flowing) > 1e-2
    updates, _ = optimizer.update(held, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    expected_ema = training.ema_update(state.ema["target"], expected, 0.9)
    new_state, metrics = step(state, data[2])
    np.testing.assert_allclose(metrics["loss"], mean_loss(state.params, state.ema["target"]),
                               rtol=1e-6)
    _assert_trees_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
    _assert_trees_close(new_state.ema["target"], expected_ema, rtol=1e-5, atol=1e-7)


def test_detached_target_is_the_online_network_under_stop_gradient():
    """iCT's target sg(theta): same value as the online network, no gradient through it."""
    network = small_network(1)
    optimizer = _optimizer()
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0))

    def loss_fn(net, batch, key, context):
        x = batch["x"]
        return jnp.sum((net(x) - context.detached(x + 0.5)) ** 2, axis=-1)

    loss_and_grad = training.make_loss_and_grad(parts, loss_fn, with_context=True)
    batch = points(1)[0]
    loss, grads = loss_and_grad(state.params, state.buffers, batch, jax.random.key(1))

    def mean_loss(params, target_params):
        diff = _apply(network, params, batch["x"]) - _apply(network, target_params, batch["x"] + 0.5)
        return jnp.mean(jnp.sum(diff**2, axis=-1))

    np.testing.assert_allclose(loss, mean_loss(state.params, state.params), rtol=1e-6)
    _assert_trees_close(grads, jax.grad(mean_loss)(state.params, state.params), rtol=1e-5,
                        atol=1e-7)
    flowing = jax.grad(lambda p: mean_loss(p, p))(state.params)
    assert _max_diff(grads, flowing) > 1e-2


def test_ema_target_shares_the_online_dropout_masks():
    """Student and EMA target draw the same dropout masks (consistency models' practice)."""
    network = small_network(1, dropout=0.5)
    state, parts = training.create_train_state(
        network, _optimizer(), key=jax.random.key(0), ema_names=("target",)
    )

    def gap(evaluation_target):
        def loss_fn(net, batch, key, context):
            target = context.ema["target"]
            if evaluation_target:
                target.eval()
            return jnp.sum((net(batch["x"]) - target(batch["x"])) ** 2, axis=-1)

        loss_and_grad = training.make_loss_and_grad(parts, loss_fn, with_context=True)
        loss, _ = loss_and_grad(state.params, state.buffers, points(1)[0], jax.random.key(3),
                                ema=state.ema)
        return float(loss)

    assert gap(evaluation_target=False) == 0.0  # EMA == params at step 0, same masks
    assert gap(evaluation_target=True) > 1e-3  # dropout really is on for the online network


def test_frozen_teacher_is_read_never_trained_nor_stored():
    student, teacher = small_network(1), small_network(2)
    teacher_before = jax.tree.map(np.asarray, _params(teacher))
    optimizer = _optimizer()
    state, _, step = _context_step(student, distillation_loss, optimizer, ema={})
    plain_state, _ = training.create_train_state(small_network(1), optimizer, key=jax.random.key(0))
    data = points(30, seed=1)
    batch = data[0]

    def mean_loss(params):
        return jnp.mean(jnp.sum((_apply(student, params, batch["x"]) - teacher(batch["x"])) ** 2,
                                axis=-1))

    loss, grads = jax.value_and_grad(mean_loss)(state.params)
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    state, metrics = step(state, batch, teacher)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    _assert_trees_close(state.params, expected, rtol=1e-5, atol=1e-7)
    for batch in data[1:]:
        state, metrics = step(state, batch, teacher)
    assert float(metrics["loss"]) < 0.5 * float(loss)  # the student moves to the teacher
    _assert_trees_close(_params(teacher), teacher_before, rtol=0, atol=0)
    # the teacher is nowhere in the state: same structure as training without one
    assert jax.tree.structure(state) == jax.tree.structure(plain_state)
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(optimizer.init(state.params))


def test_multi_step_dispatch_with_teacher_equals_single_steps():
    networks = {"encoder": small_network(1), "decoder": small_network(2)}
    teacher = small_network(3)
    optimizer = _optimizer()
    state, parts, single = _context_step(networks, autoencoder_loss, optimizer)
    multi = jax.jit(training.make_train_step(
        parts, autoencoder_loss, optimizer, ema_decays=TARGET, with_context=True, steps_per_call=3
    ))
    data = points(3)
    one_by_one, losses = state, []
    for batch in data:
        one_by_one, metrics = single(one_by_one, batch, teacher)
        losses.append(float(metrics["loss"]))
    stacked, metrics = multi(state, training.stack_batches(data), teacher)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-6)
    _assert_trees_close(stacked.params, one_by_one.params, rtol=1e-5, atol=1e-7)
    _assert_trees_close(stacked.ema, one_by_one.ema, rtol=1e-5, atol=1e-7)


def test_two_networks_trained_together_match_optax_on_the_dict():
    networks = {"encoder": small_network(1), "decoder": small_network(2)}
    teacher = small_network(3)
    optimizer = _optimizer()
    state, parts, step = _context_step(networks, autoencoder_loss, optimizer)
    assert set(parts) == set(state.params) == set(state.ema["target"]) == {"encoder", "decoder"}
    batch = points(1)[0]

    def mean_loss(params, ema_params):
        x = batch["x"]
        code = _apply(networks["encoder"], params["encoder"], x)
        decoded = _apply(networks["decoder"], params["decoder"], code)
        recon = jnp.sum((decoded - x) ** 2, axis=-1)
        distill = jnp.sum((code - teacher(x)) ** 2, axis=-1)
        target = _apply(networks["decoder"], ema_params["decoder"], code)
        return jnp.mean(recon + 0.1 * distill + jnp.sum((decoded - target) ** 2, axis=-1))

    grads = jax.grad(mean_loss)(state.params, state.ema["target"])
    updates, _ = optimizer.update(grads, state.opt_state, state.params)
    expected = optax.apply_updates(state.params, updates)
    new_state, _ = step(state, batch, teacher)
    _assert_trees_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
    _assert_trees_close(new_state.ema["target"], training.ema_update(state.ema["target"],
                                                                     expected, 0.9),
                        rtol=1e-5, atol=1e-7)
    for name in networks:  # both networks really moved
        assert _max_diff(new_state.params[name], state.params[name]) > 1e-3
    merged = training.merge_network(parts, new_state.ema["target"], new_state.buffers)
    assert set(merged) == {"encoder", "decoder"} and isinstance(merged["decoder"], nnx.Module)


def test_joint_state_round_trips_as_a_pytree_of_arrays():
    """What a checkpoint stores: arrays only; a state rebuilt from host copies resumes exactly."""
    networks = {"encoder": small_network(1), "decoder": small_network(2)}
    teacher = small_network(3)
    state, _, step = _context_step(networks, autoencoder_loss, _optimizer())
    data = points(4)
    for batch in data[:2]:
        state, _ = step(state, batch, teacher)
    leaves, treedef = jax.tree.flatten(state)
    assert all(isinstance(leaf, jax.Array) for leaf in leaves)
    host = [np.asarray(jax.random.key_data(x)) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
            else np.asarray(x) for x in leaves]
    restored = jax.tree.unflatten(treedef, [
        jax.random.wrap_key_data(h) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        else jnp.asarray(h) for h, x in zip(host, leaves, strict=True)
    ])
    for batch in data[2:]:
        state, _ = step(state, batch, teacher)
        restored, _ = step(restored, batch, teacher)
    for a, b in zip(_leaves(jax.random.key_data(state.key)), _leaves(
            jax.random.key_data(restored.key)), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(state.params), _leaves(restored.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_network_can_have_its_own_optimizer():
    """``optax.multi_transform`` labelled by network name: a frozen-rate encoder, a trained
    decoder."""
    networks = {"encoder": small_network(1), "decoder": small_network(2)}
    optimizer = optax.multi_transform(
        {"encoder": optax.sgd(0.0), "decoder": optax.adam(1e-2)},
        {"encoder": "encoder", "decoder": "decoder"},
    )
    state, parts = training.create_train_state(networks, optimizer, key=jax.random.key(0))

    def loss_fn(nets, batch, key):
        x = batch["x"]
        return jnp.sum((nets["decoder"](nets["encoder"](x)) - x) ** 2, axis=-1)

    new_state, _ = jax.jit(training.make_train_step(parts, loss_fn, optimizer))(state, points(1)[0])
    assert _max_diff(new_state.params["encoder"], state.params["encoder"]) == 0.0
    assert _max_diff(new_state.params["decoder"], state.params["decoder"]) > 1e-3


def test_family_bad_inputs():
    network = small_network(1)
    optimizer = _optimizer()
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(0))
    step = training.make_train_step(
        parts, lambda net, batch, key: jnp.sum(net(batch["x"]) ** 2, -1), optimizer
    )
    with pytest.raises(ValueError, match="with_context=True"):
        step(state, points(1)[0], small_network(2))
    with pytest.raises(ValueError, match="non-empty mapping"):
        training.create_train_state({}, optimizer, key=jax.random.key(0))
    with pytest.raises(ValueError, match="Flax NNX module"):
        training.create_train_state({"a": lambda x: x}, optimizer, key=jax.random.key(0))
