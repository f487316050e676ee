"""SGS as a training feature any variant can switch on (sgs_mode != "off": its options and
hooks), and the `sgs` variant: the ResNet with it on."""

from __future__ import annotations

from study.options import Option
from study.variants import Claim, Exercise, Feature, Hooks, Published, Reported, Sweep, Variant

from .mi import mi_scalings, scaling_schedule_due
from .scaling import BRANCH_SETS, SpatialGradScaling, branch_scalings

MODES = ("off", "branches", "mi")  # "off" first: every mode after it switches scaling on

OPTIONS: tuple[Option, ...] = (
    Option("sgs_mode", str, "off", "spatial gradient scaling: off, branches (S of a branch set), mi (learned)",
           choices=MODES),
    Option("sgs_branches", str, "3x3+3x1+1x1", "branch set whose equivalent S is used (mode branches)",
           choices=tuple(BRANCH_SETS)),
    Option("sgs_k", float, 5.0, "MI sharpening k (1: unchanged; large: plain SGD; small: centre only)",
           low=0.0, low_open=True, high=1e6),
    Option("sgs_warmup", int, 0, "epoch of the first MI computation", low=0),
    Option("sgs_interval", int, 30, "MI recomputed at each epoch after sgs_warmup that is a multiple of this",
           low=1),
    Option("sgs_batches", int, 20, "training batches the MI pass reads", low=1, high=10_000),
    Option("sgs_diagonal_removal", bool, False, "MI: drop zero pairs and the joint histogram's diagonal"),
)


class SGSHooks(Hooks):
    def __init__(self, model, cfg, ctx) -> None:
        super().__init__(model, cfg, ctx)
        # Branch-equivalent S is fixed for the run; MI starts as all ones (plain
        # SGD) until the first recompute at epoch `sgs_warmup`.
        fixed = branch_scalings(model, cfg.sgs_branches) if cfg.sgs_mode == "branches" else None
        self.scaling = SpatialGradScaling(model, fixed)

    def before_epoch(self, epoch: int) -> None:
        cfg = self.cfg
        if cfg.sgs_mode == "mi" and scaling_schedule_due(epoch, cfg.sgs_warmup, cfg.sgs_interval):
            batches = self.ctx.probe_batches(epoch, cfg.sgs_batches)
            self.scaling.replace(mi_scalings(self.model, batches, k=cfg.sgs_k,
                                             diagonal_removal=cfg.sgs_diagonal_removal))

    def after_backward(self) -> None:
        self.scaling.apply()

    def after_eval(self, epoch: int, metrics: dict, info: dict) -> None:
        info["sgs_scalings"] = {name: s.tolist() for name, s in self.scaling.scalings.items()}
        centers = [m[len(m) // 2][len(m[0]) // 2] for m in info["sgs_scalings"].values() if m]
        metrics["sgs_center"] = float(sum(centers) / len(centers)) if centers else 1.0
        # how far the scalings are from all ones, the twin's (0: this run trained as its twin)
        metrics["sgs_deviation"] = max((float((s - 1).abs().max()) for s in self.scaling.scalings.values()),
                                       default=0.0)

    def state_dict(self) -> dict:
        return self.scaling.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scaling.load_state_dict(state)


def _artifacts(info: dict, result: dict, out):
    from study.artifacts import scaling_maps

    return [] if "sgs_scalings" not in info else scaling_maps(info["sgs_scalings"], out)


FEATURE = Feature(
    name="sgs", options=OPTIONS, hooks=SGSHooks, active=lambda values: values.get("sgs_mode", "off") != "off",
    metrics=("sgs_center", "sgs_deviation"), artifacts=_artifacts,
)


def _twin(values: dict) -> dict:
    # The same ResNet, recipe and seed with scaling off.
    from study.models.resnet import VARIANT as RESNET

    return {**values, "variant": RESNET.name, "sgs_mode": "off"}


# Detkov et al. 2023, CIFAR-100 (test accuracy, SGS / baseline): ResNet-18 is the paper's
# network nearest the CIFAR ResNets; its VGGs gain more (VGG-16 74.9 -> 76.2).
REPORTED_VS_TWIN = (Reported(0.010, "cifar100", 18, "Detkov et al. 2023, CIFAR-100 results (official README)",
                             "78.8 vs 77.8"),)
# A run whose scalings never left all ones trained as its twin (MI not yet computed, or k so
# large that it gives ones): the design moves the first MI pass earlier.
SCALED = Exercise("sgs_deviation", "a scaling away from all ones", knob="sgs_warmup", toward="low")


# The official CIFAR-100 config where it differs from the CIFAR-10 one, which the defaults are.
OFFICIAL_CIFAR100 = {"sgs_interval": 5, "sgs_batches": 2, "weight_decay": 5e-4}


def _official(base: dict) -> dict:
    # no official SVHN or digits config: the CIFAR-10 one (the defaults) stands in
    return dict(OFFICIAL_CIFAR100) if base.get("dataset") == "cifar100" else {}


def variant() -> Variant:
    """The `sgs` variant: the ResNet with scaling on. Made when study.models registers
    the built-ins (it needs the ResNet, which needs nothing of this module)."""
    from study.models.resnet import backbone_options, resnet

    return Variant(
        name="sgs",
        build=resnet,
        # the variant never trains with scaling off: that is its twin; mi is the paper's method
        options=(*backbone_options(), OPTIONS[0].replace(default="mi", choices=MODES[1:])),
        description="spatial gradient scaling (Detkov et al. 2023) on the CIFAR ResNet",
        twin=_twin,
        claims=(
            Claim("sgs_vs_twin", "SGS beats its twin (the same ResNet, scaling off)", "twin", published=True,
                  reported=REPORTED_VS_TWIN, exercised=SCALED),
            Claim("sgs_mi", "MI-learned scaling beats branch-equivalent", "level", metric="val_acc",
                  option="sgs_mode", better="mi", worse="branches", exercised=SCALED),
        ),
        sweeps=(Sweep("sgs_k"), Sweep("sgs_mode")),
        # the defaults are the official CIFAR-10 config (lr 0.1 the trainer's); CIFAR-100 its own
        published=Published(
            options=("sgs_mode", "sgs_k", "sgs_interval", "sgs_batches", "sgs_warmup", "sgs_diagonal_removal", "lr",
                     "weight_decay", "weight_decay_scope"),
            values=_official,
            source="Detkov et al. 2023, the official CIFAR configs: MI-learned scaling with k 5, recomputed every 30 "
                   "epochs on 20 batches (CIFAR-100: every 5 on 2), lr 0.1, weight decay 1e-4 (CIFAR-100: 5e-4) "
                   "on every parameter"),
    )
