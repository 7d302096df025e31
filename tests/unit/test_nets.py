"""dcompress.nets: architectures, names, deterministic init, flat-parameter forward."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dcompress.errors import UsageError
from dcompress.nets import NetConfigError, build_net, embed, feature_dim, list_nets
from dcompress.nets.convnet import count_params
from dcompress.nets.functional import flat_params, forward_flat, load_flat_, param_shapes, unflatten


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


# ----------------------------------------------------------------------------------------------
# Architectures


@pytest.mark.parametrize("channels,size,params", [(1, 28, 317_706), (3, 32, 320_010)])
def test_convnet3_matches_reference(channels, size, params):
    net = build_net("convnet", channels, 10, (size, size))
    assert count_params(net) == params
    assert net.features[0].padding == ((3, 3) if size == 28 else (1, 1))
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 3 and all(m.num_groups == m.num_channels == 128 and m.affine for m in norms)
    assert sum(isinstance(m, nn.AvgPool2d) for m in net.modules()) == 3
    assert net.classifier.in_features == feature_dim(net) == 2048
    x = rand(2, channels, size, size)
    assert net(x).shape == (2, 10)
    assert embed(net, x).shape == (2, 2048)


@pytest.mark.parametrize("name", [n for n in list_nets() if n != "resnet18"])  # resnet18: own test
def test_every_listed_net_builds_and_runs(name):
    # narrow ConvNets keep this fast; full width is covered above and by the convnet_w{N} names
    narrow = {"width": 8} if name.startswith("convnet") and "_w" not in name else {}
    net = build_net(name, 1, 3, (28, 28), generator=gen(), **narrow)
    x = rand(2, 1, 28, 28)
    with torch.no_grad():
        out, feats = net(x), embed(net, x)
    assert out.shape == (2, 3) and feats.shape == (2, feature_dim(net))
    torch.testing.assert_close(net.classifier(feats), out)


@pytest.mark.parametrize("name,kind", [
    ("convnetbn", nn.BatchNorm2d), ("convnet_bn", nn.BatchNorm2d), ("convnet_ln", nn.LayerNorm),
    ("convnet_mp", nn.MaxPool2d),
])
def test_convnet_variants_by_name(name, kind):
    net = build_net(name, 1, 10, (28, 28))
    assert sum(isinstance(m, kind) for m in net.modules()) == 3


def test_convnet_suffixes_and_overrides():
    assert not any(isinstance(m, (nn.GroupNorm, nn.BatchNorm2d, nn.LayerNorm))
                   for m in build_net("convnet_nn", 1, 10, (28, 28)).modules())
    net = build_net("convnet_d4_w16", 3, 5, (32, 32))
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 4
    assert feature_dim(net) == 16 * 2 * 2
    net = build_net("ConvNet", 1, 10, (28, 28), width=8, depth=2, act="leakyrelu", norm=None)
    assert feature_dim(net) == 8 * 8 * 8          # 28 -> 32 -> 16 -> 8; norm=None keeps instance norm
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == 2


def test_convnet_sizes_we_generalise():
    # reference breaks on 3x28x28 (assumes 32x32 maps) and pads 1x32x32 to 36; we don't.
    assert feature_dim(build_net("convnet_w8", 3, 10, (28, 28))) == 8 * 4 * 4
    assert build_net("convnet_w8", 1, 10, (32, 32)).features[0].padding == (1, 1)
    assert build_net("convnet_w8_ln", 3, 10, (28, 28))(rand(2, 3, 28, 28)).shape == (2, 10)


def test_lenet_mlp_shapes():
    lenet = build_net("lenet", 1, 10, (28, 28))
    assert lenet.features[0].padding == (2, 2) and lenet.head[0].in_features == 400
    assert build_net("lenet", 3, 10, (32, 32)).features[0].padding == (0, 0)
    mlp = build_net("mlp", 3, 7, (32, 32))
    assert mlp.body[0].in_features == 3 * 32 * 32 and feature_dim(mlp) == 128
    # non-contiguous input (e.g. a permuted augmentation output) must work
    x = rand(2, 32, 32, 3).permute(0, 3, 1, 2)
    assert mlp(x).shape == (2, 7)


def test_resnet18_is_torchvision_adapted():
    from torchvision.models.resnet import ResNet

    net = build_net("resnet18", 1, 10, (28, 28))
    assert isinstance(net, ResNet)
    assert net.conv1.in_channels == 1 and net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, nn.Identity) and net.classifier is net.fc and feature_dim(net) == 512
    x = rand(1, 1, 8, 8)
    net.eval()                                    # layer4 maps are 1x1: BatchNorm needs eval at batch 1
    torch.testing.assert_close(net.classifier(embed(net, x)), net(x))
    assert embed(net, x).shape == (1, 512)
    inorm = build_net("resnet18", 3, 10, (32, 32), norm="instancenorm")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inorm.modules())


def test_bad_names_and_overrides():
    with pytest.raises(NetConfigError, match="unknown network 'vgg11'"):
        build_net("vgg11", 1, 10, (28, 28))
    with pytest.raises(UsageError, match="unknown ConvNet suffix 'zz'"):
        build_net("convnet_zz", 1, 10, (28, 28))
    with pytest.raises(ValueError, match="does not take width"):
        build_net("lenet", 1, 10, (28, 28), width=3)
    with pytest.raises(NetConfigError, match="unknown norm"):
        build_net("convnet", 1, 10, (28, 28), norm="weird")
    with pytest.raises(NetConfigError, match="below 1x1"):
        build_net("convnet_d6", 1, 10, (28, 28))


# ----------------------------------------------------------------------------------------------
# Deterministic initialisation


def _params(net: nn.Module) -> list[torch.Tensor]:
    return [p.detach() for p in net.parameters()]


@pytest.mark.parametrize("name", ["convnet_w8", "lenet"])
def test_generator_init_is_a_pure_function_of_its_state(name):
    global_state = torch.random.get_rng_state()
    a = build_net(name, 1, 10, (28, 28), generator=gen(3))
    b = build_net(name, 1, 10, (28, 28), generator=gen(3))
    c = build_net(name, 1, 10, (28, 28), generator=gen(4))
    assert torch.equal(torch.random.get_rng_state(), global_state)   # global RNG untouched
    assert all(torch.equal(p, q) for p, q in zip(_params(a), _params(b)))
    assert not all(torch.equal(p, q) for p, q in zip(_params(a), _params(c)))
    g = gen(3)
    first, second = build_net(name, 1, 10, (28, 28), generator=g), build_net(name, 1, 10, (28, 28), generator=g)
    assert all(torch.equal(p, q) for p, q in zip(_params(first), _params(a)))
    assert not torch.equal(_params(first)[0], _params(second)[0])    # the generator advanced


# ----------------------------------------------------------------------------------------------
# Flat-parameter forward


@pytest.mark.parametrize("name", ["convnet_w8", "lenet", "mlp"])
def test_forward_flat_matches_module_and_its_gradients(name):
    net = build_net(name, 1, 4, (28, 28), generator=gen())
    x, y = rand(3, 1, 28, 28), torch.tensor([0, 1, 3])
    flat = flat_params(net).requires_grad_(True)
    assert flat.dim() == 1 and flat.numel() == count_params(net)
    out = forward_flat(net, flat, x)
    torch.testing.assert_close(out, net(x))
    nn.functional.cross_entropy(out, y).backward()
    nn.functional.cross_entropy(net(x), y).backward()
    torch.testing.assert_close(flat.grad, torch.cat([p.grad.reshape(-1) for p in net.parameters()]))


def test_flat_layout_unflatten_and_load():
    net = build_net("convnet_w4_d2", 1, 3, (28, 28), generator=gen())
    shapes = param_shapes(net)
    assert [n for n, _ in shapes] == [n for n, _ in net.named_parameters()]
    flat = flat_params(net)
    flat.add_(1.0)                                   # a copy: the net is unchanged
    assert not torch.equal(flat_params(net), flat)
    parts = unflatten(net, flat)
    assert all(parts[n].shape == s for n, s in shapes)
    load_flat_(net, flat)
    assert torch.equal(flat_params(net), flat)
    with pytest.raises(ValueError, match="elements"):
        forward_flat(net, flat[:-1], rand(1, 1, 28, 28))


def test_forward_flat_uses_buffers_of_batchnorm_net():
    net = build_net("convnetbn_w4", 1, 3, (28, 28), generator=gen()).eval()
    x = rand(2, 1, 28, 28)
    # different parameters -> different output; same parameters -> eval-mode output
    torch.testing.assert_close(forward_flat(net, flat_params(net), x), net(x))
    assert not torch.allclose(forward_flat(net, flat_params(net) * 0.5, x), net(x))


# ------------------------------------------------------------------- networks by resolution

@pytest.mark.parametrize("size, depth", [(28, 3), (32, 3), (16, 3), (48, 3), (64, 4), (96, 4), (128, 5),
                                         (256, 6), (4, 2), ((32, 64), 3), ((64, 128), 4)])
def test_convnet_depth_follows_the_image_size(size, depth):
    from dcompress.nets import arch_name, auto_depth, build_net

    hw = (size, size) if isinstance(size, int) else size
    assert auto_depth(hw) == depth
    net = build_net("convnet", 3, 5, hw)
    assert net.arch == arch_name("convnet", hw) == f"convnet_d{depth}"
    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == depth
    assert net(torch.zeros(2, 3, *hw)).shape == (2, 5)


def test_reference_shapes_are_unchanged_by_auto_depth():
    from dcompress.nets import build_net

    # ConvNet-3 on 1x28x28 (317,706 parameters) and 3x32x32 (320,010) as in methods.md §1
    assert sum(p.numel() for p in build_net("convnet", 1, 10, (28, 28)).parameters()) == 317706
    assert sum(p.numel() for p in build_net("convnet", 3, 10, (32, 32)).parameters()) == 320010
    # MTT's ConvNetD4 on Tiny-ImageNet: 4x4x128 features at 64x64
    assert build_net("convnet", 3, 200, (64, 64)).feature_dim == 2048


def test_explicit_depth_wins_over_auto():
    from dcompress.nets import arch_name, build_net

    assert build_net("convnet_d3", 3, 4, (64, 64)).feature_dim == 128 * 8 * 8
    assert build_net("convnet", 3, 4, (64, 64), depth=2).feature_dim == 128 * 16 * 16
    assert arch_name("convnet", 128, depth=3) == "convnet_d3"
    assert arch_name("convnetbn_w32", 64) == "convnetbn_w32_d4"
    assert arch_name("convnet_d2_w16", 128) == "convnet_d2_w16"
    # the resolved name builds the same network at any size
    a = build_net(arch_name("convnet_w16", 64), 3, 4, (32, 32))
    assert a.arch == "convnet_w16_d4" and a.feature_dim == 16 * 2 * 2


def test_non_square_and_tiny_inputs():
    from dcompress.nets import NetConfigError, build_net

    net = build_net("convnet", 1, 3, (40, 100))          # depth from the shorter side
    assert net.arch == "convnet_d3" and net(torch.zeros(1, 1, 40, 100)).shape == (1, 3)
    with pytest.raises(NetConfigError, match="1x1.*pools"):
        build_net("convnet", 1, 3, (1, 1))


@pytest.mark.parametrize("size, stem", [(32, "small"), (64, "small"), (128, "imagenet"), ((96, 200), "imagenet")])
def test_resnet_stem_by_size(size, stem):
    from dcompress.nets import build_net

    hw = (size, size) if isinstance(size, int) else size
    net = build_net("resnet18", 3, 4, hw)
    assert net.arch == f"resnet18_{stem}stem"
    assert net.conv1.kernel_size == ((3, 3) if stem == "small" else (7, 7))
    assert isinstance(net.maxpool, torch.nn.Identity) == (stem == "small")
    assert net(torch.zeros(2, 3, *hw)).shape == (2, 4)
    fixed = build_net("resnet18_smallstem", 3, 4, (128, 128))
    assert fixed.arch == "resnet18_smallstem" and fixed.conv1.kernel_size == (3, 3)
