"""Side-by-side timings of trajectory extraction on the default model; prints ratios measured in one process.

1. teacher-forced extraction + energy metrics vs a bare forward pass of the same batch (goal: >= 0.85), and
   the metrics alone (step table + bootstrapped statistics on the model's device) next to the bare forward
2. batched generated trajectories vs the naive way, HF ``generate`` at batch 1 with ``output_hidden_states``
   and metrics in Python loops, at 16 prompts x 64 tokens (goal: >= 3x faster)
3. forward FLOP/s vs a large matmul in the same process (an MFU-like ratio)
4. peak memory

Usage: python benchmarks/bench_trajectories.py [--model SPEC] [--device auto] [--dtype float32] [--repeats 3]
       [--sections 1,2,3,4]   (e.g. --sections 1 skips the slow naive-generation comparison)
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import time

import torch

from lagrangian_lens.data import load_prompts
from lagrangian_lens.errors import DataError
from lagrangian_lens.mechanics import energy_metrics, energy_table
from lagrangian_lens.mechanics.energy import energy_series_many
from lagrangian_lens.models import load_model
from lagrangian_lens.models.pretrained.loading import resolve_device
from lagrangian_lens.trajectories import extract, generate


def timed(fn, repeats: int, device: str) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def metrics_of(trajectories, device: str):
    """Energy terms, step table and bootstrapped metrics on ``device``, as the energy analysis computes them."""
    states = [t.at("final")[t.continuation] for t in trajectories]
    neg_logp = [-t.logprobs[t.continuation] for t in trajectories]
    # every trajectory stacked: one transfer each for the states and the log-probabilities, one set of kernels
    series = energy_series_many(torch.cat(states).to(device), torch.cat(neg_logp).to(device),
                                [h.shape[0] for h in states])
    return energy_metrics(energy_table(series), n_boot=1000)


def naive_generation(model, tokenizer, prompts, new_tokens, device):
    """The straightforward way: HF generate one prompt at a time, then per-step metrics in Python loops."""
    energies = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt").input_ids[:, :50].to(device)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                             output_hidden_states=True, output_logits=True, return_dict_in_generate=True,
                             pad_token_id=tokenizer.pad_token_id)
        states = [step[-1][0, -1].float().cpu() for step in out.hidden_states]  # final-normed state per step
        logps = [torch.log_softmax(l[0].float(), -1)[tok].item() for l, tok in zip(out.logits, out.sequences[0, ids.shape[1]:])]
        h_values = []
        for t in range(1, len(states)):
            v = [a - b for a, b in zip(states[t].tolist(), states[t - 1].tolist())]
            kinetic = 0.5 * sum(x * x for x in v)
            h_values.append(math.log(kinetic) - logps[t])
        energies.append(h_values)
    flat = [x for row in energies for x in row]
    mean = sum(flat) / len(flat)
    return math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat)) / abs(mean)


def forward_flops(model, n_tokens: int, batch: int, width: int) -> float:
    """Matmul FLOPs of one forward: 2 per weight per token (embedding lookups excluded, the unembedding
    included) plus causal attention scores and values (about 2·L·B·T²·d)."""
    cfg = model.config
    embed = model.get_input_embeddings().weight.numel()
    dense = sum(p.numel() for p in model.parameters() if p.ndim == 2) - embed
    head = model.get_output_embeddings().weight.numel()
    dense += head if model.get_output_embeddings().weight is model.get_input_embeddings().weight else 0
    return 2.0 * n_tokens * dense + 2.0 * cfg.num_hidden_layers * batch * width**2 * cfg.hidden_size


def matmul_flops_per_s(device: str, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, repeats, device)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="tokens per teacher-forced text")
    parser.add_argument("--sections", default="1,2,3,4", help="which of the numbered measurements to run")
    args = parser.parse_args(argv)
    sections = {int(x) for x in args.sections.split(",")}
    device = resolve_device(args.device)
    lm = load_model(args.model, dtype=args.dtype, device=device)
    model, tok = lm.model, lm.tokenizer
    try:
        texts = load_prompts("wikitext-2-test", 16)
    except DataError:
        texts = [" ".join(load_prompts("default")[i::2]) for i in range(2)] * 8
    print(f"model {lm.description.source} | {lm.description.n_params / 1e6:.1f}M params | {device} | {args.dtype} | "
          f"threads {torch.get_num_threads()}")

    # 1. teacher-forced extraction + metrics vs the bare forward pass of the same padded batch
    ids = [tok(t)["input_ids"][:args.tokens] for t in texts]
    width = max(map(len, ids))
    batch = torch.full((len(ids), width), tok.pad_token_id)
    mask = torch.zeros_like(batch)
    for i, x in enumerate(ids):
        batch[i, :len(x)], mask[i, :len(x)] = torch.tensor(x), 1
    batch, mask = batch.to(device), mask.to(device)
    with torch.no_grad():
        bare = timed(lambda: model(input_ids=batch, attention_mask=mask, use_cache=False), args.repeats, device)
    n_tok = int(mask.sum())
    if 1 in sections:
        ours = timed(lambda: metrics_of(extract(model, tok, ids, sites="final", batch_size=len(ids)), device),
                     args.repeats, device)
        print(f"[1] teacher-forced, {len(ids)} x {width} tokens: bare forward {bare * 1e3:.0f} ms "
              f"({n_tok / bare:.0f} tok/s), extraction + metrics {ours * 1e3:.0f} ms ({n_tok / ours:.0f} tok/s): "
              f"ratio {bare / ours:.2f} (goal >= 0.85)")
        trajectories = extract(model, tok, ids, sites="final", batch_size=len(ids))
        alone = timed(lambda: metrics_of(trajectories, device), args.repeats, device)
        print(f"    metrics alone (energy terms, step table, 14 statistics x 1000 resamples on {device}) "
              f"{alone * 1e3:.0f} ms vs bare forward {bare * 1e3:.0f} ms")

    # 2. batched generated trajectories vs the naive HF-generate loop
    if 2 in sections:
        prompts = load_prompts("default", 16)
        new = 64
        naive = timed(lambda: naive_generation(model, tok, prompts, new, device), 1, device)
        batched = timed(lambda: metrics_of(generate(model, tok, prompts, new_tokens=new, batch_size=16), device),
                        1, device)
        print(f"[2] generated, 16 prompts x {new} tokens: naive (HF generate, batch 1, Python metrics) {naive:.1f} s, "
              f"batched with KV cache {batched:.1f} s: {naive / batched:.1f}x faster (goal >= 3x)")

    # 3. forward FLOP/s vs matmul FLOP/s in this process
    if 3 in sections:
        peak = matmul_flops_per_s(device, lm.model.dtype)
        achieved = forward_flops(model, n_tok, len(ids), width) / bare
        print(f"[3] forward {achieved / 1e9:.1f} GFLOP/s vs {peak / 1e9:.1f} GFLOP/s for a 2048^2 matmul: "
              f"ratio {achieved / peak:.2f}")

    # 4. peak memory
    if 4 in sections:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        cuda = (f", CUDA peak allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                if device.startswith("cuda") else "")
        print(f"[4] peak resident memory {rss:.0f} MiB{cuda}")


if __name__ == "__main__":
    main()
