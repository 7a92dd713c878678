"""MeanFlow (Geng et al. 2025, "Mean flows for one-step generative modeling") on 8x8 digits from
scratch: a two-time U-Net predicts the average velocity u(z, r, t) on the rectified-flow path, the
`jax.jvp` target u = v - (t - r)(v d_z u + d_t u) under stop-gradient, adaptive weight
1 / sg(||delta||^2 + c)^p, 25% of the pairs with r != t (the paper's ImageNet default); sampled by
1..k jumps uniform in t. ``python train.py --config configs/digits_meanflow.py --workdir
runs/digits_meanflow``."""

from configs import digits_edm


def get_config():
    """Digits, MeanFlow from scratch."""
    config = digits_edm.get_config()
    config.model.family = "flowmap"
    config.flowmap.objective = "meanflow"
    config.flowmap.meanflow_ratio = 0.25
    config.flowmap.meanflow_power = 1.0
    config.model.embedding = "fourier"
    config.flowmap.sigma_max = 1000.0  # sampling starts at t = sigma / (1 + sigma) = 0.999
    config.model.class_dropout = 0.1
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 3000
    config.train.ema_half_lives = (2000.0,)
    config.train.sample_every = 1000
    config.train.checkpoint_every = 1000
    config.sample.num_steps = 1
    return config
