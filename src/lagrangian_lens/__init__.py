"""lagrangian-lens: the mechanics of language models.

Layers, each importing only those before it: ``models`` -> ``trajectories`` -> ``mechanics`` ->
``experiments`` -> ``report`` -> ``cli``. The names below are the public Python API.
"""
__version__ = "0.1.0"
