"""LSGM (Vahdat et al. 2021) on the built-in 32x32 digits, small models: the encoder / decoder of
``configs/digits32_autoencoder.py`` (f = 4, 8x8x2 latents, Gaussian decoder with a learned scale)
and a small U-Net latent prior on the VP process (mixed score, Sec. 3.2), trained jointly on the
negative ELBO with the likelihood-weighted, importance-sampled cross entropy (Sec. 3.3)."""

from configs import digits32_autoencoder


def get_config():
    """digits32 LSGM: VP prior in process time (epsilon network, c_noise = 1000 t)."""
    config = digits32_autoencoder.get_config()
    config.latent.stage = "lsgm"
    config.latent.prior_base_channels = 32
    config.latent.prior_channel_multipliers = (1, 2)
    config.latent.prior_num_res_blocks = 1
    config.latent.mixed_score = True
    config.latent.importance_sampling = True
    config.train.class_conditional = False
    config.process.name = "vp"
    config.model.time_scale = 1000.0
    config.loss.t_min = 1e-5
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 1200
    config.train.batch_size = 64
    config.train.ema_half_lives = (10000.0,)
    config.train.sample_every = 0
    config.train.checkpoint_every = 600
    config.train.num_grid_samples = 64
    config.sample.sampler = "heun"
    config.sample.grid = "time_uniform"
    config.sample.num_steps = 18
    return config
