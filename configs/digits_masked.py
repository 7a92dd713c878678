"""Masked diffusion (MDLM / MD4, linear schedule, continuous-time ELBO) on scikit-learn's digits
as 17-level categorical 8x8 images, a small token transformer, CPU-sized."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.family = "discrete"
    config.data.name = "digits"
    config.data.shape = (8, 8)
    config.data.num_classes = 10
    config.discrete.process = "masked"
    config.discrete.time_conditioning = False  # MDLM: p(x0 | x_t) does not depend on t; exact cache
    config.discrete.mask_schedule = "linear"
    config.discrete.sample_steps = 64
    config.model.hidden_dim = 128
    config.model.num_layers = 4
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 3000
    config.train.batch_size = 64
    config.train.ema_half_lives = (20000.0,)
    config.train.sample_every = 1500
    config.train.checkpoint_every = 1500
    config.train.num_grid_samples = 64
    return config
