"""Experiments: one module per paper-level experiment, each writing results, tables and figures to a run folder."""
from .energy import EnergyConfig, run_energy

__all__ = ["EnergyConfig", "run_energy"]
