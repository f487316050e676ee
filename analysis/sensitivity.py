"""Response of accuracy to each searched parameter, at every fidelity.

Final fit: phase "search", status "completed", finite metric. Rung fits: at
each ASHA rung epoch (as the study's manifest records them: rung_epochs), the
val_acc every search trial had at that epoch (history.parquet), pruned ones
included: they all trained exactly that long, so the comparison is fair at
that epoch, and a study whose scheduler pruned most trials still gets
curves. Each curve is labelled by the epoch it holds at ("final" for the
completed-trial fit). Mixing a pruned trial's early score into the final fit
would bias it down where the scheduler was impatient, so that is never done.
Failed and diverged trials have no meaningful accuracy and are reported
instead as rates in `categorical_levels`. Repeat and twin runs are excluded
so the curve sees the search's own sampling design.

Numeric parameters get a Gaussian-process fit (RBF + white noise, on log10(x)
for log-scale parameters, standardised y; a conditional parameter uses only
the trials where its condition held) with a bootstrap band: trials are
resampled with replacement and the GP refit with the kernel hyper-parameters
of the full-data fit held fixed (refitting them per resample costs ~100x
more and moves the band little). The band is therefore a 95% band for the
fitted mean curve, not a prediction interval for a new trial. The argmax
interval adds one posterior draw per resample (see _bootstrap).

Whether a curve shows an effect at all is a separate, classical question: an
F-test of a quadratic trend in the fit's axis (statsmodels OLS) against a
constant. Where it finds none (p >= ALPHA) the curve reports "no detectable
effect in [low, high]" instead of an argmax: a GP through a few noisy points
always has a maximum somewhere, and printing it invites reading noise.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel
from statsmodels.regression.linear_model import OLS
from threadpoolctl import threadpool_limits

from .declared import level_rates
from .load import InsufficientDataError, searched_list
from .spaces import param_info
from study.stats.intervals import ALPHA, clip, mean_ci

MIN_POINTS = 5  # fewer completed trials than this: no curve, a note instead
MIN_UNIQUE = 5  # a numeric param with fewer distinct values is shown as levels


@dataclass
class Curve:
    """A fitted response curve y(x) with a 95% bootstrap band and argmax interval."""

    param: str
    metric: str
    log: bool
    x: np.ndarray  # observed points, original units
    y: np.ndarray
    grid: np.ndarray  # original units
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    argmax: float
    argmax_lo: float
    argmax_hi: float
    n: int
    n_boot: int
    experiment: str = ""
    variant: str = ""
    method: str = "gp"
    epoch: int | None = None  # the rung epoch the fit holds at; None: final (completed trials)
    trend_p: float = float("nan")  # F-test of a quadratic trend against a constant (module docstring)

    @property
    def fidelity(self) -> str:
        return "final" if self.epoch is None else f"epoch {self.epoch}"

    @property
    def detectable(self) -> bool:
        """The trials show an effect of the parameter: trend_p < ALPHA."""
        return bool(self.trend_p < ALPHA)

    @property
    def result(self) -> str:
        """What the fit says, in words: where the optimum lies, or that there is none to see."""
        if not self.detectable:
            return f"no detectable effect in [{self.grid[0]:.3g}, {self.grid[-1]:.3g}]"
        return f"best near {self.argmax:.3g} (95%: {self.argmax_lo:.3g} to {self.argmax_hi:.3g})"

    def summary(self) -> dict:
        """One row; argmax and its interval only where an effect is detectable."""
        i = int(np.argmax(self.mean))
        nan = float("nan")
        arg = (self.argmax, self.argmax_lo, self.argmax_hi) if self.detectable else (nan, nan, nan)
        return {"experiment": self.experiment, "variant": self.variant, "param": self.param,
                "fidelity": self.fidelity, "metric": self.metric, "log": self.log, "n": self.n,
                "trend_p": self.trend_p, "detectable": self.detectable, "result": self.result, "argmax": arg[0],
                "argmax_lo": arg[1], "argmax_hi": arg[2], "max_mean": float(self.mean[i]),
                "max_lo": float(self.lo[i]), "max_hi": float(self.hi[i]), "method": self.method}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"experiment": self.experiment, "variant": self.variant, "param": self.param,
                             "fidelity": self.fidelity, "metric": self.metric, "x": self.grid, "mean": self.mean,
                             "lo": self.lo, "hi": self.hi})


def _kernel():
    # x is scaled to [0, 1]; a length-scale floor of 0.05 keeps the fit from
    # threading every noisy point.
    return (ConstantKernel(1.0, (1e-3, 1e3)) * RBF(0.3, (0.05, 10.0))
            + WhiteKernel(0.1, (1e-6, 1e1)))


def _bootstrap(gp: GaussianProcessRegressor, u: np.ndarray, z: np.ndarray, gu: np.ndarray,
               n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(means, draws) on the grid, one row per resample of the trials.

    means: the GP posterior mean refit on the resample. The kernel is the
    full-data fit's (signal part k1 + white noise k2), so a refit is one
    Cholesky solve; noise goes on the diagonal only, so a trial drawn twice
    counts as two noisy observations. draws: mean + one draw of the
    noise-free posterior. The argmax interval uses the draws: argmaxes of the
    smooth refit means alone covered the true optimum only ~70% of the time
    on planted quadratics (they ignore the GP's uncertainty between points);
    with the draws coverage was ~95%.
    """
    signal, noise = gp.kernel_.k1, float(gp.kernel_.k2.noise_level)
    k_uu, k_gu, k_gg = signal(u), signal(gu, u), signal(gu)
    rng = np.random.default_rng(seed)
    n, g = u.shape[0], gu.shape[0]
    idx = rng.integers(0, n, (n_boot, n))
    # a resample with < 3 distinct x can't shape a curve; drop it
    idx = idx[[np.unique(u[r, 0]).size >= 3 for r in idx]]
    if not len(idx):
        return np.empty((0, g)), np.empty((0, g))
    # Batched over resamples: one stacked Cholesky instead of a Python loop.
    k = k_uu[idx[:, :, None], idx[:, None, :]] + (noise + 1e-10) * np.eye(n)
    low = np.linalg.cholesky(k)
    kg = k_gu[:, idx].transpose(1, 0, 2)  # (b, g, n)
    a = np.linalg.solve(low, kg.transpose(0, 2, 1))  # L^-1 k_ug: (b, n, g)
    w = np.linalg.solve(low, z[idx][:, :, None])  # L^-1 z: (b, n, 1)
    means = (a.transpose(0, 2, 1) @ w)[:, :, 0]
    cov = k_gg - a.transpose(0, 2, 1) @ a
    cov = 0.5 * (cov + cov.transpose(0, 2, 1)) + 1e-8 * np.eye(g)
    try:
        cl = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:  # numerically indefinite: eigen-decomposition is robust
        ev, vec = np.linalg.eigh(cov)
        cl = vec * np.sqrt(np.clip(ev, 0, None))[:, None, :]
    draws = means + (cl @ rng.standard_normal((len(idx), g, 1)))[:, :, 0]
    return means, draws


