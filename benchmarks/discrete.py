"""Discrete family at CPU size: NELBO in bits after a short training run, beside references.

Tasks:

* ``toy``: masked diffusion on a small Markov chain (K = 4 classes, L = 6 tokens) whose entropy
  is exact; the trained model's NELBO must lie above it (a bound) and the gap is reported.
* ``digits_d3pm`` / ``digits_masked``: bits per pixel of scikit-learn's digits as 17-level data on
  the test split, beside independent per-pixel categoricals fitted on the train split.
* ``text_masked`` / ``text_dfm``: bits per character on the pydoc corpus's test split, beside
  unigram and bigram models fitted on the train split.

``python benchmarks/discrete.py --task toy --steps 1500`` writes
``benchmarks/results/discrete_<task>.json`` (and samples beside it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from diffusion_jax import training  # noqa: E402
from diffusion_jax.discrete import likelihood, losses, processes, samplers, toys  # noqa: E402
from diffusion_jax.discrete.networks import TokenTransformer  # noqa: E402
from diffusion_jax.recipes import discrete as recipe  # noqa: E402
from diffusion_jax.recipes.builders import training_rngs  # noqa: E402
from diffusion_jax.recipes.defaults import load_config  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")

TOY_CHAIN = toys.markov_chain(
    [0.4, 0.3, 0.2, 0.1],
    [[0.70, 0.10, 0.10, 0.10], [0.05, 0.80, 0.10, 0.05], [0.10, 0.10, 0.10, 0.70],
     [0.25, 0.25, 0.25, 0.25]],
    6,
)


def _train(network, loss_fn, arrays, *, steps, batch_size, learning_rate, seed, log_every=250):
    optimizer, _ = training.make_optimizer(learning_rate=learning_rate, warmup_steps=100,
                                           total_steps=steps, decay="cosine")
    state, parts = training.create_train_state(network, optimizer, key=jax.random.key(seed))
    step = jax.jit(training.make_train_step(parts, loss_fn, optimizer), donate_argnums=0)
    rng = np.random.default_rng(seed)
    size = len(next(iter(arrays.values())))
    start, history = time.time(), []
    for i in range(steps):
        index = rng.integers(0, size, batch_size)
        state, metrics = step(state, {k: jnp.asarray(v[index]) for k, v in arrays.items()})
        if (i + 1) % log_every == 0:
            history.append([i + 1, float(metrics["loss"])])
            print(f"step {i + 1}: loss {float(metrics['loss']):.4f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    return training.merge_network(parts, state.params), time.time() - start, history


def run_toy(args):
    process = processes.MaskedDiffusion(4, schedule="linear")
    network = TokenTransformer(num_states=5, num_classes=4, shape=(6,), hidden_dim=64,
                               num_layers=2, num_heads=4, embedding_dim=32,
                               time_conditioning=False, rngs=training_rngs(args.seed))
    train = TOY_CHAIN.sample(args.seed, 50000)

    def loss_fn(net, batch, key):
        return losses.masked_diffusion_loss(net, process, batch["tokens"], key) / 6

    network, seconds, history = _train(network, loss_fn, {"tokens": train}, steps=args.steps,
                                       batch_size=args.batch_size, learning_rate=2e-3,
                                       seed=args.seed)
    test = TOY_CHAIN.sample(args.seed + 1, args.eval_examples)
    result = likelihood.nelbo_bits(network, process, test, jax.random.key(7), num_draws=4,
                                   batch_size=500)
    entropy_bits = TOY_CHAIN.entropy() / (6 * np.log(2))
    exact = likelihood.nelbo_bits(TOY_CHAIN.posterior_network(process), process, test,
                                  jax.random.key(7), num_draws=4, batch_size=500)
    # paired with the same t and masks, the exact posterior's draws cancel most of the noise
    paired = likelihood.summarise_bits(result["nats_per_example"] - exact["nats_per_example"],
                                       6)
    tokens = jax.jit(lambda key: samplers.sample_masked(network, process, key, (20000, 6),
                                                        num_steps=64))(jax.random.key(3))
    tv = 0.5 * np.abs(TOY_CHAIN.histogram(tokens) - np.exp(TOY_CHAIN.log_probs)).sum()
    exact_tokens = TOY_CHAIN.sample(args.seed + 2, 20000)
    tv_floor = 0.5 * np.abs(TOY_CHAIN.histogram(exact_tokens) - np.exp(TOY_CHAIN.log_probs)).sum()
    return {
        "task": "toy", "steps": args.steps, "train_seconds": round(seconds, 1),
        "entropy_bits_per_token": entropy_bits,
        "nelbo_bits_per_token": result["bits"], "std_error": result["std_error"],
        "gap_bits_per_token": paired["bits"], "gap_std_error": paired["std_error"],
        "exact_posterior_nelbo_bits": exact["bits"], "exact_posterior_std_error":
            exact["std_error"],
        "sample_total_variation": float(tv), "exact_sample_total_variation_floor": float(tv_floor),
        "loss_history": history,
    }


def run_config(args):
    config = load_config(os.path.join(ROOT, "configs", f"{args.task}.py"))
    if args.length:
        config.data.shape = (args.length,)
    config.model.hidden_dim = args.hidden_dim
    config.model.num_layers = args.num_layers
    config.discrete.eval_draws = args.eval_draws
    recipe.validate(config)
    name, kwargs = recipe.network_kwargs(config)
    spec = {"model": recipe.model_entry(config)}
    network = recipe.NETWORKS[name](rngs=training_rngs(args.seed), **{
        k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    wrap = lambda net: recipe.model_from_spec(spec, net)  # noqa: E731
    arrays = recipe.load_arrays(config)
    network, seconds, history = _train(network, recipe.make_loss_fn(config, wrap), arrays,
                                       steps=args.steps, batch_size=args.batch_size,
                                       learning_rate=args.learning_rate, seed=args.seed)
    model = wrap(network)
    report = recipe.evaluate(model, config, num_examples=args.eval_examples, seed=0,
                             batch_size=64)
    samples, _ = recipe.generate(model, config, num_samples=args.num_samples, seed=0)
    recipe.write_samples(samples, config, os.path.join(RESULTS, f"discrete_{args.task}.npz"))
    return {"task": args.task, "steps": args.steps, "batch_size": args.batch_size,
            "shape": list(config.data.shape), "hidden_dim": args.hidden_dim,
            "num_layers": args.num_layers, "eval_draws": args.eval_draws, "train_seconds": round(seconds, 1),
            "loss_history": history, **report}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="toy", choices=["toy", "digits_d3pm", "digits_masked",
                                                          "text_masked", "text_dfm"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--length", type=int, default=0, help="text window (0: the config's)")
    parser.add_argument("--eval_examples", type=int, default=2000)
    parser.add_argument("--num_samples", type=int, default=16)
    parser.add_argument("--eval_draws", type=int, default=4, help="NELBO draws per example")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run_toy(args) if args.task == "toy" else run_config(args)
    result["backend"] = jax.default_backend()
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"discrete_{args.task}.json")
    with open(path, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "loss_history"}, indent=1))


if __name__ == "__main__":
    main()
