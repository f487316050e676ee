"""The shared CIFAR ResNet backbone (He et al. 2016) and the model registry.

Every variant is this network: a 3x3 stem, three stages of ``n`` blocks with
``width``, 2x and 4x channels (stride 1, 2, 2), global average pool, linear
head; depth = 6n + 2. Variants only swap the block (and the stem activation),
so they all share ``CifarResNet`` and the shortcut builders below.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from study.config import DEPTH_RULE, depth_blocks
from study.errors import OptionError
from study.options import Option
from study.variants import Variant, get_variant, list_variants

BLOCKS = ("post", "pre")
SHORTCUTS = ("A", "avgpool", "B", "conv3x3")
INITS = ("kaiming", "default")


def backbone_options(block: str = "post", shortcut: str = "A", init: str = "kaiming",
                     shortcuts: tuple[str, ...] = SHORTCUTS) -> tuple[Option, ...]:
    """The backbone's options, with a variant's own defaults (and allowed shortcuts)."""
    return (
        Option("block", str, block, "block order: post (conv-BN-ReLU-conv-BN, add, ReLU) or pre "
               "(BN-ReLU-conv-BN-ReLU-conv, add)", choices=BLOCKS, target="model"),
        Option("shortcut", str, shortcut, "downsampling shortcut: A (subsample + zero-pad), avgpool (2x2 average "
               "pool + zero-pad), B (1x1 conv + BN), conv3x3 (3x3 conv + BN)", choices=shortcuts, target="model"),
        Option("width", int, 16, "channels of the first stage (x2, x4 after)", low=1, high=1024, target="model"),
        Option("init", str, init, "conv init: kaiming (He-normal, fan-out) or default (PyTorch's)",
               choices=INITS, target="model"),
    )

# ---------------------------------------------------------------- registry


class UnknownOptionError(OptionError, TypeError):
    """An option the variant does not take: an OptionError (bad configuration)
    and a TypeError (Python's own error for an unexpected keyword)."""


def list_models() -> list[str]:
    return sorted(list_variants())


def model_options(variant: str) -> tuple[str, ...]:
    """The option names ``create_model(variant, ...)`` accepts."""
    return get_variant(variant).model_option_names()


def create_model(
    variant: str, depth: int = 20, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> nn.Module:
    """Build a registered variant. An option given as None means the variant's
    default (so a config's unset ``block``/``shortcut`` can be passed through)."""
    v = get_variant(variant)
    allowed = v.option_map
    names = v.model_option_names()
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise UnknownOptionError(
            f"unknown option(s) {unknown} for model variant {variant!r}; allowed options: {list(names)}",
            field=unknown[0],
        )
    options = {k: allowed[k].check(x) for k, x in options.items() if x is not None}
    model = v.build(depth, num_classes, in_channels, **options)
    model.variant = variant
    return model


# ---------------------------------------------------------------- validation


def _bad(name: str, value: Any, allowed: str) -> OptionError:
    return OptionError(f"{name}: {value!r} is not allowed; allowed: {allowed}", field=name)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(name, value, "one of " + ", ".join(allowed))
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise _bad(name, value, f"an integer >= {minimum}")
    return int(value)


def check_float(name: str, value: Any, minimum: float, *, strict: bool = False) -> float:
    """A finite number >= minimum (> minimum if strict)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        raise _bad(name, value, f"a finite number {'>' if strict else '>='} {minimum:g}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    # numpy bools arrive from some search-space samplers; strings like "false" must not pass as True
    if type(value).__name__ not in ("bool", "bool_"):
        raise _bad(name, value, "true or false")
    return bool(value)


def blocks_per_stage(depth: Any) -> int:
    n = depth_blocks(depth)
    if n is None:
        raise _bad("depth", depth, DEPTH_RULE)
    return n


# ---------------------------------------------------------------- layers


def conv3x3(in_planes: int, planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)


class ShortcutA(nn.Module):
    """Option A: stride-2 subsample, zero-pad the new channels; no parameters.
    ``x[..., ::2, ::2]`` gives ceil(H/2), the same size as the stride-2 convs."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.pad, self.stride = planes - in_planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x


class ShortcutAvgPool(ShortcutA):
    """epsilon-ResNet's official shortcut: a stride x stride average pool, then
    zero-padded channels; no parameters. (ceil_mode keeps odd sizes equal to the
    stride-2 convs' ceil(H/2).)"""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return F.pad(x, (0, 0, 0, 0, 0, self.pad)) if self.pad else x


def make_shortcut(kind: str, in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity where shapes match, else the chosen downsampling shortcut."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_planes, planes, stride)
    if kind == "avgpool":
        return ShortcutAvgPool(in_planes, planes, stride)
    if kind == "B":
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    if kind == "conv3x3":
        return nn.Sequential(conv3x3(in_planes, planes, stride), nn.BatchNorm2d(planes))
    raise _bad("shortcut", kind, "one of " + ", ".join(SHORTCUTS))


class BasicBlock(nn.Module):
    """Post-activation: conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation (He et al., Identity Mappings): BN-ReLU-conv-BN-ReLU-conv, add.
    The shortcut reads the raw input, so the identity path stays clean."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A"):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + self.shortcut(x)


# ---------------------------------------------------------------- backbone

MakeBlock = Callable[[int, int, int], nn.Module]  # (in_planes, planes, stride) -> block


class CifarResNet(nn.Module):
    """Stem, three stages (``layer1..3``), [BN-ReLU if pre-activation], pool, linear.

    Post-activation stem: conv-BN-act. Pre-activation stem: conv-act (act is
    Identity for ResNets: the first block's BN-ReLU follows; `stem_bn` gives it
    conv-BN-ReLU, epsilon-ResNet's official stem), and the final BN-ReLU sits
    before pooling because pre-activation blocks end un-normalised.
    """

    # set by name in __init__ (setattr); declared for the type checker
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    options: dict[str, object]  # the resolved build options, set by the variant's builder

    def __init__(
        self,
        make_block: MakeBlock,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        preact: bool = False,
        stem_act: nn.Module | None = None,
        stem_bn: bool | None = None,
    ):
        super().__init__()
        n = blocks_per_stage(depth)
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        width = check_int("width", width)
        self.depth, self.blocks_per_stage, self.preact = int(depth), n, preact
        self.conv1 = conv3x3(in_channels, width)
        stem_bn = not preact if stem_bn is None else stem_bn
        self.bn1 = nn.BatchNorm2d(width) if stem_bn else nn.Identity()
        if stem_act is None:
            stem_act = nn.ReLU(inplace=True) if stem_bn else nn.Identity()
        self.act1 = stem_act
        planes = [width, 2 * width, 4 * width]
        in_planes = width
        for i, p in enumerate(planes):
            blocks = []
            for j in range(n):
                blocks.append(make_block(in_planes, p, 2 if (i > 0 and j == 0) else 1))
                in_planes = p
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn_final = nn.BatchNorm2d(in_planes) if preact else nn.Identity()
        self.relu_final = nn.ReLU(inplace=True) if preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.relu_final(self.bn_final(x)))
        return self.fc(torch.flatten(x, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.head(x)


def kaiming_init(model: nn.Module) -> None:
    """torchvision resnet's init: He-normal (fan_out) convs, BN gamma=1 beta=0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def resolve_block_shortcut(block: str | None, shortcut: str | None, defaults: tuple[str, str]) -> tuple[str, str]:
    block = check_choice("block", defaults[0] if block is None else block, BLOCKS)
    shortcut = check_choice("shortcut", defaults[1] if shortcut is None else shortcut, SHORTCUTS)
    return block, shortcut


def resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    block: str = "post",
    shortcut: str = "A",
    width: int = 16,
    init: str = "kaiming",
) -> CifarResNet:
    """The CIFAR ResNet baseline: ResNet-20/56/110 (option A) have 0.27M/0.85M/1.7M parameters."""
    block, shortcut = resolve_block_shortcut(block, shortcut, ("post", "A"))
    init = check_choice("init", init, INITS)
    cls = BasicBlock if block == "post" else PreActBlock

    def make_block(i: int, o: int, s: int) -> nn.Module:
        return cls(i, o, s, shortcut)

    model = CifarResNet(make_block, depth, num_classes, in_channels, width, preact=block == "pre")
    if init == "kaiming":
        kaiming_init(model)
    model.options = {"block": block, "shortcut": shortcut, "width": width, "init": init}
    return model


VARIANT = Variant(
    name="resnet",
    build=resnet,
    options=backbone_options(),
    description="the CIFAR ResNet baseline (He et al. 2016)",
    baseline=True,
)
