"""Stage 2 of latent diffusion on the built-in 32x32 digits: EDM (Karras et al. 2022) in the 8x8x2
latent space of ``configs/digits32_autoencoder.py``'s run (given by path: ``--config.latent.
autoencoder_workdir``, default ``runs/digits32_autoencoder``), class-conditional, on the latent
cache scaled to unit std (so ``sigma_data = 1``)."""

from configs import digits32_autoencoder


def get_config():
    """digits32 LDM: the autoencoder settings of stage 1, a small U-Net prior on the latents."""
    config = digits32_autoencoder.get_config()
    config.latent.stage = "ldm"
    config.latent.autoencoder_workdir = "runs/digits32_autoencoder"
    config.train.class_conditional = True
    config.model.network = "unet"
    config.model.sigma_data = 1.0  # the scale factor makes the latents unit-std
    config.model.base_channels = 32
    config.model.channel_multipliers = (1, 2)
    config.model.num_res_blocks = 1
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 1600
    config.train.batch_size = 64
    config.train.ema_half_lives = (10000.0,)
    config.train.sample_every = 800
    config.train.checkpoint_every = 800
    config.train.num_grid_samples = 64
    return config
