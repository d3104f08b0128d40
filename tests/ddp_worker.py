"""Run by torchrun in the DDP test: trains a few steps and writes this rank's weight fingerprint."""
import json
import os
import sys

from lagrangian_lens.training import TrainConfig, train

out, corpus = sys.argv[1], sys.argv[2]
cfg = TrainConfig(corpus=corpus, out=out, d_model=16, n_steps=2, v_hidden=32, block_size=16, batch_size=4,
                  max_steps=4, eval_every=4, eval_batches=2, warmup_steps=1, checkpoint_every=4, device="cpu")
metrics = train(cfg, progress=False)
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump(metrics, f)
