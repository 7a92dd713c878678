"""Stage 2 of latent diffusion on CelebA 64x64 (LDM-KL-4 style, Rombach et al. 2022): EDM in the
16x16x3 latent space of ``configs/celeba64_autoencoder.py``'s run
(``--config.latent.autoencoder_workdir``, default ``runs/celeba64_autoencoder``)."""

from configs import celeba64_autoencoder


def get_config():
    """CelebA-64 LDM: EDM in latent space (sigma_data = 1), a three-level U-Net."""
    config = celeba64_autoencoder.get_config()
    config.latent.stage = "ldm"
    config.latent.autoencoder_workdir = "runs/celeba64_autoencoder"
    config.model.sigma_data = 1.0
    config.model.base_channels = 128
    config.model.channel_multipliers = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (8,)
    config.model.dropout = 0.1
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.train.num_steps = 400_000
    config.train.batch_size = 128
    config.train.ema_half_lives = (500_000.0,)
    config.train.sample_every = 20000
    config.train.checkpoint_every = 5000
    return config
