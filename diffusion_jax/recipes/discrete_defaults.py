"""The ``config.discrete`` group of the base config (the discrete family's settings);
``add_defaults`` is idempotent."""

from __future__ import annotations

import ml_collections

__all__ = ["add_defaults"]


def _group():
    group = ml_collections.ConfigDict()
    group.process = "masked"  # d3pm | masked | dfm
    # D3PM (Austin et al. 2021)
    group.d3pm_kind = "absorbing"  # uniform | absorbing | gaussian
    group.beta_schedule = ""  # linear | cosine | jsd ("" = the kind's default)
    group.num_timesteps = 1000  # T
    group.beta_start = 0.02  # linear schedule
    group.beta_end = 1.0
    group.hybrid_coeff = 0.001  # lambda of L_vb + lambda CE (0 = pure bound)
    # masked diffusion (MDLM / MD4)
    group.mask_schedule = "linear"  # linear | cosine | polynomial
    group.exponent = 1.0  # polynomial masking / kappa schedules
    # discrete flow matching (Gat et al. 2024)
    group.source = "mask"  # mask | uniform
    group.kappa_schedule = "linear"  # linear | cosine | polynomial
    group.dfm_loss = "generalized_kl"  # generalized_kl | cross_entropy
    # data: config.data.name "digits" (17 levels, data.shape (8, 8)) or "pydoc" (characters,
    # data.shape (length,)); tokens travel as {"tokens": int32 (batch, *data.shape)}
    # network (also reads model.hidden_dim / num_layers / embedding / embedding_dim for the
    # transformer and model.base_channels / channel_multipliers / num_res_blocks /
    # attention_resolutions / dropout for the U-Net)
    group.network = "token_transformer"  # token_transformer | unet_logits
    group.num_heads = 4
    group.unet_channels = 32
    group.time_conditioning = True
    # sampling and evaluation
    group.sample_steps = 128  # masked / dfm grid size (D3PM always takes T steps)
    group.sample_dtype = "float32"  # float32 | float64 (needs jax_enable_x64)
    group.cache = True  # masked sampler: skip the network when nothing changed
    group.eval_draws = 1  # NELBO estimates per test example
    return group


def add_defaults(config):
    """Add the ``config.discrete`` group."""
    with config.unlocked():
        if "discrete" not in config:
            config.discrete = _group()
    return config
