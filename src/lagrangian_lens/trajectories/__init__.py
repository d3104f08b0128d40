"""Trajectories: hidden-state paths of a causal LM along tokens (at a site) and along depth (all blocks)."""
from .extract import extract
from .generate import Decoding, generate
from .sites import Site, check_sites, count_hooks, expand_sites, readout, record_sites
from .trajectory import Trajectory, load_trajectories, save_trajectories

__all__ = ["Decoding", "Site", "check_sites", "Trajectory", "count_hooks", "expand_sites", "extract", "generate", "load_trajectories",
           "readout", "record_sites", "save_trajectories"]
