"""lagrangian-lens: the mechanics of language models.

Layers, each importing only those before it: ``errors`` -> ``nn`` -> ``models`` -> ``trajectories`` ->
``mechanics`` -> ``analysis`` -> ``steering`` -> ``experiments`` -> ``report`` -> ``cli``. The names below are the public
Python API::

    import lagrangian_lens as ll

    lm = ll.load_model("smollm2-135m-instruct")           # or ll.load_model(model, tokenizer=tok)
    trajectories = ll.extract(lm.model, lm.tokenizer, ["The cat sat on the mat."])

They are imported on first use (PEP 562), so ``import lagrangian_lens`` stays cheap: torch and transformers
load only when a name that needs them is touched.
"""
from __future__ import annotations

import importlib

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers honour the name)

# public name -> the module that defines it
_EXPORTS = {
    "load_model": "lagrangian_lens.models.pretrained.loading",
    "LoadedModel": "lagrangian_lens.models.pretrained.loading",
    "ModelSpec": "lagrangian_lens.models.spec",
    "extract": "lagrangian_lens.trajectories",
    "generate": "lagrangian_lens.trajectories",
    "readout": "lagrangian_lens.trajectories",
    "Trajectory": "lagrangian_lens.trajectories",
    "Site": "lagrangian_lens.trajectories",
    "analyse_energy": "lagrangian_lens.analysis.energy",
    "analyse_stp": "lagrangian_lens.analysis.stp",
    "analyse_sphere": "lagrangian_lens.analysis.sphere",
    "SharedPotentialFit": "lagrangian_lens.mechanics.potential_fit",
    "DepthData": "lagrangian_lens.mechanics.depth_data",
    "probe_causality": "lagrangian_lens.models.own.causality",
    "jacobian_steer": "lagrangian_lens.steering.jacobian",
    "SteeringResult": "lagrangian_lens.steering.jacobian",
    "steer_generate": "lagrangian_lens.steering.generate",
    "attention_thermo": "lagrangian_lens.mechanics.thermo",
    "analyse_thermo": "lagrangian_lens.analysis.thermo",
    "EnergyMonitor": "lagrangian_lens.analysis.monitor",
    "ChangePointMonitor": "lagrangian_lens.analysis.monitor_stream",
}

__all__ = ["ChangePointMonitor", "DepthData", "EnergyMonitor", "LoadedModel", "ModelSpec", "SharedPotentialFit", "Site", "SteeringResult",
           "Trajectory", "__version__", "analyse_energy", "analyse_sphere", "analyse_stp", "analyse_thermo",
           "attention_thermo", "extract", "generate", "jacobian_steer", "load_model", "probe_causality", "readout",
           "steer_generate"]


def _version() -> str:
    # importlib.metadata costs more than the rest of this module's import, so it waits for the first lookup.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lagrangian-lens")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.1.0"


def __getattr__(name: str):
    if name == "__version__":
        value = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'lagrangian_lens' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static tools see the real names
    from .analysis.energy import analyse_energy
    from .analysis.monitor import EnergyMonitor
    from .analysis.monitor_stream import ChangePointMonitor
    from .analysis.sphere import analyse_sphere
    from .analysis.stp import analyse_stp
    from .analysis.thermo import analyse_thermo
    from .mechanics.depth_data import DepthData
    from .mechanics.potential_fit import SharedPotentialFit
    from .mechanics.thermo import attention_thermo
    from .models.own.causality import probe_causality
    from .models.pretrained.loading import LoadedModel, load_model
    from .models.spec import ModelSpec
    from .steering.generate import steer_generate
    from .steering.jacobian import SteeringResult, jacobian_steer
    from .trajectories import Site, Trajectory, extract, generate, readout
