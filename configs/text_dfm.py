"""Character-level discrete flow matching (Gat et al. 2024; mask source, linear kappa,
generalised-KL ELBO loss) on the pydoc corpus, windows of 128 characters, a small token
transformer, CPU-sized. ``discrete.source = "uniform"`` gives the uniform-source path."""

from configs import text_masked


def get_config():
    """``text_masked`` with the discrete-flow-matching mixture path (time-conditioned network)."""
    config = text_masked.get_config()
    config.discrete.process = "dfm"
    config.discrete.source = "mask"
    config.discrete.kappa_schedule = "linear"
    config.discrete.dfm_loss = "generalized_kl"
    config.discrete.time_conditioning = True
    return config
