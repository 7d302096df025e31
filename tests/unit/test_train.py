"""Evaluation training: each run is its own network, and a run is reproducible from its seed."""
from __future__ import annotations

import torch

from dcompress.train.loop import train_on_set
from dcompress.core import EvalProtocol


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
