"""Networks by name: `build_net`, `list_nets`, `embed`, `feature_dim`.

Names (case-insensitive):

    convnet            ConvNet-3: width 128, relu, instance norm, average pooling (methods.md §1.1)
    convnetbn          ConvNet-3 with BatchNorm (also `convnet_bn`)
    convnet_d{N}       depth N (the reference's ConvNetD1..D5; any N >= 1)
    convnet_w{N}       width N (the reference's ConvNetW32..W256; any N >= 1)
    convnet_nn / _ln / _gn / _in    no norm / LayerNorm / GroupNorm(4) / instance norm
    convnet_mp / _ap / _np          max / average / no pooling
    lenet, mlp, resnet18

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

import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .convnet import ConvNet, LeNet, MLP
from .functional import flat_params, forward_flat, load_flat_, param_shapes, unflatten

__all__ = ["build_net", "check_name", "list_nets", "embed", "feature_dim", "NetConfigError",
           "flat_params", "forward_flat", "load_flat_", "param_shapes", "unflatten"]


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


# name -> (builder(channels, num_classes, im_size, **kw), allowed override keys)
_FIXED: dict[str, tuple[Callable[..., nn.Module], tuple[str, ...]]] = {
    "lenet": (LeNet, ()),
    "mlp": (MLP, ("hidden",)),
    "resnet18": (_resnet18, ("norm",)),
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


def _resolve(name: str, overrides: dict[str, Any]) -> tuple[Callable[..., nn.Module], dict[str, Any]]:
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
    return builder, {**kw, **overrides}


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
        im_size: input (H, W).
        generator: when given, the parameters are a pure function of its state (one draw is
            consumed); the global RNG is untouched. None: default torch init.
        **overrides: architecture keywords (module doc); None values are ignored.

    Returns:
        A module mapping [B, C, H, W] -> [B, num_classes], with `embed(x)` -> [B, D],
        `classifier` and `feature_dim` (D).

    Raises:
        NetConfigError: unknown name, override, or an invalid value (also a ValueError).
    """
    builder, kw = _resolve(name, overrides)
    size = (int(im_size), int(im_size)) if isinstance(im_size, int) else (int(im_size[0]), int(im_size[1]))

    def make() -> nn.Module:
        try:
            return builder(int(channels), int(num_classes), size, **kw)
        except ValueError as e:
            raise NetConfigError(f"{name!r}: {e}") from None

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
