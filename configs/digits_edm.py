"""The default job: class-conditional EDM on scikit-learn's 8x8 digits with a small U-Net, ~5 minutes on a 2-core
CPU (``python train.py --config configs/digits_edm.py --workdir runs/digits``)."""

from configs import base


def get_config():
    """Digits, EDM recipe, small U-Net."""
    config = base.get_config()
    config.data.name = "digits"
    config.data.shape = (8, 8, 1)
    config.data.num_classes = 10
    config.train.class_conditional = True  # label dropout 0.1: sample.py --guidance_scale works
    config.model.network = "unet"
    config.model.base_channels = 32
    config.model.channel_multipliers = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 1600
    config.train.batch_size = 64
    config.train.ema_half_lives = (10000.0,)
    config.train.log_every = 100
    config.train.sample_every = 800
    config.train.checkpoint_every = 800
    return config
