"""`--no-exact-images` keeps optimised pixels in range (methods/loop.py): SynthesisLoop projects
the images into `RunSpec.pixel_range` after every iteration, so the 8-bit PNG written is the set
that was optimised up to rounding."""
from __future__ import annotations

import torch

from dcompress.core import RunSpec
from dcompress.methods.loop import SynthesisLoop


def _loop(bounds, images):
    spec = RunSpec(ipc=1, pixel_range=bounds)
    return SynthesisLoop("toy", 3, spec, lambda ev: None, state={"images": images})


def test_images_are_projected_per_channel_after_each_iteration():
    mean, std = (0.5, 0.2), (0.25, 0.5)
    bounds = tuple(tuple((v - m) / s for m, s in zip(mean, std)) for v in (0.0, 1.0))
    images = torch.tensor([[[[-9.0, 0.1]], [[3.0, -0.1]]]])           # [1, 2, 1, 2]
    loop = _loop(bounds, images)
    for it in loop:
        with torch.no_grad():
            images.add_(5.0 if it == 0 else -20.0)     # an optimiser step that leaves the range
        loop.done(1.0)
        pixels = images * torch.tensor(std).view(1, 2, 1, 1) + torch.tensor(mean).view(1, 2, 1, 1)
        assert float(pixels.min()) >= -1e-6 and float(pixels.max()) <= 1 + 1e-6
    assert torch.allclose(images[0, 0], torch.full((1, 2), bounds[0][0]))   # pushed to the bottom


def test_no_range_leaves_the_images_alone():
    images = torch.tensor([[[[-9.0, 9.0]]]])
    loop = _loop(None, images)
    for _ in loop:
        loop.done(1.0)
    assert images.tolist() == [[[[-9.0, 9.0]]]]
