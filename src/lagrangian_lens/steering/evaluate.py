"""The energy paper's steering evaluation (its Sec. E.3.1 and Table 3), as functions of a model and token ids.

Protocol: every text gives its first ``n_context`` tokens as context; at each of the next ``positions`` positions
the natural state at the site is steered toward the *true* next token (Algorithm 1), and the natural and steered
next-token distributions each give their top-k list. The baselines (additive along the target's unembedding row
and a random direction, both at the Jacobian's ‖δh‖; the best of many random directions; a logit bias at equal
gain) give their own lists. Judges rate every list; a text's score under a method is its mean over the positions,
and Table 3 compares the texts' natural scores with their steered ones, paired.

``steer_texts`` does the steering (no judge), ``judge_lists`` the rating, ``table3`` the statistics and
``steered_energy`` the paper's other claim, that steering keeps the energy near-constant. No file is read or
written here: the experiment (``experiments/steer.py``) owns I/O and resumption.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..analysis.energy import EnergyConventions, analyse_energy
from ..checks import check_range
from ..errors import ConfigError, TrajectoryError
from ..mechanics.paired import PairedComparison, paired_comparison
from ..models.pretrained.architectures import unembedding
from ..trajectories import Site, readout
from .baselines import compare_baselines
from .generate import steer_generate
from .inject import site_readout
from .jacobian import jacobian_steer
from .judges import JudgeItem

# The lists every judge rates: the natural one, the Jacobian-steered one, and the baselines'.
NATURAL, JACOBIAN = "natural", "jacobian"
JUDGED_BASELINES = ("additive", "random")  # at the Jacobian's ‖δh‖, as the paper's claim of minimality needs
METHODS = (NATURAL, JACOBIAN, *JUDGED_BASELINES)


@dataclass(frozen=True)
class SteeringProtocol:
    """The settings of the steering evaluation; recorded with every result."""

    site: str = "final"  # where h is steered: final (the paper's closed form), embed or block.<l>
    positions: int = 10  # steered positions per text, after its context (the paper's N = 10)
    eta: float = 0.5  # Algorithm 1 stops once p(true next token) >= eta
    max_steps: int = 20  # Algorithm 1's K: at most this many gradient steps per pair
    top_k: int = 10  # the length of the lists the judges rate
    n_random: int = 100  # random directions behind the best-of-random baseline
    continuation_tokens: int = 10  # tokens of the true continuation shown to the judges
    energy_tokens: int = 30  # steered generation length for the energy check (0: no check)

    def __post_init__(self):
        try:
            Site.parse(self.site)
        except TrajectoryError as exc:
            raise ConfigError("site", str(exc)) from None
        check_range("positions", self.positions, low=1)
        check_range("eta", float(self.eta), low=0, high=1, low_open=True, high_open=True)
        check_range("max_steps", self.max_steps, low=1)
        check_range("top_k", self.top_k, low=1)
        check_range("n_random", self.n_random, low=1)
        check_range("continuation_tokens", self.continuation_tokens, low=1)
        check_range("energy_tokens", self.energy_tokens, low=0)
        if 0 < self.energy_tokens < 3:
            raise ConfigError("energy_tokens", f"the energy of a steered continuation needs at least 3 tokens (two "
                                               f"velocities), got {self.energy_tokens}; use 0 to skip the check")

    def tokens_needed(self, n_context: int) -> int:
        """Tokens each text must hold: context, the steered positions, and the judges' continuation."""
        return n_context + max(self.positions + self.continuation_tokens - 1, self.energy_tokens)