def trend_p(t: np.ndarray, y: np.ndarray) -> float:
    """p-value of the F-test of y ~ 1 + t + t^2 against y ~ 1 (statsmodels
    OLS); 1.0 when y does not vary (nothing to explain)."""
    if np.ptp(y) == 0:
        return 1.0
    c = (t - t.mean()) / (t.std() or 1.0)  # centred: t and t^2 stay apart
    p = float(OLS(y, np.column_stack([np.ones_like(c), c, c**2])).fit().f_pvalue)
    return p if np.isfinite(p) else 1.0


UNIT_METRICS = frozenset({"val_acc", "test_acc", "train_acc", "best_val_acc", "test_acc_last"})


def in_unit(metric: str) -> bool:
    """Whether `metric` lives in [0, 1]: the trainer's accuracies, and any accuracy a
    variant adds (named like one: "<what>_acc")."""
    return metric in UNIT_METRICS or str(metric).endswith("_acc")


def fit_curve(x, y, *, log: bool = False, n_boot: int = 200, grid_size: int = 120, seed: int = 0,
              param: str = "x", metric: str = "y", experiment: str = "", variant: str = "",
              unit: bool | None = None) -> Curve:
    """GP fit of y against x with a bootstrap band and bootstrap argmax interval.
    For a metric that lives in [0, 1] (`unit`; None: an accuracy, in_unit) the fit
    and band are clipped to it: a GP extrapolates happily past 1. A caller that
    knows its metric is a share (a variant's declared gain) says unit=True."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    ok = np.isfinite(x) & np.isfinite(y) & ((x > 0) if log else True)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < MIN_POINTS or np.unique(x).size < 3:
        raise InsufficientDataError(
            f"{param}: {n} usable trials with {np.unique(x).size} distinct values; a curve needs "
            f">= {MIN_POINTS} trials and >= 3 distinct values")
    t = np.log10(x) if log else x
    t0, t1 = float(t.min()), float(t.max())
    u = ((t - t0) / (t1 - t0))[:, None]
    ym, ys = float(y.mean()), float(y.std()) or 1.0
    z = (y - ym) / ys
    gu = np.linspace(0.0, 1.0, grid_size)[:, None]
    grid_t = t0 + gu[:, 0] * (t1 - t0)
    grid = 10**grid_t if log else grid_t

    # Many tiny (batched) matrix products: BLAS threads only contend here
    # (200x slower measured on a busy 2-core box), so run single-threaded.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp = GaussianProcessRegressor(_kernel(), n_restarts_optimizer=1, random_state=seed).fit(u, z)
        mean = gp.predict(gu) * ys + ym
        boots, draws = _bootstrap(gp, u, z, gu, n_boot, seed)
    if not len(boots):  # every resample degenerate: no band beyond the fit itself
        boots = draws = gp.predict(gu)[None, :]
    boots = boots * ys + ym
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    if (in_unit(metric) if unit is None else unit):
        mean, lo, hi = np.clip(mean, 0, 1), np.clip(lo, 0, 1), np.clip(hi, 0, 1)
    arg_t = grid_t[np.argmax(draws, axis=1)]
    a_lo, a_hi = np.percentile(arg_t, [2.5, 97.5])
    a = grid_t[int(np.argmax(mean))]
    to_x = (lambda v: float(10**v)) if log else float
    return Curve(param=param, metric=metric, log=log, x=x, y=y, grid=grid, mean=mean, lo=lo, hi=hi,
                 argmax=to_x(a), argmax_lo=to_x(a_lo), argmax_hi=to_x(a_hi), n=n, n_boot=len(boots),
                 experiment=experiment, variant=variant, trend_p=trend_p(t, y))


def usable(df: pd.DataFrame, metric: str = "val_acc") -> pd.DataFrame:
    """Completed search-phase trials with a finite metric (see module docstring)."""
    phase = df["phase"] if "phase" in df.columns else pd.Series("search", index=df.index)
    keep = (phase == "search") & (df["status"] == "completed") & np.isfinite(df[metric].astype(float))
    return df[keep]


def _searched_in(df: pd.DataFrame) -> list[str]:
    names: dict[str, None] = {}
    for v in df["searched"]:
        for n in searched_list(v):
            if n in df.columns:
                names.setdefault(n, None)
    return list(names)


def subject_of(g: pd.DataFrame) -> str:
    """The variant under study in an experiment's rows: `subject` (the twin
    arm's rows run another model, e.g. resnet for quotient), else `variant`."""
    col = "subject" if "subject" in g.columns and g["subject"].notna().any() else "variant"
    return str(g[col].dropna().iloc[0])


