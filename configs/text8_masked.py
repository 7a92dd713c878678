"""Character-level masked diffusion (MDLM / MD4) on text8 for users with the data and an
accelerator: windows of 256 characters (Austin et al. 2021, App. B.2; Shi et al. 2024, Sec. 7),
a 12-layer token transformer. text8 is read from a local directory holding ``text8`` or
``text8.zip``: ``--config.data.data_dir=PATH``."""

from configs import text_masked


def get_config():
    config = text_masked.get_config()
    config.data.name = "text8"
    config.data.shape = (256,)
    config.data.data_dir = ""  # set on the command line
    config.model.hidden_dim = 768
    config.model.num_layers = 12
    config.discrete.num_heads = 12
    config.discrete.sample_steps = 256
    config.optim.learning_rate = 3e-4
    config.optim.warmup_steps = 2500
    config.train.batch_size = 512
    config.train.num_steps = 1_000_000
    config.train.ema_half_lives = (5_000_000.0,)
    config.train.sample_every = 50_000
    config.train.checkpoint_every = 10_000
    return config
