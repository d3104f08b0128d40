"""Sentences that open each report section: what its numbers show, written from the numbers themselves.

Every function takes the section's results entries (each with ``model``, ``weights`` 'pretrained' or 'random'
and ``metrics``, whose values are numbers or ``{"value", "ci_low", "ci_high"}``), pairs each pretrained run
with its random twin, and returns plain sentences. Each conclusion is chosen by a comparison of the numbers it
quotes (the thresholds are named below), so the text stays true whatever a run measures; a metric that is
absent drops its clause, and a run without a twin is described on its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .section import interval_of, value_of

ALPHA = 0.05  # one-sided permutation p <= ALPHA: smaller than shuffled; p >= 1 - ALPHA: larger than shuffled
NEAR_UNIFORM = 0.9  # a mean entropy of at least this share of ln V reads as a near-uniform distribution
EL_ORTHOGONAL = 0.3  # |median cos| below this: the two sides of the log-EL equation are nearly orthogonal
EL_ALIGNED = 0.9  # median cos at least this: the two sides point the same way
PAPER_CLASSICAL_CV = 0.5  # the energy paper: the CV of the classical energy exceeds 50 %
CONSTANT_NORM_CV = 1e-3  # a norm CV below this: the states already lie on a sphere
SPHERE_NULLS = (("step_angle", "step angle"), ("covariant_acceleration", "covariant acceleration"),
                ("geodesic_curvature", "geodesic curvature"), ("el_residual", "EL residual"),
                ("path_excess", "path excess"))


# -- numbers and phrases ---------------------------------------------------------------------------------------

def num(x: float) -> str:
    return f"{x:.3g}".replace("-", "−", 1) if x < 0 else f"{x:.3g}"  # a typeset minus, as in the formulas


def pct(x: float) -> str:
    return f"{100 * x:.3g} %"


def join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def metric(entry: dict | None, key: str) -> float | None:
    """A metric's value as a float, or None when the entry or the metric is missing (or not a number)."""
    if entry is None:
        return None
    value = value_of(entry.get("metrics", {}).get(key))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def times(a: float, b: float) -> str:
    """How many times larger the larger of two positive numbers is, e.g. '4.11 times'."""
    return f"{max(a, b) / min(a, b):.3g} times"


def p_phrase(p: float, entry: dict) -> str:
    """'p = 0.23', or at the floor of the permutation test the floor, named as such."""
    k = entry.get("conventions", {}).get("n_permutations")
    if k and p <= (1 + 1e-9) / (k + 1):
        return f"p = {num(p)}, the smallest {k} permutations can give"
    return f"p = {num(p)}"


def null_side(p: float | None) -> str | None:
    """'smaller' or 'larger' than in shuffled order when the one-sided p says so at ALPHA, else 'like'."""
    if p is None:
        return None
    return "smaller" if p <= ALPHA else "larger" if p >= 1 - ALPHA else "like"


# -- runs and their twins --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """One model's runs: the pretrained one and its random twin (either may be absent)."""

    model: str
    pretrained: dict | None
    random: dict | None

    def runs(self) -> list[dict]:
        return [e for e in (self.pretrained, self.random) if e is not None]


def pairs(entries: list[dict]) -> list[Pair]:
    """Entries grouped by model, in the order the models first appear."""
    model = lambda e: e.get("model", e.get("run", "?"))  # noqa: E731

    def first(m: str, random: bool) -> dict | None:
        return next((e for e in entries if model(e) == m and (e.get("weights") == "random") == random), None)

    return [Pair(m, first(m, False), first(m, True)) for m in dict.fromkeys(map(model, entries))]


def name(pair: Pair, entry: dict, several: bool) -> str:
    """How a sentence names a run: by role for one model, by model name when the section holds several."""
    random = entry.get("weights") == "random"
    if several:
        return f"{pair.model}'s random twin" if random and pair.pretrained else \
            f"random-weight {pair.model}" if random else pair.model
    return ("the random twin" if pair.pretrained else "the random-weight model") if random else "the pretrained model"


def per_run(pair: Pair, several: bool, texts: dict[int, str]) -> str:
    """'X for the pretrained model and Y for the random twin' from {id(entry): X}."""
    return join([f"{texts[id(e)]} for {name(pair, e, several)}" for e in pair.runs() if id(e) in texts])


def shares(pair: Pair, several: bool, texts: dict[int, str], noun: str = "triplets") -> str:
    """'X of the pretrained model's triplets and Y of the random twin's' from {id(entry): X}."""
    runs = [e for e in pair.runs() if id(e) in texts]
    return join([f"{texts[id(e)]} of {name(pair, e, several)}'s" + (f" {noun}" if i == 0 else "")
                 for i, e in enumerate(runs)])


