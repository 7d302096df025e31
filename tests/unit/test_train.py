"""Evaluation training: each run is its own network, and a run is reproducible from its seed."""
from __future__ import annotations

import pytest
import torch

from dcompress.train.loop import train_on_set
from dcompress.io.schema import EvalProtocol


def _params(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def test_eval_runs_differ_by_seed_and_repeat_with_it():
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(12, 1, 28, 28, generator=g), torch.arange(3).repeat(4)
    proto = EvalProtocol(name="mtt", model="convnet_w16", epochs=2, aug="color_crop_cutout_flip_scale_rotate",
                         use_learned_lr=True)

    def run(seed: int) -> torch.Tensor:
        return _params(train_on_set(images, labels, num_classes=3, protocol=proto, lr=0.03,
                                    generator=torch.Generator().manual_seed(seed), device=torch.device("cpu")))

    a, a_again, b = run(0), run(0), run(1)
    assert torch.equal(a, a_again)
    assert not torch.allclose(a, b)


def test_training_from_a_real_view_equals_training_on_the_normalised_tensor():
    """Trainers read batches through RealView instead of holding the whole normalised set:
    the same arithmetic per element, so the same network bit for bit."""
    from dcompress.core import RealView
    from dcompress.nets import build_net
    from dcompress.train.loop import predict, train_epoch
    from tests.conftest import tiny_real

    real = tiny_real()
    idx = torch.arange(0, len(real), 2)
    nets = []
    for source in (real.get(idx), RealView(real, idx)):
        net = build_net("convnet_w8", 1, 3, (28, 28), generator=torch.Generator().manual_seed(0))
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        g = torch.Generator().manual_seed(1)
        losses = [train_epoch(net, opt, source, real.labels[idx], None, batch_size=4, generator=g, aug="flip_crop")
                  for _ in range(2)]
        nets.append((losses, predict(net, source, device=torch.device("cpu"))))
    assert nets[0][0] == nets[1][0] and torch.equal(nets[0][1], nets[1][1])


def test_training_in_segments_equals_one_uninterrupted_call():
    """SetTrainer stopped after any pass (and its net evaluated in between, as the halving lr
    search does) and continued gives the weights of one train_on_set call bit for bit: across
    the lr decay, with augmentation, soft labels and a view per pass."""
    from dcompress.train.loop import SetTrainer, accuracy

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(12, 1, 28, 28, generator=g), torch.arange(3).repeat(4)
    soft = torch.randn(12, 3, generator=g)
    views = [torch.randn(12, 1, 28, 28, generator=g) for _ in range(6)]
    cpu = torch.device("cpu")
    for proto, kw in ((EvalProtocol(name="dc", model="convnet_w8", epochs=5, batch_size=5,
                                    aug="color_crop_cutout_flip_scale_rotate"), {}),
                      (EvalProtocol(name="rded", model="convnet_w8", epochs=5, batch_size=5, soft_labels=True,
                                    kd=True, temperature=4.0),
                       {"soft": soft, "epoch_data": lambda p: (views[p], soft)})):
        whole = train_on_set(images, labels, num_classes=3, protocol=proto, lr=0.05,
                             generator=torch.Generator().manual_seed(7), device=cpu, **kw)
        for cuts in ((1, 2, 3, 4, 5, 6), (2, 6), (3, 3, 6), (6,)):
            t = SetTrainer(images, labels, num_classes=3, protocol=proto, lr=0.05,
                           generator=torch.Generator().manual_seed(7), device=cpu, **kw)
            for p in cuts:
                accuracy(t.run_to(p), images, labels, device=cpu)
            assert t.passes == t.total == 6 and not t.net.training
            assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), t.net.state_dict().values()))
        with pytest.raises(ValueError, match="passes"):
            t.run_to(7)
        with pytest.raises(ValueError, match="passes"):
            t.run_to(2)
