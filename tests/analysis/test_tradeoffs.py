import json

import numpy as np
import pandas as pd
import pytest

from analysis import plots
from analysis.tradeoffs import Declared, pareto_front, tradeoffs
from study.models import epsilon


def test_pareto_front_hand_made():
    # (reduction, acc)
    pts = np.array([[0.10, 0.90], [0.20, 0.85], [0.15, 0.80], [0.30, 0.70], [0.30, 0.60], [0.05, 0.90],
                    [0.20, 0.85], [np.nan, 1.0], [0.0, 0.95]])
    got = pareto_front(pts[:, 0], pts[:, 1])
    #            kept   kept  dom    kept   dom    dom(0.1,.9) tie-kept nan  kept
    expected = [True, True, False, True, False, False, True, False, True]
    assert got.tolist() == expected


def test_pareto_front_definition_on_random_points():
    rng = np.random.default_rng(0)
    x, y = rng.random(60), rng.random(60)
    f = pareto_front(x, y)
    for i in range(60):
        dominated = np.any((x >= x[i]) & (y >= y[i]) & ((x > x[i]) | (y > y[i])))
        assert f[i] == (not dominated)
    # the front is a decreasing staircase: more reduction costs accuracy
    order = np.argsort(x[f])
    assert np.all(np.diff(y[f][order]) < 0)


def test_epsilon_declares_its_tradeoff_from_its_own_facts():
    d = epsilon.tradeoff()
    v = epsilon.VARIANT
    assert d.variant == v.name and d.knob in v.option_map and {*d.gains} <= {*v.metrics}
    assert d.size in d.gains and d.objectives == v.objectives


def test_epsilon_tradeoffs(planted_epsilon):
    (t,) = tradeoffs(planted_epsilon, epsilon.tradeoff(), n_boot=50)
    # the front is chosen on validation numbers; test_acc only for the final pick
    assert t.acc_col == "val_acc" and len(t.points) == 40
    assert list(t.points.columns) == ["trial_id", "epsilon", "discarded_ratio", "param_reduction", "acc", "pareto",
                                      "pick", "test_acc"]
    assert np.allclose(t.points["acc"], planted_epsilon["val_acc"])
    pick = t.points[t.points["pick"]]
    assert len(pick) == 1 and bool(pick["pareto"].iloc[0])
    assert pick["acc"].iloc[0] == t.front()["acc"].max()
    assert pick["test_acc"].iloc[0] == pytest.approx(pick["acc"].iloc[0] - 0.005)
    assert t.points.loc[~t.points["pick"], "test_acc"].isna().all()
    assert list(t.curves) == ["discarded_ratio", "param_reduction"] and None not in t.curves.values()
    # planted: reduction grows with epsilon
    reduction = t.curves["param_reduction"]
    assert reduction is not None and reduction.mean[-1] > reduction.mean[0] + 0.3
    front = t.front()
    assert 1 <= len(front) < 40
    assert np.array_equal(pareto_front(t.points["param_reduction"], t.points["acc"]), t.points["pareto"].to_numpy())
    assert t.informative()


def test_any_variant_declares_its_own_tradeoff():
    """Nothing of epsilon's is built in: a plugin's knob, gain and words go through."""
    rng = np.random.default_rng(1)
    rows = []
    for i in range(12):
        k = float(rng.uniform(0.0, 1.0))
        rows.append({"experiment": "lean", "variant": "lean", "phase": "search", "trial_id": f"l{i}", "seed": 0,
                     "status": "completed", "searched": json.dumps(["sparsity_target"]), "sparsity_target": k,
                     "sparsity": k * 0.9, "val_acc": 0.9 - 0.2 * k, "test_acc": 0.88 - 0.2 * k})
    df = pd.DataFrame(rows)
    d = Declared(variant="lean", knob="sparsity_target", gains=("sparsity",), size="sparsity", title="lean costs",
                 what="Sparsity", figure="lean trade-offs", name="lean", nothing="pruned a weight")
    (t,) = tradeoffs(df, d, n_boot=20)
    assert list(t.points.columns[:3]) == ["trial_id", "sparsity_target", "sparsity"]
    assert t.points["pareto"].all()  # accuracy falls as sparsity rises: every trial is on the front
    png, fig = plots.tradeoff_png(t), plots.tradeoff_plotly(t)
    assert len(png.axes) == 2 and png._suptitle.get_text() == "lean: lean trade-offs"
    assert fig.layout.title.text == "lean: lean trade-offs"
    assert tradeoffs(df, Declared(**{**d.__dict__, "variant": "other"})) == []
    with pytest.raises(ValueError, match="size"):
        Declared(**{**d.__dict__, "size": "val_acc"})
