"""What every printed metric means: the definitions tables of the energy, STP and sphere report sections.

A row's first cell names what it defines: one name, or several separated by ", ", each a metric key or a
shell-style pattern (``z_*`` covers ``z_tangential``). ``covers`` is the one place that reading is made, so
the test that every metric of a section's table has a definition reads the rendered table the same way.
"""
from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from .section import TableBlock

NAME_SEPARATOR = ", "

ENERGY = [
    ["v_t", "h_t − h_{t−1}", "velocity of the state at the site between consecutive positions"],
    ["K_t", "ln(½‖v_t‖²)", "log-kinetic energy"],
    ["V_t", "−ln p(x_t | h_t) = ln PPL_t", "log-potential: point perplexity of the token emitted from h_t"],
    ["H_t", "K_t + V_t = ln E_t", "log-energy; E_t = ½‖v_t‖²·PPL_t"],
    ["n_trajectories, n_steps", "trajectories; steps with a finite H_t", "the sample behind every other number"],
    ["global_cv", "std/|mean| of all (trajectory, step) values", "conservation across the whole run"],
    ["avg_trajectory_cv", "mean over trajectories of std_t/|mean_t|", "conservation within a trajectory"],
    ["cv_of_trajectory_means", "CV of per-trajectory means", "the other reading of 'average of averages'"],
    ["mean_log_energy, mean_log_kinetic, mean_log_ppl", "⟨H_t⟩, ⟨K_t⟩, ⟨V_t⟩ over all steps",
     "the size of each term; a CV divides by |⟨H⟩|"],
    ["kv_ratio_of_means, mean_kv_ratio", "⟨K⟩/⟨V⟩ and ⟨K_t/V_t⟩ (V_t > 1e-6)", "balance of the two terms"],
    ["mean_delta_h, mean_abs_delta_h, drift_h", "⟨ΔH⟩, ⟨|ΔH|⟩, ΣΔH/Σ|ΔH|", "local conservation on the H scale"],
    ["*_e_norm", "the same on E_t / mean_t E_t", "local conservation on normalised E"],
    ["mean_entropy, entropy_variance", "mean and variance over steps of −Σ_v p(v|h_t) ln p(v|h_t), in nats",
     "how spread the next-token distribution is; ln V (vocabulary size V) for a uniform one"],
    ["zero_velocity_fraction", "share of steps with ‖v_t‖ ≤ rtol·max(‖h_t‖, ‖h_{t−1}‖)",
     "steps without a direction, excluded from the energy"],
    ["repeated_token_fraction", "share of steps whose emitted token equals the previous token",
     "repetition; a repeated token can leave the state almost still"],
    ["el_residual_median, el_residual_mean",
     "median, mean over steps of ‖Δ(2v/‖v‖²) − ∇_h ln p(x_t|h_t)‖ / (‖Δ(2v/‖v‖²)‖ + ‖∇‖)",
     "log-Euler–Lagrange residual, 0 = exact"],
    ["el_residual_median_minus", "median ‖Δp + ∇‖ / (‖Δp‖ + ‖∇‖)", "the same residual with the sign of Thm. D.1's proof"],
    ["el_cos_median, el_scale_ratio_median", "median cos(Δp_t, ∇_h ln p), median ‖Δp_t‖ / ‖∇_h ln p‖",
     "whether the two sides point the same way (1: they do, 0: orthogonal), and their size ratio"],
    ["classical_energy_cv", "CV of ½‖v_t‖² − ln p_t", "the classical (not log) energy; the paper says it exceeds 50 %"],
    ["mean_log_lagrangian, log_action_per_step", "⟨K − V⟩ over steps; per trajectory Σ(K − V)/n, averaged",
     "the log-Lagrangian and its action per step"],
    ["logit_displacement_rel_error", "median ‖Δz − W·Δh‖ / ‖Δz‖", "Prop. B.1: 0 at final for a bias-free head"],
    ["attractor_unique_tokens_mean, attractor_unique_tokens_sem",
     "distinct argmax tokens on (1−α)h_t + αh_{t+1}, α = 0, 0.1, …, 1: mean, and its standard error over segments",
     "neighbouring-attractor test"],
]

