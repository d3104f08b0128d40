"""Mechanics: pure functions on trajectory tensors (energy, forces, run statistics). No model loading here."""
from .energy import EnergySeries, energy_series, velocities, zero_velocity
from .energy_stats import energy_metrics, energy_statistics, energy_table
from .forces import (
    attractor_unique_tokens,
    log_el_residual,
    log_el_terms,
    logit_displacement_error,
    logprob_gradients,
)
from .stats import Estimate, bootstrap

__all__ = ["EnergySeries", "Estimate", "attractor_unique_tokens", "bootstrap", "energy_metrics",
           "energy_series", "energy_statistics", "energy_table", "log_el_residual", "log_el_terms", "logit_displacement_error", "logprob_gradients",
           "velocities", "zero_velocity"]