def experiments(df: pd.DataFrame):
    """(experiment, its subject, its rows) for each experiment of `df`, by name."""
    for exp, g in df.groupby("experiment", sort=True):
        yield str(exp), subject_of(g), g


def level_order(levels) -> list[str]:
    """Levels as text, in reading order: numerically when every one is a
    number (2, 4, 10, not "10", "2", "4"), else alphabetically."""
    names = sorted({str(v) for v in levels})
    try:
        return sorted(names, key=float)
    except ValueError:
        return names


def split_params(df: pd.DataFrame, variant: str, spec: dict | None = None) -> tuple[list[str], list[str]]:
    """(numeric, categorical) searched params of one experiment's rows.

    An integer param that took fewer than MIN_UNIQUE distinct values among
    the usable trials is shown as levels: a curve through 2-4 x values says
    nothing a per-level mean doesn't. Continuous params always get a curve
    (or a too-few-trials note), never one level per float value.
    """
    num, cat = [], []
    ok = usable(df) if "status" in df.columns else df
    for p in _searched_in(df):
        info = param_info(variant, p, df[p], spec)
        if info.numeric and (info.kind == "float" or ok[p].nunique() >= MIN_UNIQUE):
            num.append(p)
        else:
            cat.append(p)
    return num, cat


@dataclass
class SensitivityResult:
    curves: list[Curve] = field(default_factory=list)
    levels: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> pd.DataFrame:
        return pd.DataFrame([c.summary() for c in self.curves])


