"""Pixel-space EDM on the built-in 32x32 digits: the baseline of the latent benchmark
(``benchmarks/latent.py``), with the optimiser, batch and steps of ``configs/digits32_ldm.py``."""

from configs import digits_edm


def get_config():
    """digits32, EDM recipe, a three-level U-Net (32 -> 16 -> 8)."""
    config = digits_edm.get_config()
    config.data.name = "digits32"
    config.data.shape = (32, 32, 1)
    config.model.base_channels = 32
    config.model.channel_multipliers = (1, 2, 2)
    config.model.num_res_blocks = 1
    config.train.num_grid_samples = 64
    return config
