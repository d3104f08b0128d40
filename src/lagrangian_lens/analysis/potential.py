"""The shared-potential diagnostic on one model's depth trajectories: the fit, its baselines, the capacity sweep,
the Jacobian-symmetry tests, the functional-form menu, position 0's share of the predictable variance, the
token-direction fit over every layer, (for an SPLM) the oracle, and the final norm's gain.

Every predictor is reported the same way (:func:`scored`): per R² definition (``r2_centered``, the paper's and the
headline, and ``r2_uncentered``; see :mod:`..mechanics.potential_fit`) its per-layer test R², their median and
their middle-band mean, and ``force_r2``, the share of the velocity-only baseline's residual that it explains.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ..checks import check_choice
from ..mechanics.depth_data import CENTERINGS, DepthData, pca_basis, project
from ..mechanics.potential_fit import (
    R2_DEFINITIONS,
    KnownPotential,
    LinearReferenceFit,
    MeanStepFit,
    SharedPotentialFit,
    StaticNull,
    VelocityOnlyFit,
    force_r2,
    middle_band,
    profile_shape,
)
from ..mechanics.potential_forms import FORMS, ParametricPotential
from ..mechanics.symmetry import JacobianSymmetryTest, PerLayerSymmetryTest, summarise_gaps

SYMMETRY_MODES = ("pooled", "per-layer", "both")
# What the results record of how they were computed (beside the settings themselves).
CONVENTIONS = {
    "r2_definitions": {"r2_centered": "1 − SS_res/Σ‖Δx − mean_layer(Δx)‖² (the paper's; the headline)",
                       "r2_uncentered": "1 − SS_res/Σ‖Δx‖² (against the static null)"},
    "headline": "r2_centered",
    "force_r2": "(R²_fit − R²_velocity-only)/(1 − R²_velocity-only), the same under both R² definitions",
    "middle_mean": "mean over the fit layers [⌊n/3⌋, ⌈2n/3⌉)",
}


@dataclass
class PotentialConfig:
    """Settings of the shared-potential diagnostic (shared by every model it is run on)."""

    centering: str = "sequence"  # 'sequence' (one mean per sequence), 'sequence-layer' (per sequence and layer), 'global' or 'none'
    skip_positions: int = 1  # position 0 often holds massive-activation outliers: dropped by default
    drop_first_layer: bool = False  # leave out the embeddings
    drop_last_layer: bool = False  # leave out the last entry (set it when that entry is after the final norm)
    test_fraction: float = 0.25  # held-out sequences
    width: int = 128  # V_ψ hidden width of the headline fit
    depth: int = 2  # V_ψ hidden layers
    max_epochs: int = 300  # AdamW epochs (early stopping on a validation split of train)
    capacity_widths: list[int] = field(default_factory=lambda: [8, 32, 128, 512])  # the sweep (a >= 16x parameter band)
    symmetry_k: int = 16  # PCA dimension of the Jacobian-symmetry tests
    symmetry: str = "pooled"  # Jacobian-symmetry test: 'pooled' over layers, 'per-layer' (A shared, M_ℓ per layer) or 'both'
    menu_k: int = 16  # PCA dimension in which the functional-form menu is fitted
    menu: bool = True  # run the functional-form menu
    seed: int = 0  # seeds splits and fits

    def __post_init__(self):
        check_choice("centering", self.centering, CENTERINGS)
        check_choice("symmetry", self.symmetry, SYMMETRY_MODES)

    def prepare(self, data: DepthData, skip_positions: int | None = None) -> DepthData:
        """``data`` with these settings' layers, positions and centring (``skip_positions`` overrides)."""
        skip = self.skip_positions if skip_positions is None else skip_positions
        return data.prepare(centering=self.centering, drop_first_layer=self.drop_first_layer,
                            drop_last_layer=self.drop_last_layer, skip_positions=skip)


def profile(values) -> dict:
    """A per-layer profile: its values, their median (the headline) and their middle-band mean."""
    values = np.asarray(values, dtype=float)
    return {"per_layer": values.tolist(), "median": float(np.median(values)),
            "middle_mean": float(values[middle_band(len(values))].mean())}


