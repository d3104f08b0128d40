"""Quickstart: trajectories and point-perplexity energy of the default model, from Python.

Run: python examples/quickstart.py   (about a minute on a laptop CPU)
"""
from lagrangian_lens.analysis.energy import (
    EnergyConventions,
    analyse_energy,
)
from lagrangian_lens.models import load_model
from lagrangian_lens.trajectories import extract, generate, readout

# 1. A model: an alias, a hub id, a directory, a .gguf file, or random:<any of those>.
lm = load_model("smollm2-135m-instruct")
print(lm.description.label, f"{lm.description.n_params / 1e6:.1f}M parameters, sha256",
      next(iter(lm.description.weights_sha256.values()))[:12])

# 2. Generated trajectories at the 'final' site (the input of the unembedding), greedy, KV-cached.
prompts = ["The capital of France is", "Once upon a time, in a small village,", "def fibonacci(n):"]
trajectories = generate(lm.model, lm.tokenizer, prompts, new_tokens=40, sites="final")
print(lm.tokenizer.decode(trajectories[0].token_ids))

# 3. The energy metrics, each with a bootstrap interval over trajectories.
result = analyse_energy(trajectories, readout(lm.model, "final"), EnergyConventions(), n_boot=200)
for name in ("global_cv", "mean_log_energy", "drift_h", "el_residual_median", "attractor_unique_tokens_mean"):
    m = result.metrics[name]
    print(f"{name:30s} {m['value']:8.4f}  [{m['ci_low']:.4f}, {m['ci_high']:.4f}]")

# 4. A depth trajectory: the embeddings and every block's residual stream, teacher-forced.
depth = extract(lm.model, lm.tokenizer, ["Energy is conserved in a closed system."], sites="all")[0]
print("depth trajectory:", tuple(depth.states.shape), "(sites, positions, d_model)")
