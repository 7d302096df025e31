"""ResNet-18 for small images: torchvision's ResNet-18, adapted, not rewritten.

torchvision's `resnet18` is `ResNet(BasicBlock, [2, 2, 2, 2])`; we build that same model and
change only its stem for small inputs (up to 64 px: `stem="small"`, the default; `nets.auto_stem`
keeps torchvision's own stem above 64 px), as the CIFAR-style ResNets of the distillation
literature do:

    * `conv1`: 3x3, stride 1, padding 1, `channels` inputs (torchvision: 7x7 stride 2, RGB),
      re-initialised with torchvision's own scheme (kaiming normal, fan_out, relu);
    * no initial max pool (`maxpool` is an identity).

Feature maps for a 32x32 input: 32 -> 32 (layer1) -> 16 -> 8 -> 4 -> global average pool -> 512.
`norm='instancenorm'` swaps BatchNorm for `GroupNorm(C, C)` (the reference's default ResNet18
uses instance norm; its ResNet18BN uses batch norm, which is torchvision's default and ours).
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, ResNet

RESNET_NORMS = ("batchnorm", "instancenorm")
RESNET_STEMS = ("small", "imagenet")


def _instance_norm(channels: int) -> nn.Module:
    return nn.GroupNorm(channels, channels, affine=True)


class SmallResNet18(ResNet):
    """torchvision ResNet-18 with a 3x3 stride-1 stem and no initial max pool.

    Args:
        channels: input channels C.
        num_classes: number of logits.
        norm: 'batchnorm' (torchvision default) or 'instancenorm'.
        stem: 'small' (3x3 stride 1, no max pool: for inputs up to 64 px) or 'imagenet'
            (torchvision's own 7x7 stride-2 conv + 3x3 stride-2 max pool, for larger inputs).

    Shapes:
        forward: [B, C, H, W] -> [B, num_classes]; embed: [B, C, H, W] -> [B, 512].
    """

    def __init__(self, channels: int, num_classes: int, *, norm: str = "batchnorm", stem: str = "small"):
        if norm not in RESNET_NORMS:
            raise ValueError(f"resnet18 norm must be one of {', '.join(RESNET_NORMS)}, got {norm!r}")
        if stem not in RESNET_STEMS:
            raise ValueError(f"resnet18 stem must be one of {', '.join(RESNET_STEMS)}, got {stem!r}")
        # the arguments of torchvision.models.resnet18(num_classes=..., norm_layer=...)
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes,
                         norm_layer=_instance_norm if norm == "instancenorm" else None)
        if stem == "small":
            self.conv1 = nn.Conv2d(channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.feature_dim = self.fc.in_features

    @property
    def classifier(self) -> nn.Linear:
        """The final Linear layer (torchvision's `fc`)."""
        return self.fc

    def embed(self, x: Tensor) -> Tensor:
        """Globally pooled layer4 features. [B, C, H, W] -> [B, 512]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))
