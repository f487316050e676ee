"""The shared CIFAR ResNet backbone (He et al. 2016) and the model registry.

Every variant is this network: a 3x3 stem, three stages of ``n`` blocks with
``width``, 2x and 4x channels (stride 1, 2, 2), global average pool, linear
head; depth = 6n + 2. Variants only swap the block (and the stem activation),
so they all share ``CifarResNet`` and the shortcut builders below.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = ("post", "pre")
SHORTCUTS = ("A", "B", "conv3x3")

# ---------------------------------------------------------------- registry

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownOptionError(TypeError, ValueError):
    """An option the variant does not take. Both a TypeError (Python's own
    error for an unexpected keyword) and a ValueError (bad configuration)."""


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: make ``fn(depth, num_classes, in_channels, *, options...)``
    buildable as ``create_model(name, ...)``. Its keyword-only parameters are
    the variant's options."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS and _MODELS[name] is not fn:
            raise ValueError(f"model variant {name!r} is already registered")
        _MODELS[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_MODELS)


def model_options(variant: str) -> tuple[str, ...]:
    """The option names ``create_model(variant, ...)`` accepts."""
    fn = _builder(variant)
    return tuple(
        p.name for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY
    )


def _builder(variant: str) -> Callable[..., nn.Module]:
    if not isinstance(variant, str) or variant not in _MODELS:
        raise ValueError(f"unknown model variant {variant!r}; registered variants: {list_models()}")
    return _MODELS[variant]


def create_model(
    variant: str, depth: int = 20, num_classes: int = 10, in_channels: int = 3, **options: Any
) -> nn.Module:
    """Build a registered variant. An option given as None means the variant's
    default (so a config's unset ``block``/``shortcut`` can be passed through)."""
    fn = _builder(variant)
    allowed = model_options(variant)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownOptionError(
            f"unknown option(s) {unknown} for model variant {variant!r}; allowed options: {list(allowed)}"
        )
    options = {k: v for k, v in options.items() if v is not None}
    model = fn(depth, num_classes, in_channels, **options)
    model.variant = variant
    return model


# ---------------------------------------------------------------- validation


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; allowed values: {list(allowed)}")
    return value


def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed; it must be an integer >= {minimum}")
    return int(value)


def check_float(name: str, value: Any, minimum: float, *, strict: bool = False) -> float:
    """A finite number >= minimum (> minimum if strict)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name}={value!r} is not allowed; it must be a finite number {rel} {minimum}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    # numpy bools arrive from some search-space samplers; strings like "false" must not pass as True
    if type(value).__name__ not in ("bool", "bool_"):
        raise ValueError(f"{name}={value!r} is not allowed; it must be True or False")
    return bool(value)


def blocks_per_stage(depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"depth={depth!r} is not allowed; CIFAR ResNets need depth = 6n+2 with n >= 1 "
            "(8, 14, 20, 32, 44, 56, 110, ...)"
        )
    return (int(depth) - 2) // 6


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


def make_shortcut(kind: str, in_planes: int, planes: int, stride: int) -> nn.Module:
    """Identity where shapes match, else the chosen downsampling shortcut."""
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_planes, planes, stride)
    if kind == "B":
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    if kind == "conv3x3":
        return nn.Sequential(conv3x3(in_planes, planes, stride), nn.BatchNorm2d(planes))
    raise ValueError(f"shortcut={kind!r} is not allowed; allowed values: {list(SHORTCUTS)}")


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
    Identity for ResNets: the first block's BN-ReLU follows), and the final
    BN-ReLU sits before pooling because pre-activation blocks end un-normalised.
    """

    def __init__(
        self,
        make_block: MakeBlock,
        depth: int,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        preact: bool = False,
        stem_act: nn.Module | None = None,
    ):
        super().__init__()
        n = blocks_per_stage(depth)
        num_classes = check_int("num_classes", num_classes)
        in_channels = check_int("in_channels", in_channels)
        width = check_int("width", width)
        self.depth, self.blocks_per_stage, self.preact = int(depth), n, preact
        self.conv1 = conv3x3(in_channels, width)
        self.bn1 = nn.Identity() if preact else nn.BatchNorm2d(width)
        if stem_act is None:
            stem_act = nn.Identity() if preact else nn.ReLU(inplace=True)
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


@register_model("sgs")  # SGS only scales gradients (the trainer's job): same network
@register_model("resnet")
def resnet(
    depth: int = 20,
    num_classes: int = 10,
    in_channels: int = 3,
    *,
    block: str | None = "post",
    shortcut: str | None = "A",
    width: int = 16,
) -> CifarResNet:
    """The CIFAR ResNet baseline: ResNet-20/56/110 (option A) have 0.27M/0.85M/1.7M parameters."""
    block, shortcut = resolve_block_shortcut(block, shortcut, ("post", "A"))
    cls = BasicBlock if block == "post" else PreActBlock

    def make_block(i: int, o: int, s: int) -> nn.Module:
        return cls(i, o, s, shortcut)

    model = CifarResNet(make_block, depth, num_classes, in_channels, width, preact=block == "pre")
    kaiming_init(model)
    model.options = {"block": block, "shortcut": shortcut, "width": width}
    return model
