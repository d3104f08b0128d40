"""The shared-potential diagnostic on one model's depth trajectories: the fit, its baselines, the capacity
sweep, the Jacobian-symmetry test, the functional-form menu, and (for an SPLM) the oracle."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import TrajectoryError
from ..mechanics.depth_data import DepthData, pca_basis, project
from ..mechanics.potential_fit import (
    KnownPotential,
    LinearReferenceFit,
    SharedPotentialFit,
    VelocityOnlyFit,
    profile_shape,
)
from ..mechanics.potential_forms import FORMS, ParametricPotential
from ..mechanics.symmetry import JacobianSymmetryTest


@dataclass
class PotentialConfig:
    """Settings of the shared-potential diagnostic (shared by every model it is run on)."""

    centering: str = "sequence"  # per-sequence centring (the paper's default), 'global' or 'none'
    skip_positions: int = 1  # position 0 often holds massive-activation outliers: dropped by default
    drop_first_layer: bool = False  # leave out the embeddings
    drop_last_layer: bool = False  # leave out the last entry (set it when that entry is after the final norm)
    test_fraction: float = 0.25  # held-out sequences
    width: int = 128  # V_ψ hidden width of the headline fit
    depth: int = 2  # V_ψ hidden layers
    max_epochs: int = 300  # AdamW epochs (early stopping on a validation split of train)
    capacity_widths: list[int] = field(default_factory=lambda: [8, 32, 128, 512])  # the sweep (a >= 16x parameter band)
    symmetry_k: int = 16  # PCA dimension of the Jacobian-symmetry test
    menu_k: int = 16  # PCA dimension in which the functional-form menu is fitted
    menu: bool = True  # run the functional-form menu
    seed: int = 0  # seeds splits and fits


def _fit(train, test, cfg: PotentialConfig, width: int | None = None, **kw) -> tuple[SharedPotentialFit, np.ndarray]:
    fit = SharedPotentialFit(hidden=width or cfg.width, depth=cfg.depth, max_epochs=cfg.max_epochs, seed=cfg.seed, **kw)
    fit.fit(train)
    return fit, fit.score(test)


def _summary(r2: np.ndarray) -> dict:
    return {"per_layer": [float(v) for v in r2], "median": float(np.median(r2)), "shape": profile_shape(r2)}


def analyse_potential(data: DepthData, cfg: PotentialConfig) -> dict:
    """Every fit of sections 2-5 on one model's depth trajectories."""
    prepared = data.prepare(centering=cfg.centering, drop_first_layer=cfg.drop_first_layer,
                            drop_last_layer=cfg.drop_last_layer, skip_positions=cfg.skip_positions)
    train, test = prepared.split(cfg.test_fraction, cfg.seed)
    fit, r2 = _fit(train, test, cfg)
    result = {
        "fit": {**_summary(r2), "alpha": fit.alpha_.tolist(), "beta": fit.beta_.tolist(), "n_params": fit.n_params_},
        "velocity_only": {**_summary(VelocityOnlyFit().fit(train).score(test))},
        "linear_reference": {**_summary(LinearReferenceFit().fit(train).score(test))},
        "static_null": {"median": 0.0},
        "symmetry": JacobianSymmetryTest(cfg.symmetry_k).fit(train).score(test),
        "conventions": asdict(cfg),
    }
    sweep = []
    for width in cfg.capacity_widths:
        f, r = _fit(train, test, cfg, width)
        sweep.append({"width": width, "n_params": f.n_params_, "median": float(np.median(r))})
    result["capacity_sweep"] = sweep
    result["capacity_band"] = sweep[-1]["n_params"] / max(sweep[0]["n_params"], 1)
    if cfg.menu:
        result["menu"] = functional_form_menu(train, test, cfg)
    return result


def functional_form_menu(train: DepthData, test: DepthData, cfg: PotentialConfig) -> list[dict]:
    """Each parametric form, then the augmentations on top of the harmonic one, in PCA coordinates fitted on train."""
    mean, comps = pca_basis(train, cfg.menu_k)
    ptrain, ptest = project(train, mean, comps), project(test, mean, comps)
    k = comps.shape[1]
    variants = [(form, {}) for form in FORMS] + [
        ("gaussian", {"metric": True}), ("harmonic", {"helmholtz": True}), ("harmonic", {"gauge": "constant"}),
        ("harmonic", {"gauge": "rank1"}), ("harmonic", {"gauge": "rank2"})]
    rows = []
    for form, options in variants:
        potential = ParametricPotential(k, form, **options)
        fit = SharedPotentialFit(potential=potential, max_epochs=cfg.max_epochs, seed=cfg.seed, lr=1e-2).fit(ptrain)
        r2 = fit.score(ptest)
        name = form + "".join(f"+{k}={v}" if not isinstance(v, bool) else f"+{k}" for k, v in options.items())
        rows.append({"variant": name, "median": float(np.median(r2)), "per_layer": [float(v) for v in r2],
                     **fit.potential_.augmentation_norms()})
    return rows


def oracle(data: DepthData, grad_fn, constants: dict) -> dict:
    """The SPLM's own V_θ (with its ξ in ``data.aux``) as the potential, on uncentred states with every position."""
    raw = data.prepare(centering="none", skip_positions=0)
    fit = SharedPotentialFit(potential=KnownPotential(grad_fn)).fit(raw)
    r2 = fit.score(raw)
    dt, gamma, mass = constants["dt"], constants["gamma"], constants["mass"]
    return {"per_layer": [float(v) for v in r2], "median": float(np.median(r2)),
            "alpha": fit.alpha_.tolist(), "beta": fit.beta_.tolist(),
            "alpha_expected": 1 / (1 + dt * gamma), "beta_expected": dt**2 / (mass * (1 + dt * gamma))}


def token_axis_data(data: DepthData, layer: int, skip_first: int = 1, skip_last: int = 0) -> DepthData:
    """Token-direction coordinates: the path along positions at one layer, as DepthData (N, T', 1, d).

    Sequences are cut to their common length; ``skip_first`` / ``skip_last`` drop BOS/EOS-adjacent positions.
    """
    lengths = data.mask.sum(1)
    T = int(lengths.min()) - skip_last
    if T - skip_first < 3:
        raise TrajectoryError(f"token paths of {T - skip_first} positions have no (x, v, Δx) triple")
    path = data.states[:, layer, skip_first:T]  # (N, T', d)
    return DepthData(path[:, :, None, :], torch.ones(path.shape[0], 1, dtype=torch.bool))


def analyse_token_axis(data: DepthData, cfg: PotentialConfig, layer: int | None = None) -> dict:
    """The same fit along tokens at a fixed layer (default: the middle one), with its velocity-only baseline."""
    layer = data.states.shape[1] // 2 if layer is None else layer
    tokens = token_axis_data(data, layer, skip_first=cfg.skip_positions).prepare(centering=cfg.centering,
                                                                                   skip_positions=0)
    train, test = tokens.split(cfg.test_fraction, cfg.seed)
    _, r2 = _fit(train, test, cfg)
    return {"layer": layer, "fit": _summary(r2), "velocity_only": _summary(VelocityOnlyFit().fit(train).score(test)),
            "skip_first": cfg.skip_positions}