@dataclass
class SteeredTexts:
    """Every (text, position) pair: the records of each method and its top-k lists.

    ``lists[method]`` is (n_texts, positions, top_k) token ids; ``records[method]`` one dict per pair, in the
    order text-major; ``items`` the judge items (context, continuation) per pair, without candidates.
    """

    n_texts: int
    positions: int
    lists: dict[str, np.ndarray]
    records: dict[str, list[dict]]
    contexts: list[str]  # (n_texts * positions,) the context text of each pair
    continuations: list[str]  # (n_texts * positions,) the true continuation's text of each pair
    token_text: dict[int, str] = field(default_factory=dict)  # id -> text of every listed token

    def __post_init__(self):
        pairs = self.n_texts * self.positions
        for method, ids in self.lists.items():
            if ids.shape[:2] != (self.n_texts, self.positions):
                raise TrajectoryError(f"lists[{method!r}] has shape {ids.shape}; expected "
                                      f"({self.n_texts}, {self.positions}, k)")
        if len(self.contexts) != pairs or len(self.continuations) != pairs:
            raise TrajectoryError(f"{len(self.contexts)} contexts / {len(self.continuations)} continuations for "
                                  f"{pairs} pairs")

    def items(self, method: str) -> list[JudgeItem]:
        """The judge items of ``method``, text-major."""
        ids = self.lists[method].reshape(-1, self.lists[method].shape[-1])
        return [JudgeItem(context=c, continuation=n, candidates=tuple(self.token_text[int(t)] for t in row))
                for c, n, row in zip(self.contexts, self.continuations, ids)]


def check_texts(token_ids: Sequence[torch.Tensor], need: int) -> None:
    """Every text holds ``need`` tokens, else one error naming the short ones."""
    short = [i for i, ids in enumerate(token_ids) if len(ids) < need]
    if short:
        raise TrajectoryError(f"text(s) {short[:10]} hold fewer than the {need} tokens the steering protocol needs "
                              "(context, steered positions, the judges' continuation): use longer texts (e.g. the "
                              "corpus wikitext-2-test), fewer positions or fewer continuation tokens",
                              options=("prompts", "positions", "continuation_tokens"))


@torch.no_grad()
def steer_texts(model, tokenizer, token_ids: Sequence[torch.Tensor], n_context: int, protocol: SteeringProtocol, *,
                seed: int = 0, progress: bool = False) -> SteeredTexts:
    """Steer every text at each of its ``protocol.positions`` positions after ``n_context`` toward the true next
    token, with the baselines (all texts at once, one position after another)."""
    width = n_context + protocol.positions + protocol.continuation_tokens - 1
    check_texts(token_ids, width)
    ids = torch.stack([torch.as_tensor(t[:width]) for t in token_ids])  # (P, width)
    device = next(model.parameters()).device
    weight = unembedding(model).weight
    P, N, k = len(ids), protocol.positions, protocol.top_k
    lists = {m: np.zeros((P, N, k), dtype=np.int64) for m in (*METHODS, "best_random", "logit_bias")}
    per_position: dict[str, list[list[dict]]] = {m: [] for m in lists}
    for i in tqdm(range(N), desc="steering positions", disable=not progress, leave=False):
        end = n_context + i  # the prefix x_0 .. x_{end-1}; the true next token is x_end
        h0, read = site_readout(model, ids[:, :end].to(device), protocol.site)
        target = ids[:, end].to(device)
        result = jacobian_steer(h0, target, read, eta=protocol.eta, max_steps=protocol.max_steps, top_k=k)
        baselines = compare_baselines(h0, target, read, result, weight=weight, n_random=protocol.n_random,
                                      seed=seed + i, top_k=k)
        lists[NATURAL][:, i] = result.top_before.cpu().numpy()
        lists[JACOBIAN][:, i] = result.top_after.cpu().numpy()
        per_position[NATURAL].append([{"position": end, "target": int(t)} for t in target])
        per_position[JACOBIAN].append(result.records())
        for name, base in baselines.items():
            lists[name][:, i] = base.top_k_ids.cpu().numpy()
            per_position[name].append(base.records())
    # Text-major records: pair (text p, position i) at p * N + i.
    records = {m: [rows[i][p] | {"text": p, "position": n_context + i} for p in range(P) for i in range(N)]
               for m, rows in per_position.items()}
    listed = np.unique(np.concatenate([v.ravel() for v in lists.values()]))
    token_text = {int(t): tokenizer.decode([int(t)]) for t in listed}
    contexts = [tokenizer.decode(ids[p, :n_context + i].tolist()) for p in range(P) for i in range(N)]
    continuations = [tokenizer.decode(ids[p, n_context + i:n_context + i + protocol.continuation_tokens].tolist())
                     for p in range(P) for i in range(N)]
    return SteeredTexts(P, N, lists, records, contexts, continuations, token_text)


