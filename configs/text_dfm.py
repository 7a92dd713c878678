"""Character-level discrete flow matching (Gat et al. 2024; mask source, linear kappa,
generalised-KL ELBO loss) on the pydoc corpus, windows of 128 characters, a small token
transformer, CPU-sized. ``discrete.source = "uniform"`` gives the uniform-source path."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.family = "discrete"
    config.data.name = "pydoc"
    config.data.shape = (128,)
    config.data.num_classes = 0
    config.discrete.process = "dfm"
    config.discrete.source = "mask"
    config.discrete.kappa_schedule = "linear"
    config.discrete.dfm_loss = "generalized_kl"
    config.discrete.sample_steps = 128
    config.model.hidden_dim = 128
    config.model.num_layers = 4
    config.optim.learning_rate = 1e-3
    config.train.num_steps = 4000
    config.train.batch_size = 32
    config.train.ema_half_lives = (20000.0,)
    config.train.sample_every = 2000
    config.train.checkpoint_every = 2000
    config.train.num_grid_samples = 8
    return config
