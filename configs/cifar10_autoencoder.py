"""Stage 1 of latent diffusion on CIFAR-10 (TFDS, prepared locally: ``--config.data.data_dir``):
LDM's KL-f4 autoencoder (Rombach et al. 2022, Table 8: f = 4, 3 latent channels; channel
multipliers (1, 2, 4), 2 res blocks, L1 + 1e-6 KL; no LPIPS / GAN term offline)."""

from configs import base


def get_config():
    """CIFAR-10 32x32x3 -> 8x8x3 latents."""
    config = base.get_config()
    config.model.family = "latent"
    config.data.name = "cifar10"
    config.data.shape = (32, 32, 3)
    config.data.num_classes = 10
    config.data.random_flip = True
    config.latent.stage = "autoencoder"
    config.latent.kind = "kl"
    config.latent.latent_channels = 3
    config.latent.base_channels = 128
    config.latent.channel_multipliers = (1, 2, 4)
    config.latent.num_res_blocks = 2
    config.latent.attention = True
    config.optim.learning_rate = 4.5e-6 * 64  # LDM: base lr 4.5e-6 scaled by the batch size
    config.optim.warmup_steps = 1000
    config.train.num_steps = 200_000
    config.train.batch_size = 64
    config.train.sample_every = 10000
    config.train.checkpoint_every = 5000
    return config
