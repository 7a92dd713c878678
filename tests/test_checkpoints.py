"""Checkpoints: round trip, exact resume, EMA-only loading, corrupt-checkpoint fallback."""

import functools
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _multihost_worker import batches, tiny_problem

from diffusion_jax import checkpoints, recipes, sharding, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _fresh():
    """Initial state and one jitted step, shared by the tests (compiled once)."""
    network, loss_fn, optimizer, schedule, ema = tiny_problem()
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(ema)
    )
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer, ema_decays=ema))
    return state, step


def _assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_onto_sharding(tmp_path):
    state, step = _fresh()
    for batch in batches(num_steps=2):
        state, _ = step(state, batch)
    manager = checkpoints.make_manager(tmp_path)
    checkpoints.save(manager, state, {"name": "round trip"})
    manager.wait_until_finished()
    target, _ = _fresh()  # same structure, initial values
    mesh = sharding.make_mesh()
    shardings = sharding.state_shardings(target, mesh)
    restored, config = checkpoints.restore_train_state(
        checkpoints.make_manager(tmp_path), target, shardings=shardings
    )
    assert config == {"name": "round trip"}
    assert int(restored.step) == 2
    _assert_trees_equal(restored, state)
    assert all(
        leaf.sharding == sharding.replicated(mesh) for leaf in jax.tree.leaves(restored.params)
    )


def test_resume_is_exact(tmp_path):
    data = batches(num_steps=6)
    state, step = _fresh()
    uninterrupted = []
    for batch in data:
        state, metrics = step(state, batch)
        uninterrupted.append(float(metrics["loss"]))

    state, step = _fresh()
    resumed = []
    manager = checkpoints.make_manager(tmp_path)
    for batch in data[:3]:
        state, metrics = step(state, batch)
        resumed.append(float(metrics["loss"]))
    checkpoints.save(manager, state, {})
    manager.wait_until_finished()
    del state
    target, step = _fresh()
    state, _ = checkpoints.restore_train_state(checkpoints.make_manager(tmp_path), target)
    for batch in data[int(state.step):]:
        state, metrics = step(state, batch)
        resumed.append(float(metrics["loss"]))
    assert resumed == uninterrupted


@functools.cache
def _tiny_problem():
    config = recipes.load_config(os.path.join(ROOT, "configs", "tiny.py"))
    network, wrap = recipes.build_model(config)
    emas = recipes.ema_schedules(config)
    optimizer, _ = training.make_optimizer(learning_rate=1e-2)
    state, parts = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=tuple(emas)
    )
    step = jax.jit(training.make_train_step(
        parts, recipes.make_loss_fn(config, wrap), optimizer, ema_decays=emas
    ))
    return config, wrap, parts, state, step


def _tiny_run(tmp_path, num_steps, *, save_every=1):
    """Train the CLI's tiny config a few steps, saving each step; return the states saved."""
    config, wrap, parts, state, step = _tiny_problem()
    manager = checkpoints.make_manager(tmp_path, max_to_keep=5)
    saved = []
    for batch in batches(num_steps=num_steps, batch_size=32):
        state, _ = step(state, batch)
        if int(state.step) % save_every == 0:
            checkpoints.save(manager, state, config.to_dict())
            saved.append(state)
    manager.wait_until_finished()
    manager.close()
    return config, wrap, parts, saved


def test_load_denoiser_restores_ema_params(tmp_path):
    config, wrap, parts, saved = _tiny_run(tmp_path, 3)
    final = saved[-1]
    denoiser, loaded_config = checkpoints.load_denoiser(tmp_path, build=recipes.build_model)
    assert loaded_config["model"]["hidden_dim"] == config.model.hidden_dim
    (ema_name,) = final.ema
    from flax import nnx

    _assert_trees_equal(nnx.state(denoiser.network, nnx.Param), final.ema[ema_name])
    replicated = sharding.replicated(sharding.make_mesh())
    raw, _ = checkpoints.load_denoiser(
        tmp_path, build=recipes.build_model, ema=False, sharding=replicated
    )
    _assert_trees_equal(nnx.state(raw.network, nnx.Param), final.params)
    assert all(x.sharding == replicated for x in jax.tree.leaves(nnx.state(raw.network)))
    # the EMA lags behind the params, so the two denoisers differ
    x = jnp.ones((4, 2))
    expected = wrap(training.merge_network(parts, final.ema[ema_name], final.buffers))(x, 0.7)
    np.testing.assert_allclose(denoiser(x, 0.7), expected, rtol=1e-6)
    assert not np.allclose(denoiser(x, 0.7), raw(x, 0.7))
    with pytest.raises(checkpoints.CheckpointError, match="unknown EMA"):
        checkpoints.load_denoiser(tmp_path, build=recipes.build_model, ema="nope")


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, caplog):
    config, wrap, parts, saved = _tiny_run(tmp_path, 2)
    latest = tmp_path / "checkpoints" / "2"
    for root, _, files in os.walk(latest / "ema"):
        for name in files:
            with open(os.path.join(root, name), "r+b") as f:
                f.truncate(0)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        denoiser, _ = checkpoints.load_denoiser(tmp_path, build=recipes.build_model)
    (warning,) = [r.getMessage() for r in caplog.records if r.name == checkpoints.__name__]
    assert "step 2 is unreadable" in warning and len(warning) < 200
    from flax import nnx

    (ema_name,) = saved[0].ema
    _assert_trees_equal(nnx.state(denoiser.network, nnx.Param), saved[0].ema[ema_name])