def scored(scores: dict[str, np.ndarray], velocity: dict[str, np.ndarray]) -> dict:
    """A predictor's test scores as results: a :func:`profile` per R² definition, ``force_r2`` against the
    velocity-only baseline's ``velocity`` scores, and the shape of the ``r2_centered`` profile."""
    out = {name: profile(scores[name]) for name in R2_DEFINITIONS}
    out["force_r2"] = profile(force_r2(scores["r2_centered"], velocity["r2_centered"]))
    out["shape"] = profile_shape(scores["r2_centered"])
    return out


def baselines(train: DepthData, test: DepthData, *, linear: bool = True) -> tuple[dict, dict]:
    """(the velocity-only test scores, {name: scored results}) of the static null, the mean step, the velocity-only
    fit and (``linear``) the per-layer linear reference."""
    velocity = VelocityOnlyFit().fit(train).scores(test)
    rows = {"velocity_only": scored(velocity, velocity)}
    estimators = {"mean_step": MeanStepFit(), "static_null": StaticNull()}
    if linear:
        estimators["linear_reference"] = LinearReferenceFit()
    rows |= {name: scored(est.fit(train).scores(test), velocity) for name, est in estimators.items()}
    return velocity, rows


def _fit(train, test, cfg: PotentialConfig, width: int | None = None, **kw) -> tuple[SharedPotentialFit, dict]:
    fit = SharedPotentialFit(hidden=width or cfg.width, depth=cfg.depth, max_epochs=cfg.max_epochs, seed=cfg.seed, **kw)
    fit.fit(train)
    return fit, fit.scores(test)


def _fit_entry(fit: SharedPotentialFit, scores: dict, velocity: dict) -> dict:
    return {**scored(scores, velocity), "alpha": fit.alpha_.tolist(), "beta": fit.beta_.tolist(),
            "n_params": fit.n_params_}


def symmetry_tests(train: DepthData, test: DepthData, cfg: PotentialConfig) -> dict:
    """The Jacobian-symmetry test(s) ``cfg.symmetry`` asks for: ``symmetry`` (pooled) and ``symmetry_per_layer``."""
    out = {}
    if cfg.symmetry in ("pooled", "both"):
        out["symmetry"] = JacobianSymmetryTest(cfg.symmetry_k).fit(train).score(test)
    if cfg.symmetry in ("per-layer", "both"):
        per_layer = PerLayerSymmetryTest(cfg.symmetry_k).fit(train).score(test)
        out["symmetry_per_layer"] = {**per_layer, **summarise_gaps(per_layer)}
    return out


def analyse_potential(data: DepthData, cfg: PotentialConfig) -> dict:
    """Every fit of the diagnostic along depth on one model's depth trajectories."""
    train, test = cfg.prepare(data).split(cfg.test_fraction, cfg.seed)
    velocity, rows = baselines(train, test)
    fit, scores = _fit(train, test, cfg)
    result = {"fit": _fit_entry(fit, scores, velocity), **rows, **symmetry_tests(train, test, cfg),
              "position_zero": position_zero(data, cfg, rows["linear_reference"]),
              "conventions": {**asdict(cfg), **CONVENTIONS}}
    sweep = []
    for width in cfg.capacity_widths:
        f, s = _fit(train, test, cfg, width)
        sweep.append({"width": width, "n_params": f.n_params_, **scored(s, velocity)})
    result["capacity_sweep"] = sweep
    result["capacity_band"] = sweep[-1]["n_params"] / max(sweep[0]["n_params"], 1)
    if cfg.menu:
        result["menu"] = functional_form_menu(train, test, cfg)
    return result


def position_zero(data: DepthData, cfg: PotentialConfig, without: dict | None = None) -> dict:
    """How much of the linearly predictable variance position 0 carries: the per-layer linear reference fitted and
    scored WITH position 0 (``skip_positions=0``) and WITHOUT it (``skip_positions=1``), under the same centring
    and split. ``without``: those results when already computed (the main linear reference when it skips 1)."""
    out = {}
    for key, skip in (("with_position_0", 0), ("without_position_0", 1)):
        if key == "without_position_0" and without is not None and cfg.skip_positions == 1:
            out[key] = without
            continue
        train, test = cfg.prepare(data, skip_positions=skip).split(cfg.test_fraction, cfg.seed)
        velocity = VelocityOnlyFit().fit(train).scores(test)
        out[key] = scored(LinearReferenceFit().fit(train).scores(test), velocity)
    return out


