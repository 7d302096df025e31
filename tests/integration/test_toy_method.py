"""A new method written against the shared loop (as docs/adding-a-method.md shows) registers
and runs end to end from the CLI, resumable, with nothing else changed."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from typer.testing import CliRunner

import dcompress
from dcompress import registry
from dcompress.cli import app
from dcompress.config import Validated, non_negative, positive
from dcompress.core import CompressedSet, LogFn, RealData, RunSpec
from dcompress.io.schema import EvalProtocol
from dcompress.methods.base import check_ipc, class_labels
from dcompress.methods.loop import SynthesisLoop
from dcompress.seeds import derive
from dcompress.methods.base import init_images_by_class


class ClassMeans:
    """Toy synthesis: pull each class's images towards the mean of a fresh real batch of its class."""

    info = registry.MethodInfo("toy-means", "synthesis", "test method: images pulled to class-mean real batches")

    @dataclass(frozen=True)
    class Config(Validated):
        iterations: int = non_negative(4)
        lr_img: float = positive(0.5)
        batch_real: int = positive(4)

    def __init__(self, config: "ClassMeans.Config"):
        self.config = config

    def fit(self, real: RealData, spec: RunSpec, *, log: LogFn) -> CompressedSet:
        cfg, ipc = self.config, spec.ipc
        check_ipc(real, ipc)
        classes = range(real.num_classes)
        images, _ = init_images_by_class(real, classes, ipc, "noise", spec.seed, spec.device)
        images.requires_grad_(True)
        opt = torch.optim.SGD([images], lr=cfg.lr_img)
        loop = SynthesisLoop("toy-means", cfg.iterations, spec, log, state={"images": images, "optimizer": opt})
        for it in loop:
            opt.zero_grad()
            targets = torch.cat([real.get(real.sample_class(c, cfg.batch_real, derive(spec.seed, it, c)))
                                 .mean(0, keepdim=True).expand(ipc, -1, -1, -1) for c in classes])
            loss = ((images - targets) ** 2).sum(dim=(1, 2, 3)).mean()
            loss.backward()
            opt.step()
            loop.done(float(loss.detach()))
        return CompressedSet(images=images.detach().cpu(), labels=class_labels(real.num_classes, ipc),
                             synthetic=True, protocol=EvalProtocol(name="toy-means", epochs=2), info=loop.summary())


@pytest.fixture
def toy():
    registry.register_method(ClassMeans)
    yield ClassMeans
    registry._METHODS.pop("toy-means", None)


def test_toy_method_runs_end_to_end_from_the_cli(toy, shards, tmp_path):
    out = tmp_path / "toy"
    r = CliRunner().invoke(app, ["distill", str(shards["train"]), "--method", "toy-means", "--ipc", "2",
                                 "--set", "iterations=5", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["status"] == "ok" and rep["samples"] == 6 and rep["labels"] == "hard"
    info = json.loads((out / "manifest.json").read_text())["dcompress"]["info"]
    assert info["iterations"] == 5 and info["final_loss"] < info["first_loss"]
    ds = dcompress.load(out)
    assert ds.images.shape == (6, 1, 28, 28) and ds.protocol.name == "toy-means"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows if row["event"] == "iteration"] == [1, 2, 3, 4, 5]
