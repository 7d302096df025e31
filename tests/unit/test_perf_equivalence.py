"""The CPU optimisations change no number (docs/performance.md).

Each test compares the optimised code with a reference kept here: the ConvNet forward written
out with functional ops and out-of-place activations, reading the weights of the same module,
and DM's loss / DC's matching step rebuilt from it. Tolerance: none (`torch.equal`). The
optimisations kept (in-place ReLU/LeakyReLU, average pooling as a depthwise conv on the CPU,
DC computing only the gradients its distance reads, malloc tuning) run the same kernels in the same order on the same values, so any
difference at all means the maths changed; a change that
reorders floating-point operations (channels_last, torch.compile, fused kernels, bf16) must fail
here and be argued for separately.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dcompress import alloc
from dcompress.augment import dsa
from dcompress.methods import dc as dc_mod
from dcompress.methods import dm as dm_mod
from dcompress.nets import build_net
from dcompress.nets.functional import flat_params, forward_flat, unflatten
from dcompress.nets.convnet import AvgPool2x2
from dcompress.core import RealData
from tests.conftest import tiny_real


def ref_embed(net: nn.Module, x: torch.Tensor, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """ConvNet features with functional ops and out-of-place activations (the pre-optimisation maths).

    `params` (name -> tensor) replaces the module's parameters, as `forward_flat` does.
    """
    p = dict(net.named_parameters()) if params is None else params
    for i, m in enumerate(net.features):
        w, b = p.get(f"features.{i}.weight"), p.get(f"features.{i}.bias")
        if isinstance(m, nn.Conv2d):
            x = F.conv2d(x, w, b, m.stride, m.padding)
        elif isinstance(m, nn.GroupNorm):
            x = F.group_norm(x, m.num_groups, w, b, m.eps)
        elif isinstance(m, nn.LayerNorm):
            x = F.layer_norm(x, m.normalized_shape, w, b, m.eps)
        elif isinstance(m, nn.BatchNorm2d):   # batch statistics, running stats left alone
            x = F.batch_norm(x, None, None, w, b, True, 0.0, m.eps)
        elif isinstance(m, nn.ReLU):
            x = F.relu(x)
        elif isinstance(m, nn.LeakyReLU):
            x = F.leaky_relu(x, m.negative_slope)
        elif isinstance(m, nn.AvgPool2d):
            x = F.avg_pool2d(x, m.kernel_size, m.stride)
        elif isinstance(m, nn.MaxPool2d):
            x = F.max_pool2d(x, m.kernel_size, m.stride)
        else:
            raise AssertionError(f"reference has no {type(m).__name__}: extend it before changing ConvNet")
    return x.flatten(1)


def ref_forward(net, x, params=None):
    p = dict(net.named_parameters()) if params is None else params
    return F.linear(ref_embed(net, x, p), p["classifier.weight"], p["classifier.bias"])


def assert_same(a, b, what):
    a, b = (a,) if torch.is_tensor(a) else a, (b,) if torch.is_tensor(b) else b
    assert len(a) == len(b), what
    for i, (u, v) in enumerate(zip(a, b)):
        assert torch.equal(u, v), f"{what} [{i}]: max |diff| {(u - v).abs().max().item():.3e}"


NETS = ["convnet_w16", "convnet_w16_nn", "convnetbn_w16", "convnet_w16_mp", "convnet_w16_ln", "convnet_w16_d2"]


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("act", ["relu", "leakyrelu"])
def test_convnet_forward_backward_double_backward_bitwise(name, act):
    net = build_net(name, 1, 4, (28, 28), act=act, generator=torch.Generator().manual_seed(1))
    net.train()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(2), requires_grad=True)
    params = [p for p in net.parameters()]
    target = torch.tensor([0, 1, 2, 3, 0])
    results = []
    for fwd in (net, lambda x: ref_forward(net, x)):
        out = fwd(x)
        loss = F.cross_entropy(out, target)
        # first order (DC real side) and second order (DC syn side: create_graph, then d/dx)
        grads = torch.autograd.grad(loss, params + [x], create_graph=True)
        gg = torch.autograd.grad(sum((g ** 2).sum() for g in grads[:-1]), x)[0]
        results.append((out.detach(), [g.detach() for g in grads], gg))
    (o1, g1, gg1), (o2, g2, gg2) = results
    assert_same(o1, o2, "logits")
    assert_same(g1, g2, "first-order gradients (params, x)")
    assert_same(gg1, gg2, "double backward d|g|^2/dx")


def test_convnet_3channel_32x32_embed_bitwise():
    net = build_net("convnet_w16", 3, 10, (32, 32), generator=torch.Generator().manual_seed(3))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4), requires_grad=True)
    e1, e2 = net.embed(x), ref_embed(net, x)
    assert_same(e1, e2, "embed")
    assert_same(torch.autograd.grad(e1.square().sum(), x), torch.autograd.grad(e2.square().sum(), x), "d/dx")


def test_flat_parameter_forward_unrolled_step_bitwise():
    """The unrolled-training forward (MTT/DATM/DD) through `functional_call`: two differentiable
    SGD steps on a flat vector, then d(loss)/d(images) and d(loss)/d(lr)."""
    net = build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(6, 1, 28, 28, generator=gen, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    lr = torch.tensor(0.01, requires_grad=True)
    outs = []
    for fwd in (lambda f: forward_flat(net, f, x), lambda f: ref_forward(net, x, unflatten(net, f))):
        flat = flat_params(net).requires_grad_(True)
        for _ in range(2):
            g = torch.autograd.grad(F.cross_entropy(fwd(flat), y), flat, create_graph=True)[0]
            flat = flat - lr * g
        loss = (flat ** 2).sum()
        outs.append((loss.detach(), *torch.autograd.grad(loss, (x, lr))))
    assert_same(outs[0], outs[1], "unrolled loss, d/dx, d/dlr")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mkldnn", [True, False])
def test_avgpool2x2_equals_avg_pool2d_bitwise(dtype, mkldnn, monkeypatch):
    """Values, gradient and double backward of the depthwise-conv pooling, odd sizes included."""
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", mkldnn)
    gen = torch.Generator().manual_seed(12)
    for shape in [(3, 128, 32, 32), (2, 5, 9, 7), (4, 16, 8, 8)]:
        x = torch.relu(torch.randn(*shape, generator=gen, dtype=dtype)).requires_grad_(True)
        gy = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2, generator=gen, dtype=dtype,
                         requires_grad=True)
        res = []
        for pool in (AvgPool2x2(), lambda t: F.avg_pool2d(t, 2, 2)):
            y = pool(x)
            gx, = torch.autograd.grad(y, x, gy, create_graph=True)
            ggy, = torch.autograd.grad((gx * x.detach()).sum(), gy)
            res.append((y.detach(), gx.detach(), ggy))
        assert_same(res[0], res[1], f"AvgPool2x2 {shape} {dtype} mkldnn={mkldnn}")


@pytest.fixture(scope="module")
def real() -> RealData:
    return tiny_real()


def _images(real, ipc, seed=7):
    x = torch.randn(real.num_classes * ipc, 1, 28, 28, generator=torch.Generator().manual_seed(seed))
    return x.requires_grad_(True)


@pytest.mark.parametrize("batched", [False, True])
def test_dm_loss_and_image_gradient_bitwise(real, batched):
    ipc = 2
    net = dm_mod.frozen_net("convnet_w16", real, torch.Generator().manual_seed(8), torch.device("cpu"))
    g = torch.Generator().manual_seed(9)
    draws = [dm_mod.draw_class(real, c, 6, dsa.DEFAULT_STRATEGY, g, torch.device("cpu")) for c in range(3)]
    images = _images(real, ipc)
    loss_fn = dm_mod.dm_loss_batched if batched else dm_mod.dm_loss_per_class
    loss = loss_fn(net, real, images, ipc, draws)
    grad = images.grad.clone()

    ref_images = _images(real, ipc)
    aug = (lambda x, d: x if d.aug is None else dsa.apply(x, d.aug))
    if batched:     # the reference's BN branch: all classes in one forward each
        with torch.no_grad():
            fr = ref_embed(net, torch.cat([aug(real.get(d.real_idx), d) for d in draws]))
            mean_real = fr.reshape(len(draws), -1, fr.shape[-1]).mean(1)
        fs = ref_embed(net, torch.cat([aug(ref_images[c * ipc:(c + 1) * ipc], d) for c, d in enumerate(draws)]))
        ref_loss = ((mean_real - fs.reshape(len(draws), ipc, -1).mean(1)) ** 2).sum()
        ref_loss.backward()
        ref_total = ref_loss.detach()
    else:           # the reference loop: per class
        ref_total = torch.zeros(())
        for c, d in enumerate(draws):
            with torch.no_grad():
                mean_real = ref_embed(net, aug(real.get(d.real_idx), d)).mean(0)
            mean_syn = ref_embed(net, aug(ref_images[c * ipc:(c + 1) * ipc], d)).mean(0)
            loss_c = ((mean_real - mean_syn) ** 2).sum()
            loss_c.backward()
            ref_total += loss_c.detach()
    assert loss == float(ref_total)
    assert_same(grad, ref_images.grad, "DM d(loss)/d(images)")


def _ref_distance(gr, gs):
    if gr.dim() == 1:
        return gr.new_zeros(())
    gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    return (1 - (gr * gs).sum(-1) / (gr.norm(dim=-1) * gs.norm(dim=-1) + 1e-6)).sum()


def _ref_match(g_real, g_syn, metric):
    if metric == "ours":
        return sum((_ref_distance(r, s) for r, s in zip(g_real, g_syn)), torch.zeros(()))
    r, s = torch.cat([g.reshape(-1) for g in g_real]), torch.cat([g.reshape(-1) for g in g_syn])
    return ((r - s) ** 2).sum()


@pytest.mark.parametrize("method,metric", [("dc", "ours"), ("dsa", "ours"), ("dc", "mse")])
def test_dc_matching_loss_and_image_gradient_bitwise(real, method, metric):
    """The matching step against one computing every parameter's gradient (DC skips the 1-D
    ones under 'ours', whose distance is an exact 0)."""
    ipc, batch_real = 1, 6
    cls = dc_mod.DC if method == "dc" else dc_mod.DSA
    m = cls(cls.Config(model="convnet_w16", batch_real=batch_real, dis_metric=metric))
    net = build_net("convnet_w16", 1, 3, (28, 28), generator=torch.Generator().manual_seed(10))
    net.train()
    images = _images(real, ipc)
    loss = m.match_step(net, real, images, ipc, torch.Generator().manual_seed(11))

    ref_images = _images(real, ipc)
    gen = torch.Generator().manual_seed(11)
    params = list(net.parameters())
    ref_total = torch.zeros(())
    for c in range(real.num_classes):   # match_step's draws, in its order
        xr = real.get(real.sample_class(c, batch_real, gen))
        xs = ref_images[c * ipc:(c + 1) * ipc]
        if m.strategy is not None:
            p = dsa.make_params(m.strategy, xr.shape[0], real.image_shape, generator=gen, siamese=True)
            xr, xs = dsa.apply(xr, p), dsa.apply(xs, p)
        g_real = torch.autograd.grad(F.cross_entropy(ref_forward(net, xr), torch.full((xr.shape[0],), c)), params)
        g_syn = torch.autograd.grad(F.cross_entropy(ref_forward(net, xs), torch.full((xs.shape[0],), c)), params,
                                    create_graph=True)
        loss_c = _ref_match(g_real, g_syn, metric)
        loss_c.backward(inputs=[ref_images])
        ref_total += loss_c.detach()
    assert loss == float(ref_total)
    assert_same(images.grad, ref_images.grad, f"{method} matching d(loss)/d(images)")
    assert all(p.grad is None for p in net.parameters())   # the network is left alone


# ---------------------------------------------------------------------------------------------- malloc

def test_tune_malloc_off_switch(monkeypatch):
    monkeypatch.setattr(alloc, "_state", None)
    monkeypatch.setenv(alloc.ENV_VAR, "0")
    state = alloc.tune_malloc()
    assert not state.applied and alloc.ENV_VAR in state.reason
    assert alloc.tune_malloc(True) is state          # once per process: the first answer stands


def test_tune_malloc_other_allocator_preloaded(monkeypatch):
    monkeypatch.setattr(alloc, "_state", None)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    state = alloc.tune_malloc(True)
    assert not state.applied and "jemalloc" in state.reason


@pytest.mark.skipif(not (sys.platform.startswith("linux") and alloc._glibc() is not None), reason="glibc only")
def test_tune_malloc_keeps_freed_activations_in_the_heap():
    """Repeated ConvNet forwards with 39 MB activations: glibc's default mmaps and faults them
    in every time (above its 32 MiB dynamic ceiling); once tuned the heap reuses them. Counts
    page faults, not time, so it holds on a loaded machine. One fresh process: default first."""
    code = textwrap.dedent("""
        import resource
        import torch
        from dcompress import alloc
        from dcompress.nets import build_net
        torch.set_num_threads(1)
        net = build_net("convnet_w16_d1", 1, 3, (28, 28)).requires_grad_(False)
        x = torch.randn(600, 1, 28, 28)          # conv output: 600 x 16 x 32 x 32 floats = 39 MB
        def faults():
            out = []
            for _ in range(4):
                f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                net.embed(x)
                out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f)
            return out
        default = faults()
        state = alloc.tune_malloc()
        print(int(state.applied), *default, *faults())
    """)
    env = {**os.environ, alloc.ENV_VAR: "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("LD_PRELOAD", None)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    applied, *counts = [int(v) for v in res.stdout.split()]
    default, tuned = counts[:4], counts[4:]
    pages = (600 * 16 * 32 * 32 * 4) // 4096         # one activation buffer, in pages
    assert applied == 1
    assert min(default[1:]) > pages, counts           # mmap/munmap every forward
    assert min(tuned[1:]) < pages // 10, counts       # reused after warm-up (min: a busy machine's page
                                                      # reclaim can fault one repeat back in)
