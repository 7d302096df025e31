"""ConvNet, LeNet and MLP: the small networks of the dataset-distillation literature.

`ConvNet` follows the reference `networks.py ConvNet` (methods.md §1.1) layer for layer:
`depth` x [Conv3x3(width) -> norm -> act -> pool] -> Linear. Defaults are ConvNet-3 (width 128,
relu, instance norm as `GroupNorm(width, width)`, 2x2 average pooling). For 28x28 inputs the
first conv pads by 3 so the feature maps go 28 -> 32 -> 16 -> 8 -> 4, which reproduces the
reference's 1-channel 28x28 network exactly (317,706 parameters at 10 classes).

Where we differ from the reference, and why:
    * The reference pads the first conv by 3 whenever `channel == 1` and *assumes* 32x32 maps
      for 28x28 inputs; that breaks 3-channel 28x28 inputs and pads 1-channel 32x32 inputs to
      36. We pad by 3 exactly when the input is 28x28 and compute the feature shape from the
      real arithmetic, so any input size works. 1x28x28 and 3x32x32 are unchanged.
    * ReLU and LeakyReLU run in place (the reference's are not). Same values and the same
      gradients bit for bit (tests/unit/test_perf_equivalence.py): their backward reads the
      output, and no layer before them (conv, norm) needs its own output for backward. One
      activation-sized buffer fewer per block, which matters on the CPU (docs/performance.md).
    * Average pooling runs as a depthwise conv on the CPU (`AvgPool2x2`): same numbers, faster.

Every network exposes `embed(x) -> [B, feature_dim]` (penultimate features: DM's embedding,
teacher features), `classifier` (the last Linear) and `feature_dim`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")
ACTS = ("relu", "sigmoid", "leakyrelu", "swish")
POOLINGS = ("avgpooling", "maxpooling", "none")


def _norm_layer(norm: str, shape: tuple[int, int, int]) -> nn.Module | None:
    """Normalisation of a [C, H, W] feature map, as in the reference `_get_normlayer`."""
    c = shape[0]
    if norm == "instancenorm":
        return nn.GroupNorm(c, c, affine=True)
    if norm == "batchnorm":
        return nn.BatchNorm2d(c, affine=True)
    if norm == "layernorm":
        return nn.LayerNorm(list(shape), elementwise_affine=True)
    if norm == "groupnorm":
        return nn.GroupNorm(4, c, affine=True)
    if norm == "none":
        return None
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def _activation(act: str) -> nn.Module:
    # in place only where autograd allows it: relu/leaky_relu backward needs only the output,
    # and the preceding conv/norm never needs its output (sigmoid, SiLU stay out of place)
    if act == "relu":
        return nn.ReLU(inplace=True)
    if act == "sigmoid":
        return nn.Sigmoid()
    if act == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.01, inplace=True)
    if act == "swish":
        return nn.SiLU()  # x * sigmoid(x), the reference's Swish
    raise ValueError(f"unknown act {act!r}; expected one of {', '.join(ACTS)}")


class AvgPool2x2(nn.AvgPool2d):
    """2x2, stride-2 average pooling; on the CPU computed as a depthwise conv with weights 1/4.

    Same values and gradients bit for bit as `F.avg_pool2d` (x/4 is exact, and the conv adds the
    four terms in the pooling kernel's order: checked on oneDNN's AVX-512/AVX2/SSE4.1 kernels
    and without oneDNN, tests/unit/test_perf_equivalence.py), about 2x faster: ATen's avg_pool2d
    on NCHW maps is a scalar loop, a third of a ConvNet-3 forward (docs/performance.md).
    Other devices and dtypes use `F.avg_pool2d`. No parameters or buffers (state dicts unchanged).
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or x.dtype not in (torch.float32, torch.float64):
            return super().forward(x)
        weight = x.new_full((x.shape[1], 1, 2, 2), 0.25)
        return F.conv2d(x, weight, stride=2, groups=x.shape[1])