def numeric_curves(df: pd.DataFrame, *, metric: str = "val_acc", n_boot: int = 200, seed: int = 0,
                   spec: dict | None = None, epoch: int | None = None) -> tuple[list[Curve], list[str]]:
    """One curve per (experiment, numeric searched param); notes for skipped ones.
    `epoch` labels a rung fit (df then holds the trials' values at that epoch)."""
    curves, notes = [], []
    at = "final" if epoch is None else f"epoch {epoch}"
    for exp, variant, g in experiments(df):
        num, _ = split_params(g, variant, spec)
        ok = usable(g, metric)
        if len(ok) < MIN_POINTS:
            what = "completed search trial(s)" if epoch is None else f"search trial(s) reached epoch {epoch}"
            notes.append(f"{exp} ({at}): only {len(ok)} {what}: too few for sensitivity curves "
                         f"(need {MIN_POINTS})")
            continue
        for p in num:
            info = param_info(variant, p, g[p], spec)
            on = ok[info.active(ok)]  # a conditional param only where its condition held
            try:
                c = fit_curve(on[p].astype(float), on[metric].astype(float), log=info.log,
                              n_boot=n_boot, seed=seed, param=p, metric=metric,
                              experiment=exp, variant=variant)
            except InsufficientDataError as e:
                notes.append(f"{exp} ({at}): no sensitivity curve for {e}")
                continue
            c.epoch = epoch
            curves.append(c)
    return curves, notes


# the columns of every levels table; then the failure counts and rates of the final fit, then
# the rates the variants declare (analysis.declared.level_rates)
LEVEL_COLUMNS = ["experiment", "variant", "param", "fidelity", "level", "n_trials", "n_completed", "mean",
                 "ci_lo", "ci_hi"]
FINAL_COLUMNS = ["n_diverged", "divergence_rate", "n_failed"]


def level_columns() -> list[str]:
    return [*LEVEL_COLUMNS, *FINAL_COLUMNS, *(r.column for r in level_rates())]


