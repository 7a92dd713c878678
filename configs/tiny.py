"""A tiny run for tests and the notebook: two moons, a small MLP, a few hundred steps."""

from configs import toy2d_edm


def get_config():
    """Seconds on a CPU."""
    config = toy2d_edm.get_config()
    config.data.dataset_size = 8192
    config.model.hidden_dim = 64
    config.model.num_layers = 2
    config.model.embedding_dim = 32
    config.optim.learning_rate = 3e-3
    config.optim.warmup_steps = 20
    config.train.num_steps = 400
    config.train.batch_size = 256
    config.train.ema_half_lives = (10000.0,)
    config.train.log_every = 100
    config.train.checkpoint_every = 200
    config.train.num_grid_samples = 512
    config.sample.num_steps = 16
    config.sample.num_samples = 512
    config.sample.batch_size = 512
    return config
