"""1-rectified flow (flow matching with the independent coupling from N(0, I)) on
scikit-learn's 8x8 digits with the small U-Net of ``digits_edm`` (Liu et al. 2023; Lipman et al.
2023). Library time: t = 0 data, t = 1 noise. ``python train.py --config configs/digits_rf1.py
--workdir runs/digits_rf1``."""

from configs import base


def get_config():
    """Digits, rectified flow, class-conditional U-Net."""
    config = base.get_config()
    config.model.family = "flow"
    config.data.name = "digits"
    config.data.shape = (8, 8, 1)
    config.data.num_classes = 10
    config.train.class_conditional = True
    config.process.name = "rectified_flow"
    config.flow.source = "gaussian"
    config.flow.coupling = "independent"
    config.model.network = "unet"
    config.model.base_channels = 32
    config.model.channel_multipliers = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = ()
    config.model.embedding = "fourier"
    config.model.class_dropout = 0.0
    config.loss.name = "flow_matching"
    config.loss.weighting = "flow_matching"
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 0.0
    config.optim.learning_rate = 2e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 1600
    config.train.batch_size = 64
    config.train.ema_half_lives = (10000.0,)
    config.train.log_every = 100
    config.train.sample_every = 800
    config.train.checkpoint_every = 800
    config.sample.sampler = "rk4"
    config.sample.num_steps = 16
    return config
