"""Stage 1 of latent diffusion on the built-in 32x32 digits: a KL-regularised autoencoder with
f = 4 (32x32x1 -> 8x8x2 latents), LDM's L1 + 1e-6 KL loss (Rombach et al. 2022, App. G), CPU-sized
(``python train.py --config configs/digits32_autoencoder.py --workdir runs/digits32_autoencoder``).
"""

from configs import base


def get_config():
    """digits32, KL autoencoder f = 4, two latent channels."""
    config = base.get_config()
    config.model.family = "latent"
    config.data.name = "digits32"
    config.data.shape = (32, 32, 1)
    config.data.num_classes = 10
    config.latent.stage = "autoencoder"
    config.latent.kind = "kl"
    config.latent.latent_channels = 2
    config.latent.base_channels = 16
    config.latent.channel_multipliers = (1, 2, 2)  # f = 4
    config.latent.num_res_blocks = 1
    config.latent.reconstruction = "l1"
    config.latent.kl_weight = 1e-6
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 50
    config.train.num_steps = 1000
    config.train.batch_size = 32
    config.train.ema_half_lives = (2000.0,)
    config.train.log_every = 100
    config.train.sample_every = 0
    config.train.checkpoint_every = 500
    config.train.num_grid_samples = 32
    return config
