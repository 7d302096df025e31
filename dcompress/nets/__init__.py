"""Networks by name: `build_net`, `list_nets`, `embed`, `feature_dim`, `has_batchnorm`.

Names (case-insensitive):

    convnet            ConvNet-3: width 128, relu, instance norm, average pooling (methods.md §1.1)
    convnetbn          ConvNet-3 with BatchNorm (also `convnet_bn`)
    convnet_d{N}       depth N (the reference's ConvNetD1..D5; any N >= 1)
    convnet_w{N}       width N (the reference's ConvNetW32..W256; any N >= 1)
    convnet_nn / _ln / _gn / _in    no norm / LayerNorm / GroupNorm(4) / instance norm
    convnet_mp / _ap / _np          max / average / no pooling
    lenet, mlp, resnet18
    resnet18_smallstem / resnet18_imagenetstem    ResNet-18 with the stem fixed (module doc)

Resolution: a ConvNet whose depth is not given (no `d<N>` in the name, no `depth` override)
gets the depth the reference codes use for its input size (`auto_depth`: 3 up to 32 px, 4 at
64 px (MTT's ConvNetD4 for Tiny-ImageNet), 5 at 128 px (ConvNetD5 for the ImageNet subsets));
`resnet18` without a stem gets `auto_stem` (CIFAR-style 3x3 stride-1 stem up to 64 px,
torchvision's 7x7 stride-2 stem + max pool above). An explicit depth or stem always wins.
`arch_name` gives the fully resolved name of what `build_net` builds (also the built module's
`arch` attribute): it builds the same network at any size, and is what manifests record.

ConvNet suffixes combine (`convnet_d4_w64`). Keyword `overrides` win over the name's defaults
(`width`, `depth`, `norm`, `act`, `pooling` for ConvNets; `norm` for resnet18; `hidden` for mlp);
an override set to None is dropped, so an unset option never replaces a default.

Initialisation: with `generator`, one 62-bit seed is drawn from it and the network is built under
`torch.random.fork_rng` with the CPU default generator seeded from that draw; the parameters are
then a pure function of the generator's state and the global RNG is left as it was. Without a
generator, default torch init from the global RNG. (The reference reseeds the global RNG from
the wall clock in `get_network`, methods.md §11 item 12; we never do.) Networks are built on
the CPU; move them with `.to(device)`.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .convnet import ConvNet, LeNet, MLP

__all__ = ["build_net", "arch_name", "auto_depth", "auto_stem", "check_name", "list_nets", "embed", "feature_dim",
           "has_batchnorm", "NetConfigError"]


class NetConfigError(UsageError, ValueError):
    """Unknown network name or override (a usage error, also a ValueError)."""


# ConvNet name suffix -> (keyword, value)
_CONVNET_TOKENS = {
    "nn": ("norm", "none"), "bn": ("norm", "batchnorm"), "ln": ("norm", "layernorm"),
    "in": ("norm", "instancenorm"), "gn": ("norm", "groupnorm"),
    "mp": ("pooling", "maxpooling"), "ap": ("pooling", "avgpooling"), "np": ("pooling", "none"),
}
_CONVNET_KEYS = ("width", "depth", "norm", "act", "pooling")
_CONVNET_NAME = re.compile(r"^convnet(bn)?((?:_[a-z]+\d*)*)$")


def _resnet18(channels: int, num_classes: int, im_size: tuple[int, int], **kw: Any) -> nn.Module:
    from .resnet import SmallResNet18  # torchvision.models is imported only when needed

    return SmallResNet18(channels, num_classes, **kw)


def auto_depth(im_size: tuple[int, int]) -> int:
    """ConvNet depth for an (H, W) input, as the reference codes choose it: 3 up to 32 px (28x28
    included), 4 at 64, 5 at 128; in general floor(log2(min(H, W) / 4)) above 32 px, so the last
    feature map is 4..7 px on its shorter side. Under 8 px: as many 2x2 poolings as fit (>= 1)."""
    s = min(int(im_size[0]), int(im_size[1]))
    if s > 32:
        return max(3, (s // 4).bit_length() - 1)
    if s >= 8 or (im_size[0], im_size[1]) == (28, 28):
        return 3
    return max(1, s.bit_length() - 1)


def auto_stem(im_size: tuple[int, int]) -> str:
    """ResNet-18 stem for an (H, W) input: `small` (3x3 stride 1, no max pool: CIFAR/Tiny-style)
    up to 64 px on the shorter side, `imagenet` (torchvision's 7x7 stride 2 + max pool) above, so
    layer4 sees 4x4 or more at 128 px instead of 16x16."""
    return "small" if min(int(im_size[0]), int(im_size[1])) <= 64 else "imagenet"


# name -> (builder(channels, num_classes, im_size, **kw), allowed override keys)
_FIXED: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "lenet": (LeNet, ()),
    "mlp": (MLP, ("hidden",)),
    "resnet18": (_resnet18, ("norm", "stem")),
    "resnet18_smallstem": (functools.partial(_resnet18, stem="small"), ("norm",)),
    "resnet18_imagenetstem": (functools.partial(_resnet18, stem="imagenet"), ("norm",)),
}


def list_nets() -> list[str]:
    """Canonical network names (ConvNet depth/width patterns accept any N, see module doc)."""
    convnets = (["convnet", "convnetbn"] + [f"convnet_d{d}" for d in range(1, 6)]
                + [f"convnet_w{w}" for w in (32, 64, 128, 256)]
                + [f"convnet_{t}" for t in ("nn", "ln", "gn", "mp", "np")])
    return convnets + sorted(_FIXED)


def _parse_convnet(name: str) -> dict[str, Any] | None:
    """ConvNet keyword arguments encoded in `name`, or None when it is not a ConvNet name."""
    m = _CONVNET_NAME.match(name)
    if m is None:
        return None
    kw: dict[str, Any] = {"norm": "batchnorm"} if m.group(1) else {}
    for token in filter(None, m.group(2).split("_")):
        num = re.fullmatch(r"([dw])(\d+)", token)
        if num:
            kw["depth" if num.group(1) == "d" else "width"] = int(num.group(2))
        elif token in _CONVNET_TOKENS:
            key, value = _CONVNET_TOKENS[token]
            kw[key] = value
        else:
            raise NetConfigError(f"unknown ConvNet suffix {token!r} in {name!r}; suffixes: d<N>, w<N>, "
                                 f"{', '.join(_CONVNET_TOKENS)}")
    return kw


def _resolve(name: str, overrides: dict[str, Any],
             im_size: tuple[int, int] | None = None) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
    """(builder, keyword arguments) of `name`; with `im_size`, the size-dependent defaults
    (ConvNet depth, ResNet stem) are filled in when neither the name nor `overrides` set them."""
    key = name.strip().lower()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    conv = _parse_convnet(key)
    if conv is not None:
        builder, allowed, kw = ConvNet, _CONVNET_KEYS, conv
    elif key in _FIXED:
        (builder, allowed), kw = _FIXED[key], {}
    else:
        raise NetConfigError(f"unknown network {name!r}; known: {', '.join(list_nets())} "
                             f"(convnet_d<N>/convnet_w<N> take any N)")
    bad = sorted(set(overrides) - set(allowed))
    if bad:
        raise NetConfigError(f"{name!r} does not take {', '.join(bad)}; allowed overrides: "
                             f"{', '.join(allowed) or 'none'}")
    kw = {**kw, **overrides}
    if im_size is not None and builder is ConvNet and "depth" not in kw:
        kw["depth"] = auto_depth(im_size)
    if im_size is not None and key == "resnet18" and "stem" not in kw:
        kw["stem"] = auto_stem(im_size)
    return builder, kw


def _size(im_size) -> tuple[int, int]:
    return (int(im_size), int(im_size)) if isinstance(im_size, int) else (int(im_size[0]), int(im_size[1]))


def arch_name(name: str, im_size: tuple[int, int] | int, **overrides: Any) -> str:
    """The resolved name of the network `build_net(name, .., im_size, **overrides)` builds: a
    ConvNet's depth and a ResNet-18's stem made explicit (`convnet` at 64x64 -> `convnet_d4`,
    `resnet18` at 128x128 -> `resnet18_imagenetstem`); other names as given (lower case).
    Overrides other than depth and stem are not part of the name."""
    key = name.strip().lower()
    builder, kw = _resolve(name, overrides, _size(im_size))
    if builder is ConvNet:
        given = _parse_convnet(key) or {}
        if "depth" in given and given["depth"] == kw["depth"]:
            return key
        tokens = [t for t in key.split("_")[1:] if not re.fullmatch(r"d\d+", t)]
        return "_".join([key.split("_")[0], *tokens, f"d{kw['depth']}"])
    if key == "resnet18":
        return f"resnet18_{kw['stem']}stem"
    return key


def check_name(name: str) -> None:
    """NetConfigError (a UsageError) when `name` is no network `build_net` knows."""
    _resolve(name, {})


def build_net(name: str, channels: int, num_classes: int, im_size: tuple[int, int], *,
              generator: torch.Generator | None = None, **overrides: Any) -> nn.Module:
    """Builds a network by name (on the CPU).

    Args:
        name: a name from `list_nets()` or a ConvNet pattern (module doc).
        channels: input channels C.
        num_classes: number of logits.
        im_size: input (H, W); decides the ConvNet depth and ResNet stem when the name and the
            overrides leave them open (module doc).
        generator: when given, the parameters are a pure function of its state (one draw is
            consumed); the global RNG is untouched. None: default torch init.
        **overrides: architecture keywords (module doc); None values are ignored.

    Returns:
        A module mapping [B, C, H, W] -> [B, num_classes], with `embed(x)` -> [B, D],
        `classifier`, `feature_dim` (D) and `arch` (`arch_name`).

    Raises:
        NetConfigError: unknown name, override, or an invalid value (also a ValueError).
    """
    size = _size(im_size)
    builder, kw = _resolve(name, overrides, size)
    arch = arch_name(name, size, **overrides)

    def make() -> nn.Module:
        try:
            net = builder(int(channels), int(num_classes), size, **kw)
        except ValueError as e:
            raise NetConfigError(f"{name!r} at {size[0]}x{size[1]}: {e}") from None
        net.arch = arch
        return net

    if generator is None:
        return make()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    # devices=[]: only the CPU generator is forked and only it is seeded (torch.manual_seed would
    # also reseed every CUDA generator, outside the fork).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return make()


def embed(net: nn.Module, x: Tensor) -> Tensor:
    """Penultimate features of `net` (DM's embedding, teacher features). [B, C, H, W] -> [B, D]."""
    fn = getattr(net, "embed", None)
    if fn is None:
        raise TypeError(f"{type(net).__name__} has no embed(); build networks with dcompress.nets.build_net")
    return fn(x)


def feature_dim(net: nn.Module) -> int:
    """D, the width of `embed(net, x)`."""
    dim = getattr(net, "feature_dim", None)
    if dim is None:
        dim = net.classifier.in_features
    return int(dim)


def has_batchnorm(net: nn.Module) -> bool:
    """Whether `net` has a BatchNorm layer (batch statistics: a batch split over ranks changes them)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
