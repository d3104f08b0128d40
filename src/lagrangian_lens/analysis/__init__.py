"""The public analysis API: trajectories (or paths, or depth data) in, metrics and arrays out. No file I/O.

Each analysis combines the pure mechanics under one experiment's named conventions; ``experiments/`` adds
run folders, figures and report sections around them.
"""
