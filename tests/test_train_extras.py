"""The family hook ``train_extras``: a frozen pytree (arrays and static parts) and the loss context
reach every train step of ``recipes.train``; a frozen pytree without a context is refused."""

import jax.numpy as jnp
import pytest

from diffusion_jax.recipes import gaussian, training_loop
from diffusion_jax.recipes.defaults import load_config
from diffusion_jax.recipes.training_loop import TrainExtras, train


def _config():
    return load_config("configs/tiny.py", {"train.num_steps": "20", "train.log_every": "10",
                                           "train.checkpoint_every": "20",
                                           "train.sample_every": "0", "train.num_grid_samples": "8"})


def test_frozen_pytree_and_context_reach_the_loss(tmp_path, monkeypatch):
    offset = 1000.0
    frozen = {"double": lambda value: 2.0 * value, "offset": jnp.asarray(offset / 2)}
    base_make_loss_fn = gaussian.make_loss_fn
    steps_seen = []

    def make_loss_fn(config, wrap):
        base = base_make_loss_fn(config, wrap)

        def loss_fn(network, batch, key, context):
            steps_seen.append(context.step)  # traced once per compilation
            return base(network, batch, key) + context.frozen["double"](context.frozen["offset"])

        return loss_fn

    monkeypatch.setattr(gaussian, "make_loss_fn", make_loss_fn)
    monkeypatch.setattr(gaussian, "train_extras",
                        lambda config: TrainExtras(with_context=True, frozen=frozen),
                        raising=False)
    result = train(_config(), tmp_path / "run")
    assert steps_seen, "the loss never received a context"
    plain_loss = result.metrics["loss"] - offset
    assert 0.0 < plain_loss < 5.0  # the denoising loss plus exactly the frozen offset


def test_frozen_pytree_without_context_is_refused(monkeypatch):
    monkeypatch.setattr(gaussian, "train_extras",
                        lambda config: TrainExtras(with_context=False, frozen={"a": jnp.ones(2)}),
                        raising=False)
    with pytest.raises(ValueError, match="with_context=False"):
        training_loop.train_extras(gaussian, _config())