def categorical_levels(df: pd.DataFrame, *, metric: str = "val_acc",
                       params: dict[str, list[str]] | None = None, spec: dict | None = None,
                       epoch: int | None = None) -> pd.DataFrame:
    """Per level of each categorical searched param: mean metric with its 95%
    t interval (clipped to [0, 1]: an accuracy cannot leave it) over completed
    trials, and failure rates over all search trials.

    divergence_rate = diverged / all search trials at the level (pruned count
    in the denominator: they ran, and did not diverge while running).
    A conditional param (search_spaces condition) counts only the trials
    where its condition held. Each rate the experiment's variant declares
    (study.variants.LevelRate, quotient's dead_rate) = the share of the trials
    (any status) reporting its metric whose final value exceeds its bound; NaN
    where nothing reported it, and for a variant that does not declare it.
    `params` maps experiment -> params to tabulate (default: the categorical
    searched ones, see split_params). At a rung (`epoch`), df holds the
    trials' values at that epoch and every row that reached it counts.
    """
    rows = []
    search = df[df["phase"] == "search"] if "phase" in df.columns else df
    fidelity = "final" if epoch is None else f"epoch {epoch}"
    columns = level_columns()
    for exp, variant, g in experiments(search):
        rates = level_rates([variant])
        names = params.get(exp, []) if params is not None else split_params(g, variant, spec)[1]
        for p in names:
            on = g[param_info(variant, p, g[p], spec).active(g)]
            groups = dict(list(on.groupby(on[p].astype(str))))
            for level in level_order(groups):
                lv = groups[level]
                done = lv[(lv["status"] == "completed")][metric].astype(float)
                m, lo, hi, n = mean_ci(done)
                lo, hi = clip(lo, hi, (0.0, 1.0)) if metric.endswith("acc") else (lo, hi)
                rows.append({
                    "experiment": exp, "variant": variant, "param": p, "fidelity": fidelity, "level": level,
                    "n_trials": len(lv), "n_completed": n, "mean": m, "ci_lo": lo, "ci_hi": hi,
                    "n_diverged": int((lv["status"] == "diverged").sum()),
                    "divergence_rate": float((lv["status"] == "diverged").mean()),
                    "n_failed": int((lv["status"] == "failed").sum()),
                    **{r.column: _rate(lv, r) for r in rates},
                })
    return pd.DataFrame(rows, columns=columns)


def _rate(trials: pd.DataFrame, rate: Any) -> float:
    reported = trials[rate.metric].astype(float).dropna() if rate.metric in trials.columns else pd.Series([])
    return float((reported > rate.above).mean()) if len(reported) else float("nan")


def rung_epochs(spec: dict | None) -> list[int]:
    """The epochs at which the study's ASHA compared trials, below the last epoch
    (that one is the final fit), ascending; [] without ASHA. Read from the manifest
    analysis.load.load_spec attaches to the spec; a bare spec mapping (no manifest)
    has them placed by the driver's own rule (study.driver.manifest.rung_epochs)."""
    spec = spec or {}
    recorded = (spec.get("manifest") or {}).get("experiments")
    if recorded is not None:
        return sorted({e for x in recorded.values() for e in x.get("rung_epochs") or ()
                       if e < int((x.get("base_config") or {}).get("epochs") or spec.get("epochs") or 0)})
    from study.driver.manifest import rung_epochs as scheduler_rungs
    from study.spec import SchedulerSpec

    try:
        epochs, scheduler = int(spec["epochs"]), SchedulerSpec.model_validate(spec.get("scheduler") or {})
    except (KeyError, TypeError, ValueError):  # no epochs, or no scheduler resstudy runs
        return []
    return [e for e in scheduler_rungs(epochs, scheduler) if e < epochs]


def at_epoch(results: pd.DataFrame, history: pd.DataFrame, epoch: int, metric: str = "val_acc") -> pd.DataFrame:
    """Search trials that reached `epoch`, with `metric` as it stood then
    (from history) and status "completed" (their run to that epoch was);
    `final_status` keeps what happened after."""
    search = results[results["phase"] == "search"] if "phase" in results.columns else results
    h = history[history["epoch"] == epoch].groupby("trial_id").tail(1).set_index("trial_id")
    if metric not in h.columns:
        return search.iloc[0:0]
    vals = search["trial_id"].map(h[metric].astype(float))
    out = search[vals.notna().to_numpy()].copy()
    out["final_status"] = out["status"]
    out[metric] = vals[vals.notna()].to_numpy()
    out["status"] = "completed"
    return out


