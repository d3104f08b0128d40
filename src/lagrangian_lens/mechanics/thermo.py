"""Attention as a canonical ensemble: the thermodynamics of each query's softmax over keys, as pure tensor code.

For one query row with scores s_j = q·k_j·scaling over the keys it may see, energies E_j = −s_j and temperature T
(T = 1 is the model's own softmax, β = 1/T):

* Z = Σ_j exp(−βE_j), p_j = exp(−βE_j)/Z (the Boltzmann weights: the attention weights at T = 1);
* U = Σ p_j E_j, S = −Σ p_j ln p_j, F = −T ln Z = U − T·S, C = β²·Var_p(E) = ∂U/∂T (and ∂S/∂T = C/T >= 0).

p minimises the Helmholtz free energy F[q] = Σ q_j E_j + T Σ q_j ln q_j over the simplex (``free_energy``).

Layout: scores are (..., n_queries, n_keys); a whole model's are (L, B, H, Q, K), layers × sequences × heads ×
queries × keys, and every reduction below reads that layout. Masks are bool, True = visible key; the scores at
masked keys are ignored whatever they hold (-inf, NaN). A row with no visible key has no ensemble: its per-row
values are NaN (so padding rows never need special care) and every reduction skips NaN. The ensemble is computed in
float64 (float32 on MPS, which has none): the statistics reduce memory-bound tensors, where float64 costs only
bandwidth, and C is a difference of nearly equal moments at low temperature.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError, TrajectoryError
from .stats import resample_indices, serial_on_cpu

# Elements of one temperature chunk of the (n_T, ..., Q, K) ensemble: a sweep is vectorised over temperatures
# but never holds more than a few tensors of this size (128 MiB each in float64) beyond one temperature's worth.
THERMO_CHUNK_ELEMENTS = 2**24


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def visible_keys(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(..., Q, K) bool: ``mask`` broadcast to the scores (all True without one), checked."""
    if not scores.is_floating_point() or scores.ndim < 2:
        raise TrajectoryError(f"scores must be a float tensor (..., n_queries, n_keys), got {scores.dtype} of shape "
                              f"{tuple(scores.shape)}")
    if mask is None:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    if mask.dtype != torch.bool:
        raise TrajectoryError(f"mask must be a bool tensor (True = visible key), got {mask.dtype}; pass mask.bool()")
    try:
        return mask.to(scores.device).expand(scores.shape)
    except RuntimeError:
        raise TrajectoryError(f"mask of shape {tuple(mask.shape)} does not broadcast to the scores' "
                              f"{tuple(scores.shape)}") from None


