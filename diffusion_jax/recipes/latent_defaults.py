"""The latent family's config group ``config.latent`` (added to the base config by
:func:`add_defaults`, called from ``base_config``).

Three stages, each a ``train.py`` run with ``config.model.family = "latent"``:

* ``"autoencoder"``: train the codec (KL or VQ autoencoder) on ``config.data`` images;
* ``"ldm"``: latent diffusion (Rombach et al. 2022): the run ``autoencoder_workdir`` is encoded once
  into a sharded, resumable latent cache, its scale factor (1 / std of the cached latents) goes
  into the LDM run's spec, and ``config.process`` / ``model`` / ``loss`` / ``sample`` train and
  sample the prior in latent space exactly as for pixels;
* ``"lsgm"``: encoder, decoder and latent diffusion prior trained jointly (Vahdat et al. 2021).

The autoencoder fields describe the codec of every stage; the LDM stage checks them against its
autoencoder run (its configs derive from the autoencoder's config, so they agree).
"""

import ml_collections

__all__ = ["add_defaults"]


def add_defaults(config):
    """Add ``config.latent`` to an unlocked ``config`` (no-op if it is already there)."""
    if "latent" in config:
        return config
    config.latent = latent = ml_collections.ConfigDict()
    latent.stage = "autoencoder"  # autoencoder | ldm | lsgm
    # the autoencoder (Rombach et al. 2022, Sec. 3.1): f = 2 ** (len(channel_multipliers) - 1)
    latent.kind = "kl"  # kl (KL-regularised) | vq (vector-quantised)
    latent.latent_channels = 4
    latent.base_channels = 32
    latent.channel_multipliers = (1, 2, 4)  # (1, 2): f = 2; (1, 2, 4): f = 4; (1, 2, 4, 4): f = 8
    latent.num_res_blocks = 1
    latent.attention = False  # self-attention in the middle block
    latent.dropout = 0.0
    latent.reconstruction = "l1"  # l1 | l2 (summed over pixels, as LDM)
    latent.kl_weight = 1e-6  # kl: LDM's weight of KL(q(z|x) || N(0, I))
    latent.codebook_size = 256  # vq
    latent.commitment_weight = 0.25  # vq: beta of van den Oord et al. 2017
    # the LDM stage: the autoencoder run and the latent cache
    latent.autoencoder_workdir = ""  # the finished autoencoder run (required for stage ldm)
    latent.autoencoder_step = 0  # its checkpoint step (0: the newest)
    latent.autoencoder_ema = "first"  # first | raw | an EMA name of the autoencoder run
    latent.cache_dir = ""  # "" : <autoencoder_workdir>/latent_cache/<split>_step<step>_<ema>
    latent.cache_shard_size = 512  # examples per cache shard (resume granularity)
    latent.cache_batch_size = 128  # examples per encoder call
    latent.random_flip = False  # flip latents horizontally (only if asked: they are not images)
    # the LSGM stage (Vahdat et al. 2021): config.process is the prior's (VP for the mixed
    # score), config.model.time_scale its network's c_noise = time_scale * t
    latent.prior_base_channels = 32  # the latent prior's U-Net on the latent shape
    latent.prior_channel_multipliers = (1, 2)
    latent.prior_num_res_blocks = 1
    latent.mixed_score = True  # LSGM Sec. 3.2: residual on the N(0, I) prior's epsilon
    latent.decoder_log_scale = -2.0  # initial log std of the Gaussian decoder p(x|z)
    latent.importance_sampling = True  # t ~ g^2 / sigma^2 (LSGM Sec. 3.3), else uniform
    return config
