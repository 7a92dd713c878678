"""EDM on a 2-D toy set (two moons by default) with a residual MLP; about a minute on a CPU."""

from configs import base


def get_config():
    """Toy 2-D data, EDM recipe with sigma_data = 1 (the toy sets have unit-order spread)."""
    config = base.get_config()
    config.data.name = "two_moons"
    config.data.shape = (2,)
    config.data.dataset_size = 65536
    config.model.network = "mlp"
    config.model.hidden_dim = 128
    config.model.num_layers = 3
    config.model.embedding = "fourier"
    config.model.sigma_data = 1.0
    config.optim.learning_rate = 2e-3
    config.train.num_steps = 3000
    config.train.batch_size = 512
    config.train.ema_half_lives = (50000.0,)
    config.train.log_every = 250
    config.train.sample_every = 0
    config.sample.num_samples = 2000
    config.sample.batch_size = 2000
    config.sample.num_steps = 32
    config.train.num_grid_samples = 2000
    return config
