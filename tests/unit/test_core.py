"""Core pieces on tiny tensors: config resolution, checkpoints, atomic outputs, baselines' orders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

from dcompress.checkpoint import Checkpointer
from dcompress.config import resolve_config
from dcompress.errors import OutputError, UsageError
from dcompress.io.atomic import AtomicDir
from dcompress.methods.herding import herding_order
from dcompress.methods.kcenter import kcenter_order


@dataclass(frozen=True)
class Cfg:
    iterations: int = 10
    lr_img: float = 1.0
    init: str = "real"
    batched: Optional[bool] = None


def test_config_layers_yaml_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("iterations: 20\nlr_img: 0.5\n")
    cfg = resolve_config(Cfg, file=f, sets=["lr_img=2", "batched=true"])
    assert cfg == Cfg(iterations=20, lr_img=2.0, init="real", batched=True)
    assert resolve_config(Cfg, sets=["batched=none"]).batched is None


@pytest.mark.parametrize("sets,msg", [(["iters=3"], "unknown config key 'iters'"),
                                      (["iterations=1.5"], "bad value 1.5 for 'iterations'"),
                                      (["lr_img=fast"], "bad value 'fast' for 'lr_img'"),
                                      (["batched=maybe"], "bad value 'maybe' for 'batched'")])
def test_config_errors_name_the_key(sets, msg):
    with pytest.raises(UsageError, match=msg):
        resolve_config(Cfg, sets=sets)


def test_config_yaml_unknown_key_names_the_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("nope: 1\n")
    with pytest.raises(UsageError, match=r"c\.yaml: unknown config key 'nope'"):
        resolve_config(Cfg, file=f)


def test_checkpointer_round_trip_and_identity_mismatch(tmp_path):
    ck = Checkpointer(tmp_path / "w", {"method": "dm", "seed": 0}, every=2)
    assert ck.load() is None and not ck.due(1) and ck.due(2)
    g = torch.Generator().manual_seed(3)
    ck.save({"iteration": 4, "images": torch.ones(2, 2), "rng": g.get_state()})
    again = Checkpointer(tmp_path / "w", {"method": "dm", "seed": 0}, every=2)
    state = again.load()
    assert state["iteration"] == 4 and again.resumed_from == 4 and torch.equal(state["images"], torch.ones(2, 2))
    other = Checkpointer(tmp_path / "w", {"method": "dm", "seed": 1}, every=2)
    assert other.load() is None
    fresh = Checkpointer(tmp_path / "w", {"method": "dm", "seed": 1}, every=2, resume=False)
    assert fresh.load() is None


def test_atomic_dir_leaves_nothing_on_failure_and_keeps_previous(tmp_path):
    target = tmp_path / "out"
    with AtomicDir(target) as tmp:
        (tmp / "manifest.json").write_text('{"dcompress": {}}')
    with pytest.raises(RuntimeError):
        with AtomicDir(target) as tmp:
            (tmp / "manifest.json").write_text('{"dcompress": {"new": 1}}')
            raise RuntimeError("killed")
    assert (target / "manifest.json").read_text() == '{"dcompress": {}}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("x")
    with pytest.raises(OutputError):
        AtomicDir(foreign)


def test_herding_matches_brute_force_mean_matching():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(30, 4, generator=g, dtype=torch.float64)
    order = herding_order(f, 5).tolist()
    mu, chosen = f.mean(0), []
    for t in range(1, 6):
        best = min((i for i in range(30) if i not in chosen),
                   key=lambda i: float(((f[chosen + [i]].sum(0) / t) - mu).norm()))
        chosen.append(best)
    assert order == chosen


def test_kcenter_is_farthest_first():
    f = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 5.0], [0.2, 0.1]])
    order = kcenter_order(f, 3).tolist()
    assert order[0] == 1  # nearest the mean (2.24, 1.02)
    assert order[1] == 2 and order[2] == 3


def test_derived_seeds_depend_on_seed_and_tags_only():
    from dcompress.seeds import derive, derive_seed

    assert derive_seed(3, "it", 5) == derive_seed(3, "it", 5) != derive_seed(3, "it", 6) != derive_seed(4, "it", 5)
    a, b = derive(3, 7, 2), derive(3, 7, 2)
    torch.randn(10, generator=torch.Generator().manual_seed(99))          # other streams do not interfere
    assert torch.equal(torch.randn(5, generator=a), torch.randn(5, generator=b))
    assert 0 <= derive_seed(2 ** 62, "x") < 2 ** 63
