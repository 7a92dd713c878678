"""score_sde's DDPM++ (VP, continuous) CIFAR-10 recipe (Song et al. 2021, App. H;
``configs/vp/cifar10_ddpmpp_continuous.py``): epsilon network with c_noise = 999 t, t ~ U[1e-5, 1],
lr 2e-4 with 5000 warm-up steps, clip 1, batch 128, EMA 0.9999, dropout 0.1, 1.3M steps."""

from configs import base


def get_config():
    """CIFAR-10, VP SDE, DDPM++ U-Net, epsilon MSE."""
    config = base.get_config()
    config.data.name = "cifar10"
    config.data.shape = (32, 32, 3)
    config.data.num_classes = 10
    config.data.random_flip = True
    config.process.name = "vp"
    config.model.preconditioning = "process"
    config.model.parameterisation = "epsilon"
    config.model.time_scale = 999.0
    config.model.embedding = "positional"
    config.model.base_channels = 128
    config.model.channel_multipliers = (1, 2, 2, 2)
    config.model.num_res_blocks = 4
    config.model.attention_resolutions = (16,)
    config.model.dropout = 0.1
    config.loss.t_distribution = "uniform"
    config.loss.t_min = 1e-5
    config.loss.weighting = "epsilon"
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip_norm = 1.0
    config.train.num_steps = 1_300_000
    config.train.batch_size = 128
    config.train.ema_half_lives = ()
    config.train.ema_decays = (0.9999,)
    config.train.sample_every = 50000
    config.train.checkpoint_every = 10000
    config.sample.sampler = "heun"
    config.sample.grid = "edm_vp"
    config.sample.num_steps = 18
    return config