def _pooling(pooling: str) -> nn.Module | None:
    if pooling == "avgpooling":
        return AvgPool2x2()
    if pooling == "maxpooling":
        return nn.MaxPool2d(kernel_size=2, stride=2)
    if pooling == "none":
        return None
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {', '.join(POOLINGS)}")


class ConvNet(nn.Module):
    """`depth` blocks of Conv3x3 -> norm -> act -> pool, then a Linear classifier.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        im_size: input (H, W). 28x28 inputs get a first-conv padding of 3 (28 -> 32).
        width: conv channels of every block.
        depth: number of blocks.
        act: 'relu' | 'sigmoid' | 'leakyrelu' | 'swish'.
        norm: 'instancenorm' | 'batchnorm' | 'layernorm' | 'groupnorm' | 'none'.
        pooling: 'avgpooling' | 'maxpooling' | 'none'.

    Shapes:
        forward: [B, C, H, W] -> [B, num_classes]; embed: [B, C, H, W] -> [B, feature_dim].
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int] = (32, 32), *,
                 width: int = 128, depth: int = 3, act: str = "relu", norm: str = "instancenorm",
                 pooling: str = "avgpooling"):
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"ConvNet needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        h, w = im_size
        layers: list[nn.Module] = []
        in_ch = channels
        for d in range(depth):
            pad = 3 if (d == 0 and (h, w) == (28, 28)) else 1
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            h, w = h + 2 * pad - 2, w + 2 * pad - 2
            norm_layer = _norm_layer(norm, (width, h, w))
            if norm_layer is not None:
                layers.append(norm_layer)
            layers.append(_activation(act))
            pool = _pooling(pooling)
            if pool is not None:
                layers.append(pool)
                h, w = h // 2, w // 2
            if h < 1 or w < 1:
                raise ValueError(f"ConvNet depth {depth} pools a {tuple(im_size)} input below 1x1")
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.feature_dim = width * h * w
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features: flattened conv features. [B, C, H, W] -> [B, feature_dim]."""
        return self.features(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class LeNet(nn.Module):
    """LeNet-5 as in the DD reference (`networks.py LeNet`).

    Conv5x5(6) -> relu -> maxpool -> Conv5x5(16) -> relu -> maxpool -> 120 -> 84 -> classes.
    The first conv pads by 2 for 28x28 inputs (28 -> 28 -> 14 -> 10 -> 5), by 0 otherwise
    (32 -> 28 -> 14 -> 10 -> 5). DD uses one output for two classes; we always use `num_classes`.

    Shapes:
        forward: [B, C, H, W] -> [B, num_classes]; embed: [B, C, H, W] -> [B, 84].
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int] = (28, 28)):
        super().__init__()
        h, w = im_size
        pad = 2 if (h, w) == (28, 28) else 0
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, kernel_size=5, padding=pad), nn.ReLU(), nn.MaxPool2d(2, 2),
            nn.Conv2d(6, 16, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2),
        )
        h, w = ((h + 2 * pad - 4) // 2 - 4) // 2, ((w + 2 * pad - 4) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"LeNet needs inputs of at least 16x16 (28x28 or 32x32 intended), got {tuple(im_size)}")
        self.head = nn.Sequential(nn.Linear(16 * h * w, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.feature_dim = 84
        self.classifier = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features (after fc2 + relu). [B, C, H, W] -> [B, 84]."""
        return self.head(self.features(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


class MLP(nn.Module):
    """The reference MLP (784 -> 128 -> 128 -> classes), generalised to C*H*W inputs.

    Shapes:
        forward: [B, C, H, W] -> [B, num_classes]; embed: [B, C, H, W] -> [B, hidden].
    """

    def __init__(self, channels: int, num_classes: int, im_size: tuple[int, int] = (28, 28), *,
                 hidden: int = 128):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(channels * im_size[0] * im_size[1], hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU())
        self.feature_dim = hidden
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features. [B, C, H, W] -> [B, hidden]."""
        # reshape, not view: augmented batches may be non-contiguous
        return self.body(x.reshape(x.shape[0], -1))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embed(x))


def count_params(net: nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


__all__ = ["ConvNet", "LeNet", "MLP", "NORMS", "ACTS", "POOLINGS", "count_params"]