# -- energy ------------------------------------------------------------------------------------------------------

def vocab_size(entry: dict) -> int | None:
    """The vocabulary size recorded in the entry's model description (its config), when there."""
    config = (entry.get("model_description") or {}).get("config") or {}
    size = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
    return int(size) if isinstance(size, int) and size > 1 else None


def explain_energy(entries: list[dict]) -> list[str]:
    groups = pairs(entries)
    return [s for p in groups for s in _energy(p, len(groups) > 1)]


def _energy(pair: Pair, several: bool) -> list[str]:
    return [s for s in (_energy_cv(pair, several), _energy_uniform(pair, several), _energy_classical(pair, several),
                        _energy_el(pair, several)) if s]


def _energy_cv(pair: Pair, several: bool) -> str | None:
    cvs = {id(e): cv for e in pair.runs() if (cv := metric(e, "global_cv")) is not None}
    if not cvs:
        return None
    text = "The CV of the log-energy H over all steps is " + per_run(pair, several, {k: num(v) for k, v in cvs.items()})
    if pair.pretrained is None or pair.random is None or len(cvs) < 2:
        return text + "."
    low, high = sorted(pair.runs(), key=lambda e: cvs[id(e)])  # the run with the smaller CV first
    cv_low, cv_high = cvs[id(low)], cvs[id(high)]
    if cv_low == cv_high:
        return text + ": they are equal."
    text += f": {name(pair, low, several)}'s is " + (f"{times(cv_low, cv_high)} smaller" if cv_low > 0 else "smaller")
    mean_low, mean_high = metric(low, "mean_log_energy"), metric(high, "mean_log_energy")
    if mean_low is None or mean_high is None or cv_low <= 0:
        return text + "."
    sd_low, sd_high = cv_low * abs(mean_low), cv_high * abs(mean_high)  # CV = std/|mean|: the spread is CV·|mean|
    return (text + f"; as CV = std/|⟨H⟩|, that is {compare(sd_low, sd_high)} spread (std {num(sd_low)} against "
                   f"{num(sd_high)}) over {compare(abs(mean_low), abs(mean_high))} mean (⟨H⟩ = {num(mean_low)} "
                   f"against {num(mean_high)}).")


def compare(x: float, y: float) -> str:
    """'a smaller', 'a larger' or 'an equal': x against y."""
    return "a smaller" if x < y else "a larger" if x > y else "an equal"


def _energy_uniform(pair: Pair, several: bool) -> str | None:
    """The random run's next-token distribution against a uniform one over its vocabulary."""
    rnd = pair.random
    vocab = vocab_size(rnd) if rnd else None
    entropy, log_ppl = metric(rnd, "mean_entropy"), metric(rnd, "mean_log_ppl")
    if vocab is None or (entropy is None and log_ppl is None):
        return None
    ln_v = math.log(vocab)
    facts = ([f"mean entropy is {num(entropy)} nats ({pct(entropy / ln_v)} of ln V)"] if entropy is not None else []) \
        + ([f"mean ln PPL is {num(log_ppl)} ({pct(log_ppl / ln_v)} of ln V)"] if log_ppl is not None else [])
    spread = entropy if entropy is not None else log_ppl
    shape = "near-uniform" if spread >= NEAR_UNIFORM * ln_v else "far from uniform"
    text = (f"The next-token distribution of {name(pair, rnd, several)} is {shape}: its {' and its '.join(facts)}, "
            f"where ln V = {num(ln_v)} is the value of a uniform draw from its {vocab:,}-token vocabulary")
    pre_cv, rnd_cv = metric(pair.pretrained, "global_cv"), metric(rnd, "global_cv")
    if shape == "near-uniform" and pre_cv is not None and rnd_cv is not None and rnd_cv < pre_cv:
        text += "; so its smaller CV comes from that distribution, whose large ln PPL lifts ⟨H⟩, not from conservation"
    return text + "."


def _energy_classical(pair: Pair, several: bool) -> str | None:
    cvs = {id(e): cv for e in pair.runs() if (cv := metric(e, "classical_energy_cv")) is not None}
    if not cvs:
        return None
    above = {k: v > PAPER_CLASSICAL_CV for k, v in cvs.items()}
    verdict = ("above the paper's > 50 %, as it reports" if all(above.values()) else
               "below the paper's > 50 %" if not any(above.values()) else
               "above the paper's > 50 % for " + join([name(pair, e, several) for e in pair.runs() if above.get(id(e))])
               + " only")
    return ("The classical energy ½‖v‖² − ln p has a CV of " + per_run(pair, several, {k: pct(v) for k, v in cvs.items()})
            + f": {verdict}.")


