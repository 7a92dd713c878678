"""Stage 1 of latent diffusion on CelebA 64x64 (TFDS ``celeb_a`` centre-cropped and resized,
prepared locally): LDM's KL-f4 autoencoder (Rombach et al. 2022, Table 8: f = 4, 3 latent
channels), 64x64x3 -> 16x16x3 latents."""

from configs import base


def get_config():
    """CelebA 64x64, KL autoencoder f = 4."""
    config = base.get_config()
    config.model.family = "latent"
    config.data.name = "celeb_a"
    config.data.shape = (64, 64, 3)
    config.data.image_size = 64
    config.data.random_flip = True
    config.latent.stage = "autoencoder"
    config.latent.kind = "kl"
    config.latent.latent_channels = 3
    config.latent.base_channels = 128
    config.latent.channel_multipliers = (1, 2, 4)
    config.latent.num_res_blocks = 2
    config.latent.attention = True
    config.optim.learning_rate = 4.5e-6 * 64
    config.optim.warmup_steps = 1000
    config.train.num_steps = 200_000
    config.train.batch_size = 64
    config.train.sample_every = 10000
    config.train.checkpoint_every = 5000
    return config
