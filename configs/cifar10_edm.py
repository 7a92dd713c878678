"""EDM's CIFAR-10 recipe (Karras et al. 2022, Table 7, config F, unconditional DDPM++):
batch 512, lr 1e-3 with a 10M-image ramp-up, EMA half-life 500k images (ramp-up 0.05), dropout
0.13, 200M images; Heun with 18 steps on the Karras grid."""

from configs import base


def get_config():
    """CIFAR-10, EDM process and preconditioning."""
    config = base.get_config()
    config.data.name = "cifar10"
    config.data.shape = (32, 32, 3)
    config.data.num_classes = 10
    config.data.random_flip = True
    config.model.embedding = "positional"
    config.model.base_channels = 128
    config.model.channel_multipliers = (2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.13
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 10_000_000 // 512
    config.optim.grad_clip_norm = 0.0
    config.train.num_steps = 200_000_000 // 512
    config.train.batch_size = 512
    config.train.ema_half_lives = (500_000.0,)
    config.train.ema_rampup_ratio = 0.05
    config.train.sample_every = 20000
    config.train.checkpoint_every = 5000
    return config