STP = [
    ["d1, d2, a", "h_t − h_{t−1}, h_{t+1} − h_t, d2 − d1", "consecutive steps of a triplet and its acceleration"],
    ["a∥, a⊥", "(a·d̂1) d̂1 and a − a∥", "acceleration along the previous step and normal to it"],
    ["n_triplets", "triplets (h_{t−1}, h_t, h_{t+1}) with ‖d1‖, ‖d2‖ > 0", "the sample behind every other number"],
    ["identity_max_abs_error", "max |1 − cos − (1 ∓ √(1 − ‖a⊥‖²/‖d2‖²))|, sign from cos", "the exact two-branch identity, float64"],
    ["branch_cos_nonnegative, branch_cos_negative", "triplets with cos(d1, d2) ≥ 0, < 0", "which branch each lies on"],
    ["cos_nonnegative_fraction", "share of triplets with cos(d1, d2) ≥ 0", "where the paper's single-branch identity applies"],
    ["paper_identity_failure_fraction", "share with |1 − √(1 − ‖a⊥‖²/‖d2‖²) − (1 − cos)| > 1e-6",
     "where the paper's single-branch formula misses the STP loss"],
    ["paper_identity_max_abs_error_cos_nonnegative", "the largest such error over triplets with cos ≥ 0",
     "the formula's accuracy where it applies"],
    ["decelerating_fraction", "share with a·d̂1 < 0", "progress along d1 falls short of ‖d1‖; true whenever cos < 0, "
                                                      "so it separates little"],
    ["speed_decreasing_fraction", "share with ‖d2‖ < ‖d1‖", "the speed itself falls; 0.5 for no trend"],
    ["mean_a_parallel, mean_a_perp", "⟨|a·d̂1|⟩, ⟨‖a⊥‖⟩ over triplets", "tangential and normal acceleration"],
    ["tangential_normal_ratio", "mean ‖a∥‖ / mean ‖a⊥‖", "how much of the acceleration is speed change"],
    ["mean_stp_loss", "⟨1 − cos(d1, d2)⟩", "the STP loss: 0 on a straight line, 1 at a right-angle turn, 2 reversing"],
    ["span_stp_loss", "1 − cos(before + after, patch) over random spans", "the span form: 0 inside a straight tube"],
    ["z_*, p_*", "permutation null: z = (real − null mean)/null std; one-sided p = (1 + #{null ≤ real})/(K + 1)",
     "z < 0 and a small p: smaller than in shuffled order (smoother than chance)"],
]

SPHERE = [
    ["x_t, θ_t", "h_t/‖h_t‖; ∠(x_t, x_{t+1})", "the state on the unit sphere and its geodesic step"],
    ["n_paths, n_steps", "paths; steps θ_t over all paths", "the sample behind every other number"],
    ["mean_step_angle", "⟨θ_t⟩ in radians", "how far the direction moves per step (π/2: to an orthogonal state)"],
    ["mean_covariant_acceleration", "⟨‖log_{x_t}(x_{t+1}) − P(log_{x_{t−1}}(x_t))‖⟩, P parallel transport",
     "change of velocity along the sphere; 0 on a great circle at constant speed"],
    ["median_geodesic_curvature", "median ‖A_t‖/(θ_{t−1}θ_t)", "turning per unit step², 0 on a great circle"],
    ["mean_el_residual", "⟨‖log_{x_t}(x_{t+1}) + log_{x_t}(x_{t−1})‖ / (‖…‖ + ‖…‖)⟩ ∈ [0, 1]",
     "Euler–Lagrange residual of the action ½Σθ², 0 on a geodesic"],
    ["mean_path_excess", "⟨(Σθ over a window − θ(ends)) / Σθ⟩", "detour of a window against the geodesic, 0 = straight"],
    ["action_per_step", "½ r² ⟨θ_t²⟩, r the sphere radius", "the discrete geodesic action per step"],
    ["mean_norm, norm_cv", "⟨‖h_t‖⟩ and std/mean of ‖h_t‖", "the radial part the sphere discards"],
    ["radial_fraction", "Σ|‖h_{t+1}‖ − ‖h_t‖| / Σ‖h_{t+1} − h_t‖", "share of the motion that is radial"],
    ["z_*, p_*", "permutation null: z = (real − null mean)/null std; one-sided p = (1 + #{null ≤ real})/(K + 1)",
     "z < 0 and a small p: smaller than in shuffled order (straighter than chance)"],
]


