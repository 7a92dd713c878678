"""Fault injection on checkpoints and the run lock: kill -9 during a save, a truncated newest
step, flipped bytes in the EMA and the params, two processes on one run directory, a kill -9
while holding the lock, and a resume onto a changed structure.

Run as a script (``python tests/test_fault_injection.py MODE DIR``) it is the child process that
the tests kill.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@functools.cache
def _initial(hidden_dim=32, ema_names=("fast", "slow")):
    """A small TrainState (residual MLP on 2-D data, Adam, two EMAs)."""
    import jax
    from flax import nnx

    from diffusion_jax import networks, training

    network = networks.MLP(2, hidden_dim=hidden_dim, num_layers=2, embedding_dim=16,
                           rngs=nnx.Rngs(0))
    optimizer, _ = training.make_optimizer(learning_rate=1e-2)
    state, _ = training.create_train_state(
        network, optimizer, key=jax.random.key(0), ema_names=ema_names
    )
    return state


def _state_at(step, **kwargs):
    """A deterministic, distinct state for each ``step``."""
    import jax
    import jax.numpy as jnp

    state = _initial(**kwargs)
    return state.replace(
        step=jnp.asarray(step, jnp.int32),
        params=jax.tree.map(lambda x: x + step, state.params),
        ema=jax.tree.map(lambda x: x - 0.5 * step, state.ema),
    )


def _child(mode, workdir):
    """Save step 1 completely, then die (SIGKILL) during the save of step 2."""
    from diffusion_jax import checkpoints

    manager = checkpoints.make_manager(workdir, max_to_keep=3)
    checkpoints.save(manager, _state_at(1), {"step": 1})
    manager.wait_until_finished()
    if mode == "before-commit":  # every file of step 2 written, killed before it is committed
        from orbax.checkpoint._src.path import atomicity

        def die(self):
            os.kill(os.getpid(), signal.SIGKILL)

        atomicity.AtomicRenameTemporaryPath.finalize = die
        atomicity.CommitFileTemporaryPath.finalize = die
    checkpoints.save(manager, _state_at(2), {"step": 2})
    if mode == "in-flight":  # killed while Orbax writes in the background
        os.kill(os.getpid(), signal.SIGKILL)
    manager.wait_until_finished()
    sys.exit(3)  # not reached: the save kills the process


def _resume_child(workdir):
    """Resume a run whose two newest steps are truncated; print the step restored."""
    from diffusion_jax import checkpoints

    manager = checkpoints.make_manager(workdir)
    state, _ = checkpoints.restore_train_state(manager, _initial())
    manager.close()
    print("resumed", int(state.step), flush=True)


def _run_child(mode, workdir):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, os.path.abspath(__file__), mode, str(workdir)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _assert_trees_equal(a, b):
    import jax
    import numpy as np

    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _save_steps(workdir, steps, *, max_to_keep=3):
    from diffusion_jax import checkpoints

    manager = checkpoints.make_manager(workdir, max_to_keep=max_to_keep)
    for step in steps:
        assert checkpoints.save(manager, _state_at(step), {"step": step}, spec={"net": step})
    manager.wait_until_finished()
    return manager


def _resume(workdir, max_to_keep=3, **kwargs):
    from diffusion_jax import checkpoints

    manager = checkpoints.make_manager(workdir, max_to_keep=max_to_keep)
    state, config = checkpoints.restore_train_state(manager, _initial(**kwargs))
    return manager, state, config


def _data_files(workdir, step, item):
    """The OCDBT data files of one item, largest first."""
    pattern = os.path.join(workdir, "checkpoints", str(step), item, "ocdbt.process_*", "d", "*")
    return sorted(glob.glob(pattern), key=os.path.getsize, reverse=True)


# ------------------------------------------------------------------------------- kill -9 save


def test_kill_before_commit_keeps_previous_step(tmp_path):
    result = _run_child("before-commit", tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    manager, state, config = _resume(tmp_path)
    assert manager.all_steps() == [1] and config == {"step": 1}
    _assert_trees_equal(state, _state_at(1))
    from diffusion_jax import checkpoints

    assert checkpoints.save(manager, _state_at(2), {"step": 2})  # the step can be written again
    manager.wait_until_finished()
    manager.close()
    _, state, _ = _resume(tmp_path)
    _assert_trees_equal(state, _state_at(2))


def test_kill_in_flight_leaves_an_intact_step(tmp_path):
    result = _run_child("in-flight", tmp_path)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    manager, state, config = _resume(tmp_path)
    step = int(state.step)
    assert step in (1, 2) and config == {"step": step}
    _assert_trees_equal(state, _state_at(step))
    manager.close()


# ------------------------------------------------------------------------ corrupt newest step


def test_resume_past_truncated_steps_prints_one_line_each(tmp_path):
    _save_steps(tmp_path, [1, 2, 3]).close()
    for step in (2, 3):
        for path in _data_files(tmp_path, step, "ema"):
            os.truncate(path, 0)
    result = _run_child("resume", tmp_path)
    assert result.returncode == 0 and result.stdout.split() == ["resumed", "1"], result.stderr
    lines = result.stderr.splitlines()  # "unreadable" and "moved aside" for each, no tracebacks
    assert len(lines) == 4 and all("step 3" in x or "step 2" in x for x in lines), lines[:8]


def test_truncated_newest_step_is_moved_aside_and_rewritten(tmp_path, caplog):
    from diffusion_jax import checkpoints

    _save_steps(tmp_path, [1, 2], max_to_keep=2).close()
    for path in _data_files(tmp_path, 2, "params"):
        os.truncate(path, 0)
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        manager, state, _ = _resume(tmp_path, max_to_keep=2)
    _assert_trees_equal(state, _state_at(1))
    warnings = [r.getMessage() for r in caplog.records if r.name == checkpoints.__name__]
    assert "step 2 is unreadable" in warnings[0] and all(len(w) < 200 for w in warnings)
    (moved,) = glob.glob(str(tmp_path / "checkpoints_corrupt" / "2_*"))
    assert os.path.isdir(os.path.join(moved, "params"))  # kept, not deleted
    assert manager.all_steps() == [1]
    # retraining writes step 2 again; max_to_keep=2 prunes step 1 only once 2 and 3 are good
    for step in (2, 3):
        assert checkpoints.save(manager, _state_at(step), {"step": step})
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 3]
    manager.close()
    for step in (2, 3):
        state, config = checkpoints.restore_train_state(
            checkpoints.make_manager(tmp_path), _initial(), step=step
        )
        _assert_trees_equal(state, _state_at(step))


def _flip_byte(path):
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x40
        f.seek(0)
        f.write(bytes(data))


def test_flipped_byte_in_params_is_detected_on_resume(tmp_path, caplog):
    from diffusion_jax import checkpoints

    _save_steps(tmp_path, [1, 2]).close()
    _flip_byte(_data_files(tmp_path, 2, "params")[0])
    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        manager, state, _ = _resume(tmp_path)
    manager.close()
    _assert_trees_equal(state, _state_at(1))
    assert "checksum mismatch in params/" in caplog.text
    assert glob.glob(str(tmp_path / "checkpoints_corrupt" / "2_*"))


def test_flipped_byte_in_ema_is_detected_by_the_loader(tmp_path, caplog):
    from flax import nnx

    from diffusion_jax import checkpoints

    _save_steps(tmp_path, [1, 2]).close()
    _flip_byte(_data_files(tmp_path, 2, "ema")[0])
    network = nnx.merge(*nnx.split(_network()))

    def build(config, spec):
        return network, lambda net: net

    with caplog.at_level(logging.WARNING, logger=checkpoints.__name__):
        run = checkpoints.load_run(tmp_path, build=build, ema="slow")
    assert "checksum mismatch in ema/" in caplog.text
    # config, spec and weights all come from the step used (the reader moves nothing)
    assert (run.step, run.config, run.spec, run.ema) == (1, {"step": 1}, {"net": 1}, "slow")
    _assert_trees_equal(nnx.state(run.denoiser, nnx.Param), _state_at(1).ema["slow"])
    assert not os.path.exists(tmp_path / "checkpoints_corrupt")
    with pytest.raises(checkpoints.CheckpointError, match="checksum mismatch"):
        checkpoints.load_run(tmp_path, build=build, step=2)


@functools.cache
def _network():
    from flax import nnx

    from diffusion_jax import networks

    return networks.MLP(2, hidden_dim=32, num_layers=2, embedding_dim=16, rngs=nnx.Rngs(0))


# --------------------------------------------------------------------------- changed structure


def _assert_mismatch_is_one_line(tmp_path, capfd, pattern, **kwargs):
    from diffusion_jax import checkpoints

    before = sorted(os.listdir(tmp_path / "checkpoints"))
    with pytest.raises(checkpoints.CheckpointMismatchError) as info:
        _resume(tmp_path, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 600, message
    assert pattern in message, message
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before  # nothing moved or deleted
    assert not os.path.exists(tmp_path / "checkpoints_corrupt")
    assert len(capfd.readouterr().err.splitlines()) < 5


def test_structure_change_is_one_line_and_moves_nothing(tmp_path, capfd):
    _save_steps(tmp_path, [1, 2]).close()
    capfd.readouterr()
    _assert_mismatch_is_one_line(
        tmp_path, capfd,
        "params/blocks/0/film/kernel/value: stored (32, 64) float32, expected (16, 32) float32",
        hidden_dim=16,
    )
    _assert_mismatch_is_one_line(
        tmp_path, capfd, "ema/fast/", ema_names=("slow",)
    )
    _, state, _ = _resume(tmp_path)  # the intact steps are still there and readable
    _assert_trees_equal(state, _state_at(2))


def test_changed_optimiser_is_a_mismatch(tmp_path, capfd):
    import optax

    from diffusion_jax import checkpoints

    _save_steps(tmp_path, [1]).close()
    target = _initial()
    clipped = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    target = target.replace(opt_state=clipped.init(target.params))
    with pytest.raises(checkpoints.CheckpointMismatchError, match="opt_state/"):
        checkpoints.restore_train_state(checkpoints.make_manager(tmp_path), target)
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


# ------------------------------------------------------------------------------------ run lock


def _lock_child(workdir, hold_seconds):
    from diffusion_jax import runlock

    try:
        with runlock.RunLock(workdir):
            print("locked", flush=True)
            time.sleep(hold_seconds)
    except runlock.RunLockedError as error:
        print(error, flush=True)
        sys.exit(2)


def _start_lock_child(workdir, hold_seconds):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "lock", str(workdir), str(hold_seconds)],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_second_process_fails_fast_naming_the_holder(tmp_path):
    from diffusion_jax import runlock

    with runlock.RunLock(tmp_path) as lock:
        assert lock.held
        child = _start_lock_child(tmp_path, 0)
        out, _ = child.communicate(timeout=60)
        assert child.returncode == 2
        (line,) = out.splitlines()
        assert f"pid {os.getpid()}" in line and "in use" in line
        with pytest.raises(runlock.RunLockedError):  # also within one process
            runlock.RunLock(tmp_path).acquire()
    child = _start_lock_child(tmp_path, 0)  # released on exit: the next one gets it
    assert child.communicate(timeout=60)[0].strip() == "locked" and child.returncode == 0
    with runlock.RunLock(tmp_path) as lock:
        assert lock.stale is None  # a clean release leaves no record behind


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    from diffusion_jax import runlock

    child = _start_lock_child(tmp_path, 60)
    assert child.stdout.readline().strip() == "locked"
    with pytest.raises(runlock.RunLockedError, match=f"pid {child.pid}"):
        runlock.RunLock(tmp_path).acquire()
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    with runlock.RunLock(tmp_path) as lock:
        assert lock.held and lock.stale["pid"] == child.pid
        holder = json.loads(open(lock.path).read())
        assert holder["pid"] == os.getpid()


def test_only_the_primary_process_takes_the_lock(tmp_path):
    from diffusion_jax import runlock

    with runlock.RunLock(tmp_path), runlock.RunLock(tmp_path, primary=False) as other:
        assert not other.held


if __name__ == "__main__":
    if sys.argv[1] == "lock":
        _lock_child(sys.argv[2], float(sys.argv[3]))
    elif sys.argv[1] == "resume":
        _resume_child(sys.argv[2])
    else:
        _child(sys.argv[1], sys.argv[2])
