"""Stage 2 of latent diffusion on CIFAR-10: the EDM recipe's DDPM++-style U-Net (smaller: latents
are 8x8x3) on the cached latents of ``configs/cifar10_autoencoder.py``'s run
(``--config.latent.autoencoder_workdir``, default ``runs/cifar10_autoencoder``)."""

from configs import cifar10_autoencoder


def get_config():
    """CIFAR-10 LDM: EDM process and preconditioning in latent space (sigma_data = 1)."""
    config = cifar10_autoencoder.get_config()
    config.latent.stage = "ldm"
    config.latent.autoencoder_workdir = "runs/cifar10_autoencoder"
    config.model.sigma_data = 1.0
    config.model.base_channels = 128
    config.model.channel_multipliers = (2, 2)
    config.model.num_res_blocks = 4
    config.model.attention_resolutions = (4,)
    config.model.dropout = 0.13
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 10_000_000 // 512
    config.train.num_steps = 200_000_000 // 512
    config.train.batch_size = 512
    config.train.ema_half_lives = (500_000.0,)
    config.train.sample_every = 20000
    config.train.checkpoint_every = 5000
    return config