def _temperatures(temperature, device, dtype) -> tuple[torch.Tensor, bool]:
    """(n_T,) temperatures and whether the caller asked for a temperature axis (a 1-D tensor) or not (a scalar)."""
    t = torch.as_tensor(temperature, dtype=dtype, device=device)
    if t.ndim > 1 or t.numel() == 0:
        raise ConfigError("temperature", f"must be a float or a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if not bool(((t > 0) & torch.isfinite(t)).all()):
        raise ConfigError("temperature", f"every temperature must be finite and > 0, got {t.tolist()}")
    return t.reshape(-1), t.ndim == 1


def _prepare(scores, mask, temperature):
    """Energies' negatives on the visible keys (0 elsewhere), the visibility mask and the temperatures."""
    visible = visible_keys(scores, mask)
    dtype = _compute_dtype(scores.device)
    s = torch.where(visible, scores.to(dtype), 0.0)  # (..., Q, K) s_j = −E_j; masked keys hold a harmless 0
    if not bool(torch.isfinite(s).all()):
        raise TrajectoryError("scores hold inf or NaN at visible keys; mark those keys False in mask= (a key of "
                              "infinite energy is never attended)")
    temps, swept = _temperatures(temperature, scores.device, dtype)
    return s, visible, temps, swept


def _log_weights(s, visible, temps):
    """ln p (n_T, ..., Q, K) (0 at masked keys, so p·ln p vanishes there) and ln Z (n_T, ..., Q), -inf on empty rows."""
    t = temps.reshape(-1, *[1] * s.ndim)  # (n_T, 1, ..., 1)
    x = torch.where(visible, s / t, -math.inf)  # −βE_j
    log_z = torch.logsumexp(x, -1)  # (n_T, ..., Q)
    finite = torch.where(torch.isfinite(log_z), log_z, 0.0)  # empty rows: keep their NaN out of the weights
    return torch.where(visible, x - finite[..., None], 0.0), log_z


def _chunks(s: torch.Tensor, temps: torch.Tensor):
    step = max(1, THERMO_CHUNK_ELEMENTS // max(s.numel(), 1))
    return [temps[i:i + step] for i in range(0, temps.numel(), step)]


def boltzmann_weights(scores: torch.Tensor, mask: torch.Tensor | None = None, temperature=1.0) -> torch.Tensor:
    """p (..., Q, K), or (n_T, ..., Q, K) for a 1-D ``temperature``: 0 at masked keys, NaN on rows with no
    visible key. At T = 1 these are the model's attention weights."""
    s, visible, temps, swept = _prepare(scores, mask, temperature)
    parts = []
    for t in _chunks(s, temps):
        log_p, log_z = _log_weights(s, visible, t)
        parts.append(torch.where(visible, log_p.exp(), 0.0).masked_fill(torch.isinf(log_z)[..., None], math.nan))
    p = torch.cat(parts)
    return p if swept else p[0]


@dataclass
class AttentionThermo:
    """Per-row thermodynamics of attention. Every per-row tensor is (..., Q), or (n_T, ..., Q) when ``temperature``
    is a 1-D sweep; rows with no visible key are NaN.

    ``log_z`` ln Z; ``U`` mean energy; ``S`` entropy (nats); ``F`` = −T ln Z; ``C`` = β² Var(E), the specific heat.
    """

    log_z: torch.Tensor
    U: torch.Tensor
    S: torch.Tensor
    F: torch.Tensor
    C: torch.Tensor
    temperature: torch.Tensor  # () a single temperature, or (n_T,) a sweep (then the per-row tensors lead with n_T)
    n_visible: torch.Tensor  # (..., Q) int64 visible keys per row

    def __post_init__(self):
        if self.temperature.ndim > 1:
            raise TrajectoryError(f"temperature must be () or (n_T,), got {tuple(self.temperature.shape)}")
        lead = tuple(self.temperature.shape)
        expected = lead + tuple(self.n_visible.shape)
        for name in ("log_z", "U", "S", "F", "C"):
            if tuple(getattr(self, name).shape) != expected:
                raise TrajectoryError(f"AttentionThermo.{name} is {tuple(getattr(self, name).shape)}; temperature "
                                      f"{lead} and n_visible {tuple(self.n_visible.shape)} make it {expected}")

    @property
    def swept(self) -> bool:
        """Whether the per-row tensors lead with a temperature axis."""
        return self.temperature.ndim == 1

    @property
    def beta(self) -> torch.Tensor:
        return 1 / self.temperature

    @property
    def valid(self) -> torch.Tensor:
        """(..., Q) bool: rows with at least one visible key (the others are NaN)."""
        return self.n_visible > 0

    @property
    def max_entropy(self) -> torch.Tensor:
        """(..., Q) ln n_visible, the entropy of uniform attention (T → ∞); NaN on empty rows."""
        n = self.n_visible.to(self.S.dtype)
        return torch.where(n > 0, n.log(), math.nan)

    @property
    def normalized_entropy(self) -> torch.Tensor:
        """S / ln n_visible in [0, 1], shaped like S; NaN where a row sees at most one key (it has no choice)."""
        top = self.max_entropy
        return torch.where(self.n_visible > 1, self.S / torch.where(self.n_visible > 1, top, 1.0), math.nan)


def attention_thermo(scores: torch.Tensor, mask: torch.Tensor | None = None, temperature=1.0) -> AttentionThermo:
    """The canonical ensemble of every query row of ``scores`` (..., Q, K), any float dtype.

    ``mask`` (broadcastable bool, True = visible) excludes keys: they contribute nothing to Z, U, S or C. A row with
    no visible key is NaN in every per-row output. ``temperature`` is a float > 0, or a 1-D tensor of them: then
    every output leads with that temperature axis, vectorised (in chunks of THERMO_CHUNK_ELEMENTS).
    """
    s, visible, temps, swept = _prepare(scores, mask, temperature)
    n_visible = visible.sum(-1)  # (..., Q)
    empty = n_visible == 0
    out = {name: [] for name in ("log_z", "U", "S", "F", "C")}
    for t in _chunks(s, temps):
        log_p, log_z = _log_weights(s, visible, t)
        p = torch.where(visible, log_p.exp(), 0.0)  # (n, ..., Q, K)
        U = -(p * s).sum(-1)  # Σ p E
        t_rows = t.reshape(-1, *[1] * n_visible.ndim)  # (n, 1, ..., 1)
        # Var_p(E) about the mean, two-pass: the one-pass ⟨E²⟩ − ⟨E⟩² cancels catastrophically when p is peaked.
        C = (p * (s + U[..., None]).square()).sum(-1) / t_rows.square()
        for name, value in (("log_z", log_z), ("U", U), ("S", -(p * log_p).sum(-1)), ("F", -t_rows * log_z), ("C", C)):
            out[name].append(value.masked_fill(empty, math.nan))
    fields = {name: torch.cat(parts) if swept else torch.cat(parts)[0] for name, parts in out.items()}
    return AttentionThermo(**fields, temperature=temps if swept else temps[0], n_visible=n_visible)


def free_energy(q: torch.Tensor, energies: torch.Tensor, temperature, mask: torch.Tensor | None = None) -> torch.Tensor:
    """F[q] = Σ q_j E_j + T Σ q_j ln q_j (...,) for distributions ``q`` (..., K) over the visible keys of
    ``energies`` (..., K); entries at masked keys are ignored. Minimised over the simplex by the Boltzmann weights,
    where it equals −T ln Z."""
    visible = visible_keys(energies, mask)
    dtype = _compute_dtype(energies.device)
    q = torch.where(visible, q.to(dtype), 0.0)
    e = torch.where(visible, energies.to(dtype), 0.0)
    return (q * e).sum(-1) + torch.as_tensor(temperature, dtype=dtype) * torch.special.xlogy(q, q).sum(-1)


def effective_temperature(head_dim: int, logit_scale=None, scaling: float | None = None):
    """T_eff = 1 / (scaling · logit_scale): the temperature at which the raw dot products q·k give the model's
    attention, since its scores are s = q·k · scaling · logit_scale = −E/T_eff with E = −q·k.

    ``scaling`` is the model's own factor, 1/√head_dim unless it says otherwise (Gemma: query_pre_attn_scalar**-0.5);
    ``logit_scale`` any learned multiplier (a float or a per-head tensor; None = 1). Since ∂S/∂T = C/T >= 0, a
    larger T_eff means flatter attention (higher S) for the same q·k. Softcapping (cap·tanh(s/cap)) is not a
    temperature: read the capped scores as the energies instead.
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or head_dim < 1:
        raise ConfigError("head_dim", f"must be an int >= 1, got {head_dim!r}")
    scaling = head_dim ** -0.5 if scaling is None else scaling
    if not scaling > 0:
        raise ConfigError("scaling", f"must be > 0, got {scaling}")
    scale = 1.0 if logit_scale is None else logit_scale
    if not bool(torch.all(torch.as_tensor(scale) > 0)):
        raise ConfigError("logit_scale", f"must be > 0, got {scale}")
    return 1 / (scaling * scale)


def specific_heat_curve(scores: torch.Tensor, mask: torch.Tensor | None, temperatures) -> torch.Tensor:
    """C(T) (n_T, ..., Q) of every row over the 1-D grid ``temperatures``."""
    return attention_thermo(scores, mask, torch.as_tensor(temperatures, dtype=torch.float64).reshape(-1)).C


@dataclass
class HeatPeak:
    """Where each C(T) curve peaks on a temperature grid; every field is the curve's trailing shape (...).

    ``at_edge`` flags curves whose maximum lies on the grid's first or last temperature: the peak may lie beyond
    the grid, so ``temperature`` there is the edge itself, a bound rather than a peak.
    """

    temperature: torch.Tensor  # (...) peak temperature (NaN for an all-NaN curve)
    value: torch.Tensor  # (...) the curve's maximum on the grid
    at_edge: torch.Tensor  # (...) bool

    def __post_init__(self):
        if not self.temperature.shape == self.value.shape == self.at_edge.shape:
            raise TrajectoryError(f"HeatPeak fields differ in shape: {tuple(self.temperature.shape)}, "
                                  f"{tuple(self.value.shape)}, {tuple(self.at_edge.shape)}")


def peak_temperature(temperatures, curve: torch.Tensor, refine: bool = True) -> HeatPeak:
    """The peak of each curve (n_T, ...) over the increasing grid ``temperatures`` (n_T,).

    Interior peaks are refined by the vertex of the parabola through the three points around the grid maximum in
    ln T (exact for a peak that is quadratic in ln T; within a fraction of the grid step otherwise); ``refine=False``
    reports the grid temperature. Peaks on the grid's edge are flagged, not refined.
    """
    t = torch.as_tensor(temperatures, dtype=torch.float64, device=curve.device).reshape(-1)
    if curve.ndim < 1 or curve.shape[0] != t.numel() or t.numel() < 3:
        raise TrajectoryError(f"curve {tuple(curve.shape)} must lead with the grid's {t.numel()} temperatures (>= 3)")
    if not bool((t > 0).all() and (t[1:] > t[:-1]).all()):
        raise ConfigError("temperatures", f"must be positive and strictly increasing, got {t.tolist()}")
    c = curve.to(torch.float64)
    missing = torch.isnan(c).all(0)  # (...)
    i = c.nan_to_num(-math.inf).argmax(0)  # (...)
    value = c.gather(0, i[None])[0]
    at_edge = ((i == 0) | (i == t.numel() - 1)) & ~missing
    u = t.log()
    peak = u[i]
    if refine:
        j = i.clamp(1, t.numel() - 2)  # (...) the middle of three grid points (edges are not refined anyway)
        u0, u1, u2 = (u[j + k] for k in (-1, 0, 1))
        c0, c1, c2 = (c.gather(0, (j + k)[None])[0] for k in (-1, 0, 1))
        # Vertex of the parabola through (u0, c0), (u1, c1), (u2, c2) on a non-uniform grid.
        num = (u1 - u0).square() * (c1 - c2) - (u1 - u2).square() * (c1 - c0)
        den = (u1 - u0) * (c1 - c2) - (u1 - u2) * (c1 - c0)
        vertex = (u1 - 0.5 * num / torch.where(den != 0, den, 1.0)).clamp(u0, u2)
        peak = torch.where(at_edge | (den == 0), peak, vertex)
    temperature = peak.exp().masked_fill(missing, math.nan)
    return HeatPeak(temperature, value, at_edge)


@dataclass
class PooledMeans:
    """Sums and counts of kept values per cell (..., L, H, *extra): means per head, per layer and per model.

    Pooled means weigh every kept row (or pair) equally. ``extra`` trailing axes (0 for row means, 1 for a
    positional profile) are kept by every mean. Adding two (sequences, chunks) pools them; a positional axis of
    different lengths is zero-padded first.
    """

    sums: torch.Tensor  # (..., L, H, *extra) float64
    counts: torch.Tensor  # (..., L, H, *extra) int64 values kept in each sum
    n_extra: int = 0

    def __post_init__(self):
        if self.sums.shape != self.counts.shape or self.sums.ndim < 2 + self.n_extra:
            raise TrajectoryError(f"PooledMeans: sums {tuple(self.sums.shape)} and counts {tuple(self.counts.shape)} "
                                  f"must share one (..., L, H{', P' * self.n_extra}) shape")

    def _mean(self, dims) -> torch.Tensor:
        n = self.counts.sum(dims) if dims else self.counts
        return (self.sums.sum(dims) if dims else self.sums) / n.to(self.sums.dtype)  # 0/0 = NaN: nothing kept

    @property
    def per_head(self) -> torch.Tensor:
        """(..., L, H, *extra)"""
        return self._mean(())

    @property
    def per_layer(self) -> torch.Tensor:
        """(..., L, *extra)"""
        return self._mean((-1 - self.n_extra,))

    @property
    def model(self) -> torch.Tensor:
        """(..., *extra)"""
        return self._mean((-2 - self.n_extra, -1 - self.n_extra))

    def __add__(self, other: PooledMeans) -> PooledMeans:
        a, b = self, other
        if self.n_extra and a.sums.shape[-1] != b.sums.shape[-1]:
            width = max(a.sums.shape[-1], b.sums.shape[-1])
            a, b = (PooledMeans(*(torch.nn.functional.pad(x, (0, width - x.shape[-1])) for x in (m.sums, m.counts)),
                                m.n_extra) for m in (a, b))
        return PooledMeans(a.sums + b.sums, a.counts + b.counts, self.n_extra)


def _kept(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    ok = torch.isfinite(values)
    return ok if keep is None else ok & keep.to(values.device)


def reduce_rows(values: torch.Tensor, keep: torch.Tensor | None = None) -> PooledMeans:
    """Pool per-row values (..., L, B, H, Q) over sequences and queries into (..., L, H) cells.

    Rows that are NaN (no visible key) or False in ``keep`` (broadcastable bool, e.g. skipped query positions)
    are left out.
    """
    ok = _kept(values, keep)
    return PooledMeans(torch.where(ok, values.to(torch.float64), 0.0).sum((-3, -1)), ok.sum((-3, -1)))


def by_query_position(values: torch.Tensor, keep: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None) -> PooledMeans:
    """Per-row values (..., L, B, H, Q) as functions of the query's position: (..., L, H, P) means over sequences.

    ``positions`` (Q,) non-negative ints give each query's position (default its index, P = Q).
    """
    ok = _kept(values, keep)
    sums = torch.where(ok, values.to(torch.float64), 0.0).sum(-3)  # (..., L, H, Q)
    counts = ok.sum(-3)
    if positions is not None:
        pos = positions.to(device=values.device, dtype=torch.long).reshape(-1)
        width = int(pos.max()) + 1
        sums = sums.new_zeros(*sums.shape[:-1], width).index_add_(-1, pos, sums)
        counts = counts.new_zeros(*counts.shape[:-1], width).index_add_(-1, pos, counts)
    return PooledMeans(sums, counts, n_extra=1)


def by_key_distance(values: torch.Tensor, mask: torch.Tensor | None = None,
                    query_positions: torch.Tensor | None = None,
                    key_positions: torch.Tensor | None = None) -> PooledMeans:
    """Per-pair values (..., L, B, H, Q, K) (attention weights, energies) as functions of the distance
    d = query position − key position >= 0: (..., L, H, D) means over the visible pairs at each d.

    Positions default to the indices, queries being the last Q of the K keys (as with a KV cache). Visible keys
    after their query (d < 0, absent under a causal mask) are left out.
    """
    k_pos = torch.arange(values.shape[-1], device=values.device) if key_positions is None else key_positions
    q_pos = k_pos[values.shape[-1] - values.shape[-2]:] if query_positions is None else query_positions
    d = q_pos.to(values.device, torch.long)[:, None] - k_pos.to(values.device, torch.long)[None, :]  # (Q, K)
    ok = _kept(values, visible_keys(values, mask) & (d >= 0))
    sums = torch.where(ok, values.to(torch.float64), 0.0).sum(-4).flatten(-2)  # (..., L, H, Q·K)
    counts = ok.sum(-4).flatten(-2)
    index, width = d.clamp_min(0).reshape(-1), max(int(d.max()) + 1, 1)
    return PooledMeans(sums.new_zeros(*sums.shape[:-1], width).index_add_(-1, index, sums),
                       counts.new_zeros(*counts.shape[:-1], width).index_add_(-1, index, counts), n_extra=1)


def bootstrap_pooled_means(sums: torch.Tensor, counts: torch.Tensor, *, n_boot: int = 1000, ci: float = 0.95,
                           seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pooled means Σ sums / Σ counts of M cells over B sequences, ``sums`` and ``counts`` (B, M), with percentile
    bootstrap intervals resampling whole sequences: (value, ci_low, ci_high), each (M,).

    Every cell reads the same resamples (``stats.resample_indices``, so they match ``stats.bootstrap_many`` of a
    pooled mean draw for draw); each resample is one (n_boot, B) @ (B, M) product of draw multiplicities.
    """
    sums, counts = sums.to(torch.float64), counts.to(device=sums.device, dtype=torch.float64)
    value = sums.sum(0) / counts.sum(0)  # (M,)
    n_rows = sums.shape[0]
    if n_boot <= 0 or n_rows < 2:
        return value, value.clone(), value.clone()
    with serial_on_cpu(sums.device):
        idx = resample_indices(n_rows, n_boot, seed, sums.device)  # (n_boot, B)
        weights = torch.zeros(n_boot, n_rows, dtype=torch.float64, device=sums.device)
        weights.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))  # how often each sequence is drawn
        draws = (weights @ sums) / (weights @ counts)  # (n_boot, M); NaN where a resample keeps nothing
    tail = (1 - ci) / 2
    q = torch.tensor([tail, 1 - tail], dtype=torch.float64, device=sums.device)
    low, high = torch.nanquantile(draws.masked_fill(~torch.isfinite(draws), math.nan), q, dim=0)
    return value, torch.where(torch.isnan(low), value, low), torch.where(torch.isnan(high), value, high)