def sensitivity(df: pd.DataFrame, *, metric: str = "val_acc", n_boot: int = 200, seed: int = 0,
                spec: dict | None = None, history: pd.DataFrame | None = None) -> SensitivityResult:
    """Numeric curves plus categorical level tables for every experiment: the
    final fit from completed trials, and with `history` and an ASHA spec one
    fit per rung from every trial that reached it."""
    curves, notes = numeric_curves(df, metric=metric, n_boot=n_boot, seed=seed, spec=spec)
    levels = [categorical_levels(df, metric=metric, spec=spec)]
    columns = level_columns()
    if history is not None and len(history) and metric in history.columns:
        for e in rung_epochs(spec):
            at = at_epoch(df, history, e, metric)
            if at.empty:
                continue
            c, n = numeric_curves(at, metric=metric, n_boot=n_boot, seed=seed, spec=spec, epoch=e)
            curves += c
            notes += n
            lv = categorical_levels(at, metric=metric, spec=spec, epoch=e)  # failures and rates: final only
            levels.append(lv[LEVEL_COLUMNS].reindex(columns=columns))
    levels = [lv for lv in levels if len(lv)]
    table = pd.concat(levels, ignore_index=True) if levels else pd.DataFrame(columns=columns)
    return SensitivityResult(curves, table, notes)


__all__ = ["Curve", "fit_curve", "in_unit", "trend_p", "level_order", "usable", "split_params",
           "SensitivityResult", "numeric_curves", "categorical_levels", "sensitivity", "experiments", "subject_of",
           "MIN_POINTS", "MIN_UNIQUE"]


# --- designed sweeps: one option set to each level around the best configuration, at every seed --

SWEEP_COLUMNS = ["experiment", "variant", "param", "level", "value", "metric", "n", "mean", "ci_lo", "ci_hi",
                 "best"]