def functional_form_menu(train: DepthData, test: DepthData, cfg: PotentialConfig) -> list[dict]:
    """Each parametric form, then the augmentations on top of the harmonic one, in PCA coordinates fitted on train
    (``force_r2`` against the velocity-only fit in the same coordinates)."""
    mean, comps = pca_basis(train, cfg.menu_k)
    ptrain, ptest = project(train, mean, comps), project(test, mean, comps)
    k = comps.shape[1]
    velocity = VelocityOnlyFit().fit(ptrain).scores(ptest)
    variants = [(form, {}) for form in FORMS] + [
        ("gaussian", {"metric": True}), ("harmonic", {"helmholtz": True}), ("harmonic", {"gauge": "constant"}),
        ("harmonic", {"gauge": "rank1"}), ("harmonic", {"gauge": "rank2"})]
    rows = []
    for form, options in variants:
        potential = ParametricPotential(k, form, **options)
        fit = SharedPotentialFit(potential=potential, max_epochs=cfg.max_epochs, seed=cfg.seed, lr=1e-2).fit(ptrain)
        name = form + "".join(f"+{k}={v}" if not isinstance(v, bool) else f"+{k}" for k, v in options.items())
        rows.append({"variant": name, **scored(fit.scores(ptest), velocity), **fit.potential_.augmentation_norms()})
    return rows


def oracle(data: DepthData, grad_fn, constants: dict) -> dict:
    """The SPLM's own V_θ (with its ξ in ``data.aux``) as the potential, on uncentred states with every position,
    fitted and scored in-sample (only α_l and β_l are solved for)."""
    raw = data.prepare(centering="none", skip_positions=0)
    fit = SharedPotentialFit(potential=KnownPotential(grad_fn)).fit(raw)
    dt, gamma, mass = constants["dt"], constants["gamma"], constants["mass"]
    return {**scored(fit.scores(raw), VelocityOnlyFit().fit(raw).scores(raw)),
            "alpha": fit.alpha_.tolist(), "beta": fit.beta_.tolist(),
            "alpha_expected": 1 / (1 + dt * gamma), "beta_expected": dt**2 / (mass * (1 + dt * gamma))}


def analyse_token_axis(data: DepthData, cfg: PotentialConfig) -> dict:
    """The same fit along tokens at every layer (:meth:`DepthData.along_tokens`): one V_ψ shared by every layer
    and position, α_ℓ and β_ℓ per layer, with the baselines (no linear reference) and the symmetry test(s) beside.

    The layers and positions kept, and the centring, are those of the depth fit; the first step read is from
    position ``skip_positions`` to the next.
    """
    train, test = cfg.prepare(data).along_tokens().split(cfg.test_fraction, cfg.seed)
    velocity, rows = baselines(train, test, linear=False)
    fit, scores = _fit(train, test, cfg)
    return {"fit": _fit_entry(fit, scores, velocity), **rows, **symmetry_tests(train, test, cfg),
            "n_layers": train.n_fit_layers, "skip_positions": cfg.skip_positions}


def _gain_probe(d: int) -> torch.Tensor:
    """(d,) with zero mean, unit RMS and no entry near 0 (d >= 3): alternating ±1, ending 1, 1, −2 when d is odd."""
    x = torch.tensor([(-1.0) ** i for i in range(d)], dtype=torch.float64)
    if d % 2:
        x[-3:] = torch.tensor([1.0, 1.0, -2.0], dtype=torch.float64)
    return x / x.pow(2).mean().sqrt()


@torch.no_grad()
def norm_gain(norm: nn.Module | None, d: int) -> dict | None:
    """The elementwise gain g of a final norm, measured rather than read, so its parametrisation need not be known
    (LayerNorm, RMSNorm, Gemma's 1 + w): for a probe x of zero mean and unit RMS, norm(x) − norm(−x) = 2·g·x, the
    bias cancelling (up to the norm's ε, a relative 1e-5). Returns {"mean", "std", "max_abs_dev": max|g − 1|,
    "module"}, or None when there is no norm (None or an identity)."""
    if norm is None or isinstance(norm, nn.Identity):
        return None
    probe_norm = copy.deepcopy(norm).to("cpu", torch.float32)
    x = _gain_probe(d)
    out = probe_norm(torch.stack([x, -x]).float()[None])[0].double()  # (2, d)
    g = (out[0] - out[1]) / (2 * x)
    return {"mean": float(g.mean()), "std": float(g.std()), "max_abs_dev": float((g - 1).abs().max()),
            "module": type(norm).__name__}