def _el_reading(cos: float) -> str:
    if abs(cos) < EL_ORTHOGONAL:
        return "near 0, so the two sides are nearly orthogonal and the equation does not hold"
    if cos >= EL_ALIGNED:
        return "near 1, so the two sides point the same way"
    if cos <= -EL_ALIGNED:
        return "near −1, so the two sides point opposite ways, as with the sign of the proof of Thm. D.1"
    return "neither near 0 nor near ±1, so the equation holds at best in part"


def _energy_el(pair: Pair, several: bool) -> str | None:
    cos = {id(e): c for e in pair.runs() if (c := metric(e, "el_cos_median")) is not None}
    if not cos:
        return None
    readings = {k: _el_reading(v) for k, v in cos.items()}
    values = per_run(pair, several, {k: num(v) for k, v in cos.items()})
    text = f"The median cosine between the two sides of the log-Euler–Lagrange equation is {values}"
    if len(set(readings.values())) == 1:
        text += f": {next(iter(readings.values()))}"
    else:
        text += ": " + "; ".join(f"for {name(pair, e, several)} {readings[id(e)]}" for e in pair.runs() if id(e) in cos)
    residual = {id(e): num(r) for e in pair.runs() if (r := metric(e, "el_residual_median")) is not None}
    return text + (f" (median relative residual {per_run(pair, several, residual)})." if residual else ".")


# -- STP ---------------------------------------------------------------------------------------------------------

def explain_stp(entries: list[dict]) -> list[str]:
    groups = pairs(entries)
    return [s for p in groups for s in (_stp_branch(p, len(groups) > 1), _stp_speed(p, len(groups) > 1),
                                        _stp_null(p, len(groups) > 1)) if s]


def _stp_branch(pair: Pair, several: bool) -> str | None:
    share = {id(e): f for e in pair.runs() if (f := metric(e, "cos_nonnegative_fraction")) is not None}
    if not share:
        return None
    qualifier = "only " if all(v < 0.5 for v in share.values()) else ""
    text = (f"cos(d1, d2) ≥ 0 in {qualifier}{shares(pair, several, {k: pct(v) for k, v in share.items()})}, and "
            "only there does the paper's single-branch identity L = 1 − √(1 − ‖a⊥‖²/‖d2‖²) hold")
    failures = {id(e): f for e in pair.runs() if (f := metric(e, "paper_identity_failure_fraction")) is not None}
    if failures and all(v == 0 for v in failures.values()):
        return text + ": it matches 1 − cos on every triplet."
    if failures:
        text += ": it misses 1 − cos by more than 1e-6 in " + shares(pair, several, {k: pct(v) for k, v in failures.items()})
    return text + "."


def _speed(entry: dict) -> tuple[str, str | None] | None:
    """(the share of triplets whose speed falls, as text; 'above', 'below' or 'even' against 0.5 by its interval)."""
    raw = entry.get("metrics", {}).get("speed_decreasing_fraction")
    value, ci = value_of(raw), interval_of(raw)
    if value is None:
        return None
    if ci is None:  # no interval: the distance from 0.5 is stated, not judged
        return f"{pct(value)} (no interval; {num(abs(value - 0.5) * 100)} points from 50 %)", None
    lo, hi = ci
    side = "even" if lo <= 0.5 <= hi else "above" if lo > 0.5 else "below"
    return f"{pct(value)} [{pct(lo)}, {pct(hi)}]", side


SPEED_VERDICTS = {"even": "the speed falls about as often as it rises ({} 50 %)",
                  "above": "the speed falls more often than it rises ({} above 50 %)",
                  "below": "the speed rises more often than it falls ({} below 50 %)"}
SPEED_INTERVALS = {"even": ("its interval contains", "both intervals contain"),
                   "above": ("its interval lies", "both intervals lie"), "below": ("its interval lies", "both intervals lie")}


def _stp_speed(pair: Pair, several: bool) -> str | None:
    readings = {id(e): r for e in pair.runs() if (r := _speed(e)) is not None}
    if not readings:
        return None
    text = "The speed falls (‖d2‖ < ‖d1‖) in " + shares(pair, several, {k: t for k, (t, _) in readings.items()})
    sides = [readings[id(e)][1] for e in pair.runs() if id(e) in readings]
    if None in sides:
        return text + "."
    if len(set(sides)) == 1:
        return text + ": " + SPEED_VERDICTS[sides[0]].format(SPEED_INTERVALS[sides[0]][len(sides) > 1]) + "."
    return text + ": " + "; ".join(
        f"for {name(pair, e, several)} {SPEED_VERDICTS[readings[id(e)][1]].format(SPEED_INTERVALS[readings[id(e)][1]][0])}"
        for e in pair.runs() if id(e) in readings) + "."


