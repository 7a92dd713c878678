"""MeanFlow on CIFAR-10 (Geng et al. 2025; the released PyTorch CIFAR-10 setting): unconditional
U-Net with two time inputs, 75% of the pairs with r != t, adaptive weight p = 0.75, c = 1e-3,
batch 1024, Adam lr 6e-4 (0.9, 0.999) with a 200-epoch warm-up, dropout 0.2, 800k iterations,
EMA 0.99995; published FID 2.92 at one step. For users with the data and accelerators."""

from configs import cifar10_edm


def get_config():
    """CIFAR-10, MeanFlow."""
    config = cifar10_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "meanflow"
    config.flowmap.meanflow_ratio = 0.75
    config.flowmap.meanflow_power = 0.75
    config.flowmap.meanflow_c = 1e-3
    config.flowmap.sigma_max = 1000.0
    config.flowmap.time_scale = 1000.0  # positional embedding of 1000 t
    config.model.embedding = "positional"
    config.train.class_conditional = False
    config.model.dropout = 0.2
    config.optim.learning_rate = 6e-4
    config.optim.warmup_steps = 200 * 50_000 // 1024
    config.train.batch_size = 1024
    config.train.num_steps = 800_000
    config.train.ema_half_lives = ()
    config.train.ema_decays = (0.99995,)
    config.sample.num_steps = 1
    return config
