"""EDM on MNIST 28x28 from a local TFDS directory (``--config.data.data_dir``)."""

from configs import base


def get_config():
    """MNIST, EDM recipe, small DDPM++-style U-Net, class-conditional with CFG label dropout."""
    config = base.get_config()
    config.data.name = "mnist"
    config.data.shape = (28, 28, 1)
    config.data.num_classes = 10
    config.train.class_conditional = True
    config.model.base_channels = 64
    config.model.channel_multipliers = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (7,)
    config.model.dropout = 0.1
    config.optim.learning_rate = 5e-4
    config.optim.warmup_steps = 1000
    config.train.num_steps = 50000
    config.train.batch_size = 128
    config.train.ema_half_lives = (500000.0,)
    config.train.sample_every = 5000
    config.train.checkpoint_every = 5000
    config.sample.guidance_scale = 1.0
    return config
