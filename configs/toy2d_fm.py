"""Flow matching with the independent coupling on the torchcfm toy protocol: 8 Gaussians (scale
5, torchcfm's "var 0.1") -> two moons (noise 0.2, x 3 - 1) with a small MLP (Tong et al. 2023,
Sec. 5.1; REFERENCES 4.2). Library time: t = 0 data (moons), t = 1 source (8 Gaussians).

``python train.py --config configs/toy2d_fm.py --workdir runs/toy2d_fm`` (a few minutes on CPU);
``python sample.py --workdir runs/toy2d_fm --sampler euler --num_steps 1 --num_samples 2000
--output OUT.npz`` (the .npz holds the points under ``samples``)."""

from configs import base


def flow_toy_config(coupling="independent"):
    """The shared toy settings of the flow configs."""
    config = base.get_config()
    config.model.family = "flow"
    config.data.name = "moons_torchcfm"
    config.data.shape = (2,)
    config.data.dataset_size = 65536
    config.process.name = "rectified_flow"  # x_t = (1 - t) x_data + t x_source
    config.flow.source = "eight_gaussians_torchcfm"
    config.flow.coupling = coupling
    config.model.network = "mlp"
    config.model.hidden_dim = 64
    config.model.num_layers = 3
    config.model.embedding = "fourier"
    config.model.embedding_dim = 32
    config.model.class_dropout = 0.0
    config.loss.name = "flow_matching"
    config.loss.weighting = "flow_matching"
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 0.0
    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.train.num_steps = 10000  # torchcfm trains 20k; 10k measured in benchmarks/flows.py
    config.train.batch_size = 256
    config.train.ema_decays = (0.999,)
    config.train.ema_half_lives = ()
    config.train.log_every = 250
    config.train.sample_every = 0
    config.train.checkpoint_every = 1000
    config.train.num_grid_samples = 2000
    config.sample.sampler = "dopri5"
    config.sample.num_steps = 100
    config.sample.num_samples = 2000
    config.sample.batch_size = 2000
    config.eval.num_samples = 2000
    return config


def get_config():
    """Independent coupling (I-CFM, sigma = 0)."""
    return flow_toy_config("independent")
