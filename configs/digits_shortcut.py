"""Shortcut models (Frans et al. 2024, "One step diffusion via shortcut models") on 8x8 digits from
scratch: a two-time U-Net conditioned on (t, d), flow matching at d = 0 plus the self-consistency
target s(x_t, t, 2d) = [s(x_t, t, d) + s(x'_{t+d}, t + d, d)] / 2 from the EMA model on a quarter
of the batch, d on the dyadic grid 1/128 ... 1; sampled by 1..k jumps uniform in t.
``python train.py --config configs/digits_shortcut.py --workdir runs/digits_shortcut``."""

from configs import digits_edm


def get_config():
    """Digits, shortcut model from scratch."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "shortcut"
    config.flowmap.shortcut_fraction = 0.25
    config.flowmap.shortcut_max_steps = 128
    config.flowmap.target_decay = 0.99  # the EMA model of the bootstrap targets
    config.model.embedding = "fourier"
    config.flowmap.sigma_max = 1000.0  # sampling starts at t = sigma / (1 + sigma) = 0.999
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 3000
    config.train.ema_half_lives = (2000.0,)
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.sample.num_steps = 1
    return config