def test_never_saves_a_non_finite_state(tmp_path):
    state, _ = _fresh()
    bad = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    manager = checkpoints.make_manager(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="non-finite"):
        checkpoints.save(manager, bad, {})
    manager.wait_until_finished()
    assert manager.all_steps() == []
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        checkpoints.restore_train_state(manager, state)


@pytest.mark.parametrize("bad", [0, -1, True, 2.0])
def test_max_to_keep_must_be_positive(tmp_path, bad):
    with pytest.raises(ValueError, match="max_to_keep must be a positive integer"):
        checkpoints.make_manager(tmp_path, max_to_keep=bad)
    assert not (tmp_path / "checkpoints").exists()


def test_max_to_keep_none_keeps_every_step(tmp_path):
    state, _ = _fresh()
    manager = checkpoints.make_manager(tmp_path, max_to_keep=None)
    for k in range(1, 5):
        checkpoints.save(manager, state.replace(step=jnp.asarray(k, jnp.int32)), {})
    manager.wait_until_finished()
    assert manager.all_steps() == [1, 2, 3, 4]
    manager.close()


def test_saving_an_existing_step_is_a_no_op(tmp_path):
    state, _ = _fresh()
    manager = checkpoints.make_manager(tmp_path)
    assert checkpoints.save(manager, state, {"first": True})
    manager.wait_until_finished()
    changed = state.replace(params=jax.tree.map(lambda x: x + 1, state.params))
    assert not checkpoints.save(manager, changed, {"first": False})
    assert not checkpoints.save(manager, changed, {"first": False}, force=True)
    manager.wait_until_finished()
    restored, config = checkpoints.restore_train_state(manager, state)
    assert config == {"first": True}
    _assert_trees_equal(restored.params, state.params)


def test_spec_is_saved_with_the_step_and_old_checkpoints_still_load(tmp_path):
    state, _ = _fresh()
    manager = checkpoints.make_manager(tmp_path)
    spec = {"network": "MLP", "hidden_dim": 32, "shape": [2]}
    checkpoints.save(manager, state, {"name": "with spec"}, spec=spec)
    checkpoints.save(manager, state.replace(step=jnp.asarray(1, jnp.int32)), {"name": "old"})
    manager.wait_until_finished()
    manager.close()
    assert checkpoints.restore_spec(tmp_path, step=0) == spec
    assert checkpoints.restore_spec(tmp_path) is None  # step 1 was saved without a spec
    info = checkpoints.read_run_info(tmp_path)
    assert (info.step, info.config, info.spec, info.ema_names) == (
        1, {"name": "old"}, None, tuple(state.ema)
    )
    # a checkpoint written before specs and checksums existed: the same items minus those two
    for name in ("spec", "checksums"):
        shutil.rmtree(tmp_path / "checkpoints" / "0" / name, ignore_errors=True)
    assert checkpoints.restore_spec(tmp_path, step=0) is None
    assert checkpoints.restore_config(tmp_path, step=0) == {"name": "with spec"}
    restored, _ = checkpoints.restore_train_state(
        checkpoints.make_manager(tmp_path), state, step=0
    )
    _assert_trees_equal(restored, state)


def test_restore_config_verifies_its_checksum(tmp_path, caplog):
    state, _ = _fresh()
    manager = checkpoints.make_manager(tmp_path)
    for k in (1, 2):
        checkpoints.save(manager, state.replace(step=jnp.asarray(k, jnp.int32)), {"lr": k})
    manager.wait_until_finished()
    manager.close()
    path = tmp_path / "checkpoints" / "2" / "config" / "metadata"
    path.write_text(path.read_text().replace("2", "7"))  # valid JSON, wrong value
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        assert checkpoints.restore_config(tmp_path) == {"lr": 1}
    assert "checksum mismatch in config" in caplog.text
    with pytest.raises(checkpoints.CheckpointError, match="checksum mismatch in config"):
        checkpoints.restore_config(tmp_path, step=2)


def test_readers_do_not_create_a_missing_run(tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in"):
        checkpoints.load_denoiser(missing, build=recipes.build_model)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in"):
        checkpoints.restore_config(missing)
    assert not missing.exists()