STEER = [
    ["jacobian.success", "share of pairs with p(t*) ≥ η when Algorithm 1 stopped", "how often steering reached η"],
    ["jacobian.steps", "accepted gradient steps", "Algorithm 1's iterations per pair (at most K)"],
    ["jacobian.delta_norm", "‖h_steered − h‖ (median over pairs)", "the size of the intervention"],
    ["jacobian.kl", "KL(p_natural ‖ p_steered) of the next-token distributions", "how much else changed"],
    ["jacobian.action_increment", "ΔS = ln(½‖δh‖²) − Δ ln p(t*) (median)", "the log-Lagrangian's action cost"],
    ["jacobian.p_before, jacobian.p_after", "p(t*) before and after steering", "the target's probability"],
    ["jacobian.unmoved", "share of pairs with p(t*) ≥ η before steering (δh = 0)", "the baselines below are "
     "compared on the other pairs, the ones Algorithm 1 moved"],
    ["*.norm_ratio", "‖δh‖ a baseline needs for the Jacobian's gain / the Jacobian's ‖δh‖ (median, over moved pairs "
     "where it reached the gain)", "≥ 1 in the linear regime by Theorem E.1"],
    ["*.reached", "share of moved pairs where the baseline reached the Jacobian's gain within its search range",
     "a random direction often cannot"],
    ["*.kl_at_equal_gain", "KL(p_natural ‖ p_method) at the Jacobian's gain in log p(t*), over the moved pairs "
     "where the method reached that gain (see *.reached: a rarely-reaching method's mean is over its easy pairs)",
     "collateral change for the same effect; logit_bias adds a constant to the target's logit"],
    ["*.gain_at_equal_norm", "Δ ln p(t*) a method buys with the Jacobian's ‖δh‖ (moved pairs)",
     "the Jacobian's own is jacobian.logp_gain"],
    ["jacobian.logp_gain", "ln p_after − ln p_before", ""],
    ["<judge>.<method>", "the judge's score of the method's top-k lists, averaged over positions then texts",
     "natural, jacobian, additive (along W_t*) and random (one random direction), both at the Jacobian's ‖δh‖"],
    ["<judge>.<method>.cohens_dz", "mean(d)/sd(d) of the per-text differences d = method − natural, with a "
     "bootstrap interval over texts", "the paired effect size (the paper's Cohen's d)"],
    ["<judge>.<method>.p_value", "two-sided paired t-test, df = texts − 1", "Table 3's p"],
    ["<judge>.<method>.sign_p_value, *.n_higher, *.n_lower", "exact two-sided sign test over the texts whose "
     "scores differ", "no assumption on the shape of the differences"],
    ["energy.natural.*, energy.steered.*", "the energy metrics (see the energy section) of natural and steered "
     "continuations, steered toward the true tokens", "the paper's 'near-constant energy under steering'"],
    ["energy.paired.*.p_value", "paired t-test over trajectories of the per-trajectory CV of H / drift",
     "whether steering changed the energy's variation"],
    ["texts", "texts (units of the paired tests)", ""],
]


def names_of(cell: str) -> list[str]:
    """The names (or patterns) a definition row's first cell defines."""
    return [n.strip() for n in cell.split(NAME_SEPARATOR.strip()) if n.strip()]


def covers(cell: str, key: str) -> bool:
    """Whether a definition row whose first cell is ``cell`` defines the metric ``key``."""
    return any(fnmatchcase(key, name) for name in names_of(cell))


def undefined(keys: Iterable[str], rows: list[list[str]]) -> list[str]:
    """The keys no row of a definitions table (header first) defines."""
    return [k for k in keys if not any(covers(r[0], k) for r in rows[1:])]


def definitions_table(rows: list[list[str]]) -> TableBlock:
    return TableBlock("Definitions", [["quantity", "formula", "meaning"], *rows])
