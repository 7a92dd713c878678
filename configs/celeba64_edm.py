"""EDM on CelebA at 64x64 (TFDS ``celeb_a`` centre-cropped and resized to 64)."""

from configs import base


def get_config():
    """CelebA 64x64, EDM recipe, DDPM++ U-Net with four levels."""
    config = base.get_config()
    config.data.name = "celeb_a"
    config.data.shape = (64, 64, 3)
    config.data.image_size = 64
    config.data.random_flip = True
    config.model.base_channels = 128
    config.model.channel_multipliers = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.train.num_steps = 400_000
    config.train.batch_size = 128
    config.train.ema_half_lives = (500_000.0,)
    config.train.sample_every = 20000
    config.train.checkpoint_every = 5000
    return config