def _stp_null(pair: Pair, several: bool) -> str | None:
    parts, verdicts = [], {}
    for e in pair.runs():
        z = [metric(e, k) for k in ("z_tangential", "z_normal")]
        p = [metric(e, k) for k in ("p_tangential", "p_normal")]
        if None in z or None in p:
            continue
        sides = [null_side(x) for x in p]
        verdicts[id(e)] = "smoother" if sides == ["smaller"] * 2 else "rougher" if sides == ["larger"] * 2 else "mixed"
        p_text = p_phrase(p[0], e) if p[0] == p[1] else f"p = {num(p[0])} and {num(p[1])}"
        parts.append(f"{_sides_phrase(sides)} for {name(pair, e, several)} (z = {num(z[0])} and {num(z[1])}; {p_text})")
    if not parts:
        return None
    text = "Against the same paths in shuffled order, the real tangential and normal accelerations are " + join(parts)
    if set(verdicts.values()) == {"smoother"}:
        text += ": the real order is smoother than chance"
        if len(verdicts) == 2:  # the pretrained model and its random twin both
            text += ", with random weights too, so this smoothness does not need training"
    elif set(verdicts.values()) == {"rougher"}:
        text += ": the real order is rougher than chance"
    return text + "."


def _sides_phrase(sides: list[str]) -> str:
    """The two one-sided readings (tangential, normal) as words."""
    words = {"smaller": "smaller", "larger": "larger", "like": "indistinguishable from shuffled"}
    if sides[0] == sides[1]:
        return words[sides[0]]
    return f"{words[sides[0]]} (tangential) and {words[sides[1]]} (normal)"


# -- sphere ------------------------------------------------------------------------------------------------------

def explain_sphere(entries: list[dict]) -> list[str]:
    groups = pairs(entries)
    return [s for p in groups for s in (_sphere_step(p, len(groups) > 1), _sphere_null(p, len(groups) > 1),
                                        _sphere_norm(p, len(groups) > 1)) if s]


def _sphere_step(pair: Pair, several: bool) -> str | None:
    theta = {id(e): t for e in pair.runs() if (t := metric(e, "mean_step_angle")) is not None}
    if not theta:
        return None
    text = "The mean geodesic step between consecutive directions is " + per_run(
        pair, several, {k: f"{num(t)} rad ({math.degrees(t):.3g}°)" for k, t in theta.items()})
    null = [metric(e, "null_mean_step_angle") for e in pair.runs() if id(e) in theta]
    if None not in null:
        text += f", against {join([num(t) for t in null])} rad in shuffled order"
    return text + "."


def _sphere_null(pair: Pair, several: bool) -> str | None:
    parts = []
    for e in pair.runs():
        sides = {key: null_side(metric(e, f"p_{key}")) for key, _ in SPHERE_NULLS}
        if None in sides.values():
            continue
        smaller = [label for key, label in SPHERE_NULLS if sides[key] == "smaller"]
        larger = [label for key, label in SPHERE_NULLS if sides[key] == "larger"]
        listed = ([f"smaller {join(smaller)}"] if smaller else []) + ([f"larger {join(larger)}"] if larger else [])
        have = f"have {' but '.join(listed)}" if listed else "match shuffled order in every statistic"
        straight = {sides["step_angle"], sides["path_excess"]}
        verdict = ("so they are straighter than shuffled" if straight == {"smaller"} else
                   "so they are less straight than shuffled" if straight == {"larger"} else
                   "so step angle and path excess do not both call them straighter than shuffled")
        z = metric(e, "z_step_angle")
        parts.append(f"{name(pair, e, several)}'s paths {have}, {verdict}" +
                     (f" (step-angle z = {num(z)})" if z is not None else ""))
    if not parts:
        return None
    return f"Against shuffled order (one-sided p ≤ {ALPHA} either way), " + "; ".join(parts) + "."


def _sphere_norm(pair: Pair, several: bool) -> str | None:
    parts = []
    for e in pair.runs():
        cv, radial = metric(e, "norm_cv"), metric(e, "radial_fraction")
        if cv is None:
            continue
        facts = f"CV {num(cv)}" + (f"; radial motion {pct(radial)} of the path" if radial is not None else "")
        state = (f"is constant ({facts}): its states already lie on a sphere" if cv < CONSTANT_NORM_CV
                 else f"varies ({facts})")
        parts.append(f"for {name(pair, e, several)} it {state}")
    if not parts:
        return None
    return "The sphere discards the norm ‖h‖: " + "; ".join(parts) + "."