def _same_value(a: Any, b: Any) -> bool:
    """Option values as one level: 2 and 2.0, True and true."""
    if isinstance(a, bool) or isinstance(b, bool):
        return str(a).lower() == str(b).lower()
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _level_text(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return format(v, ".4g")
    return str(v)


@dataclass
class Sweep:
    """One option of one experiment's best configuration set to each level
    (designed arms: everything else as the best configuration, the same seeds
    at every level): the per-level mean over seeds with its 95% t interval,
    and whether the levels differ at all."""

    experiment: str
    variant: str
    param: str
    metric: str
    levels: pd.DataFrame  # SWEEP_COLUMNS, in reading order
    best_value: Any
    numeric: bool
    log: bool
    p_value: float  # F test of a level effect; NaN: too few seeds to test
    test: str

    @property
    def detectable(self) -> bool:
        return bool(self.p_value < ALPHA)

    @property
    def span(self) -> str:
        vals = self.levels["value"].tolist()
        if self.numeric:
            return f"[{min(vals):.3g}, {max(vals):.3g}]"
        return "{" + ", ".join(self.levels["level"]) + "}"

    @property
    def result(self) -> str:
        """What the sweep says: the best level, or that the levels do not differ detectably."""
        if not self.detectable:
            why = " (too few seeds to test)" if not np.isfinite(self.p_value) else ""
            return f"no detectable effect in {self.span}{why}"
        top = self.levels.loc[self.levels["mean"].astype(float).idxmax()]
        chosen = self.levels[self.levels["best"]]
        said = (f"best at {top['level']} (mean {top['mean']:.3f}, 95% CI {top['ci_lo']:.3f} to {top['ci_hi']:.3f})")
        if not len(chosen):
            return said
        if bool(top["best"]):
            return said + "; the search chose it"
        return said + f"; the search chose {chosen['level'].iloc[0]} (mean {chosen['mean'].iloc[0]:.3f})"

    def summary(self) -> dict:
        return {"experiment": self.experiment, "variant": self.variant, "param": self.param, "metric": self.metric,
                "levels": len(self.levels), "seeds": int(self.levels["n"].max()) if len(self.levels) else 0,
                "best_value": _level_text(self.best_value), "p_value": self.p_value, "test": self.test,
                "detectable": self.detectable, "result": self.result}


def level_effect(table: pd.DataFrame) -> tuple[float, str]:
    """(p, test) of "the levels differ" from a (level x seed) table of values:
    a two-way additive ANOVA with seeds as blocks over the seeds every level
    ran (the pairing removes what a seed does to all levels alike), else a
    one-way ANOVA over all values; NaN when neither has the degrees of freedom."""
    from scipy import stats as st

    full = table.dropna(axis=1, how="any")
    k, s = full.shape
    if k >= 2 and s >= 2:
        y = full.to_numpy(dtype=float)
        resid = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        ss_level = s * float(((y.mean(axis=1) - y.mean()) ** 2).sum())
        ss_err = float((resid**2).sum())
        df1, df2 = k - 1, (k - 1) * (s - 1)
        if ss_err == 0:
            return (1.0 if ss_level == 0 else 0.0), "F test, seeds as blocks (no residual spread)"
        return float(st.f.sf((ss_level / df1) / (ss_err / df2), df1, df2)), "F test, seeds as blocks"
    groups = [r.dropna().to_numpy(dtype=float) for _, r in table.iterrows()]
    groups = [g for g in groups if g.size]
    if len(groups) >= 2 and sum(g.size for g in groups) > len(groups) and any(g.size > 1 for g in groups):
        p = float(st.f_oneway(*groups).pvalue)
        return (p if np.isfinite(p) else float("nan")), "one-way ANOVA"
    return float("nan"), "none"


def sweeps(results: pd.DataFrame, design: dict | None, *, metric: str = "val_acc",
           spec: dict | None = None) -> tuple[list[Sweep], list[str]]:
    """(sweeps, notes) from study.json's design: for each experiment's
    designed sweep of an option, its levels' runs (completed, finite metric)."""
    out, notes = [], []
    by_id = results.drop_duplicates("trial_id", keep="last").set_index("trial_id", drop=False)
    for exp, x in sorted((design or {}).items()):
        here = results[results["experiment"] == exp]
        for param, sw in sorted(((x or {}).get("sweeps") or {}).items()):
            m = sw.get("metric") or metric
            rows, cols = [], {}
            for key, rids in (sw.get("levels") or {}).items():
                value = json.loads(key)
                g = by_id.loc[by_id.index.intersection([str(r) for r in rids])]
                ok = g[(g["status"] == "completed") & np.isfinite(g[m].astype(float))] if m in g.columns else g[:0]
                per_seed = ok.groupby("seed").tail(1).set_index("seed")[m].astype(float) if len(ok) else \
                    pd.Series(dtype=float)
                mean, lo, hi, n = mean_ci(per_seed.to_numpy())
                if in_unit(m):
                    lo, hi = clip(lo, hi, (0.0, 1.0))
                rows.append({"experiment": exp, "variant": subject_of(here) if len(here) else "", "param": param,
                             "level": _level_text(value), "value": value, "metric": m, "n": n, "mean": mean,
                             "ci_lo": lo, "ci_hi": hi, "best": _same_value(value, sw.get("best_value"))})
                cols[_level_text(value)] = per_seed
            levels = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
            if levels["n"].sum() == 0:
                notes.append(f"{exp}: sweep of {param}: no completed run yet")
                continue
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels["value"])
            order = sorted(range(len(levels)), key=lambda i: float(levels["value"][i])) if numeric else \
                [list(levels["level"]).index(lv) for lv in level_order(levels["level"])]
            levels = levels.iloc[order].reset_index(drop=True)
            p, test = level_effect(pd.DataFrame(cols).T.reindex(levels["level"]))
            variant = str(levels["variant"].iloc[0])
            log = numeric and param_info(variant, param, levels["value"].astype(float), spec).log \
                and float(levels["value"].astype(float).min()) > 0
            out.append(Sweep(exp, variant, param, m, levels, sw.get("best_value"), numeric, bool(log), p, test))
    return out, notes


__all__ += ["Sweep", "sweeps", "level_effect", "SWEEP_COLUMNS"]