def judge_lists(steered: SteeredTexts, judges: Sequence, methods: Sequence[str] = METHODS, *,
                progress: bool = False, chunk: int = 64) -> dict[str, dict]:
    """{judge name: {method: (n_texts, positions) scores}}: every judge rates every method's lists (in chunks of
    ``chunk`` items, so a progress bar can follow a slow judge)."""
    out = {}
    for judge in judges:
        out[judge.name] = {}
        for m in methods:
            items = steered.items(m)
            scores = [np.asarray(judge.score(items[s:s + chunk]), dtype=float)
                      for s in tqdm(range(0, len(items), chunk), desc=f"judge {judge.name}: {m}", disable=not progress,
                                    leave=False)]
            out[judge.name][m] = np.concatenate(scores).reshape(steered.n_texts, steered.positions)
    return out


def table3(scores: dict[str, dict[str, np.ndarray]], *, n_boot: int = 1000, ci: float = 0.95,
           seed: int = 0) -> dict[str, dict[str, PairedComparison]]:
    """{judge: {method: natural against method, paired over texts}}; a text's score is its mean over positions
    (positions a judge could not score, NaN, are left out of that mean)."""
    out = {}
    for judge, by_method in scores.items():
        natural = np.nanmean(by_method[NATURAL], axis=1)  # (n_texts,)
        out[judge] = {m: paired_comparison(natural, np.nanmean(v, axis=1), n_boot=n_boot, ci=ci, seed=seed)
                      for m, v in by_method.items() if m != NATURAL}
    return out


def steered_energy(model, tokenizer, token_ids: Sequence[torch.Tensor], n_context: int, protocol: SteeringProtocol,
                   *, n_boot: int = 1000, ci: float = 0.95, seed: int = 0, progress: bool = False) -> dict:
    """The energy along natural and steered continuations of every text, steered toward its true tokens.

    Returns {"natural": metrics, "steered": metrics, "paired": {metric: PairedComparison}, "steering": records}:
    the energy metrics of ``analysis.energy`` (site ``final``, the continuation) for both, and the per-trajectory
    CV of H and drift paired across the two.
    """
    need = n_context + protocol.energy_tokens
    check_texts(token_ids, need)
    prompts = [list(map(int, t[:n_context])) for t in token_ids]
    targets = torch.stack([torch.as_tensor(t[n_context:need]) for t in token_ids])  # (P, energy_tokens)
    run = steer_generate(model, tokenizer, prompts, targets=targets, site=protocol.site,
                         new_tokens=protocol.energy_tokens, context_tokens=n_context, eta=protocol.eta,
                         max_steps=protocol.max_steps, record_natural=True, progress=progress)
    conv = EnergyConventions(site="final", span="continuation")
    device = next(model.parameters()).device
    head = readout(model, "final")
    analyses = {name: analyse_energy(trs, head, conv, n_boot=n_boot, ci=ci, seed=seed, device=device)
                for name, trs in (("natural", run.natural), ("steered", run.steered))}
    paired = {}
    for metric in ("avg_trajectory_cv", "drift_h"):
        units = [analyses[k].replicates.get(metric, {}).get("units") for k in ("natural", "steered")]
        if all(u is not None for u in units):
            paired[metric] = paired_comparison(units[0], units[1], n_boot=n_boot, ci=ci, seed=seed)
    return {"natural": analyses["natural"].metrics, "steered": analyses["steered"].metrics, "paired": paired,
            "steering": run.records()}
