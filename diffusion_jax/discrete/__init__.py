"""The discrete-data family: categorical forward processes (D3PM, masked diffusion, discrete
flow matching's mixture path), their ELBO losses, samplers with a tail-keeping categorical draw,
likelihoods in bits, token networks and categorical data.

Conventions (``processes`` docstring): transition matrices are row-stochastic,
``Q[i, j] = q(x_t = j | x_{t-1} = i)``; the mask state (where there is one) is index ``K``;
networks return ``K`` logits per token, ``network(tokens, t, cond=None)``.
"""
