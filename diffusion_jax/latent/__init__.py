"""The latent family: autoencoders, their codec with the latent scale factor, and the LSGM joint
objective (Rombach et al. 2022, LDM; Vahdat et al. 2021, LSGM).

A latent model is any of the library's denoisers trained on ``codec.encode(x)`` plus the
:class:`~diffusion_jax.latent.codec.Codec` that decodes its samples
(:func:`~diffusion_jax.latent.codec.decode_samples`).

Modules: ``autoencoders`` (``Encoder``, ``Decoder``, ``KLAutoencoder``), ``vq``
(``VQAutoencoder``, ``VectorQuantizer``, ``codebook_usage``), ``losses`` (L1/L2 + KL autoencoder
loss, diagonal-Gaussian terms), ``codec`` (``Codec``, ``estimate_scale``, ``decode_samples``),
``lsgm`` (``LSGM``, ``lsgm_terms``, ``lsgm_loss``), ``toys`` (the linear-Gaussian VAE with every
term in closed form).
"""
