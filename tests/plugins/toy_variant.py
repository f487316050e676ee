"""A fifth variant from one file: the ResNet with its residual branches' last BN
scale initialised to `gamma0` (0: every block starts as the identity).

Loaded by a spec's `plugins: [tests/plugins/toy_variant.py]`; nothing else in
resstudy names it: options, search space, twin, hooks, metrics, claims and its
own report section all come from this registration.
"""

from __future__ import annotations

import torch

from search_spaces.shared import Param
from study.models.resnet import backbone_options, resnet
from study.options import Option
from study.variants import Claim, Hooks, Variant, register_variant


def toy(depth: int = 20, num_classes: int = 10, in_channels: int = 3, *, gamma0: float = 0.5, **backbone):
    model = resnet(depth, num_classes, in_channels, **backbone)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "bn2"):
                m.bn2.weight.fill_(gamma0)
    return model


class ToyHooks(Hooks):
    def after_eval(self, epoch: int, metrics: dict, info: dict) -> None:
        gammas = [m.bn2.weight.detach().abs().mean() for m in self.model.modules() if hasattr(m, "bn2")]
        metrics["gamma_mean"] = float(torch.stack(gammas).mean())


def toy_section(report) -> None:
    """The toy's own report section (`resstudy analyze` calls it for a study that ran the
    toy; `report` is an analysis.report.Sections): its blocks' scale at the end."""
    rows = report.results[report.results["variant"] == "toy"]
    sec = report.section(SECTION)
    mean = rows["gamma_mean"].mean() if "gamma_mean" in rows.columns else float("nan")
    sec.append(f"<p>mean |gamma| of the residual branches' last BN after {len(rows)} toy trials: {mean:.3g}</p>")


SECTION = "Toy: the residual branches' scale"

register_variant(Variant(
    name="toy",
    build=toy,
    options=(*backbone_options(), Option("gamma0", float, 0.5, "initial scale of each block's last BN",
                                         low=0.0, high=1.0, target="model")),
    description="a test plugin: residual branches start scaled by gamma0",
    hooks=ToyHooks,
    twin=lambda values: {**{k: v for k, v in values.items() if k != "gamma0"}, "variant": "resnet"},
    metrics=("gamma_mean",),
    search=(Param("gamma0", 0.0, 1.0),),
    claims=(Claim("toy_vs_twin", "the toy beats its twin", "twin"),),
    report_sections=(toy_section,),
))
