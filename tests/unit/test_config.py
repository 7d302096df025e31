"""Config validation: one rule table covers every numeric field of every Config."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from dcompress.config import RULES, resolve_config
from dcompress.errors import UsageError
from dcompress.registry import list_methods
from dcompress.train.experts import ExpertConfig
from dcompress.train.fair import FairConfig, FullDataConfig
from dcompress.train.teacher import TeacherConfig

CONFIGS = [m.Config for m in list_methods()] + [ExpertConfig, TeacherConfig, FairConfig, FullDataConfig]


def _numeric(tp) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: f"{c.__module__.split('.')[-1]}.{c.__name__}")
def test_every_numeric_field_has_a_range_rule(cls):
    hints = typing.get_type_hints(cls)
    missing = [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name]) and f.name not in RULES]
    assert missing == [], f"{cls.__name__}: add a range rule for {missing} in dcompress/config.py RULES"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: f"{c.__module__.split('.')[-1]}.{c.__name__}")
def test_defaults_pass_validation(cls):
    resolve_config(cls)


@pytest.mark.parametrize("setting,needle", [
    ("lr_img=-1", "'lr_img' must be > 0"),
    ("lr_img=.nan", "'lr_img' must be finite"),
    ("iterations=-5", "'iterations' must be >= 0"),
    ("momentum=1", "'momentum' must be in [0, 1)"),
    ("batch_real=0", "'batch_real' must be > 0"),
    ("model=resnet9000", "unknown network 'resnet9000'"),
    ("dsa_strategy=color_warp", "unknown DSA augmentation family 'warp'"),
    ("x=!!python/object/apply:os.system [echo hi]", "not a plain YAML scalar"),
])
def test_bad_values_are_usage_errors_naming_the_key(setting, needle):
    from dcompress.registry import get_method

    with pytest.raises(UsageError, match=None) as e:
        resolve_config(get_method("dm").Config, sets=[setting])
    assert needle in str(e.value)


def test_start_epoch_window_must_not_be_inverted():
    from dcompress.registry import get_method

    with pytest.raises(UsageError, match="min_start_epoch"):
        resolve_config(get_method("datm").Config, sets=["min_start_epoch=30", "max_start_epoch=20"])


@pytest.mark.parametrize("content,needle", [(b"\x00\x01\x02binary", "not a YAML text file"), (b"- a\n- b\n", "mapping"),
                                            (b"k: [unclosed", "not valid YAML")])
def test_config_file_problems_are_usage_errors(tmp_path, content, needle):
    from dcompress.registry import get_method

    f = tmp_path / "c.yaml"
    f.write_bytes(content)
    with pytest.raises(UsageError) as e:
        resolve_config(get_method("dm").Config, file=f)
    assert needle in str(e.value)
    with pytest.raises(UsageError, match="found a folder"):
        resolve_config(get_method("dm").Config, file=tmp_path)


def test_one_precedence_rule_flag_over_set_over_file_over_default(tmp_path):
    from dcompress.registry import create_method

    f = tmp_path / "c.yaml"
    f.write_text("bins: 3\nk: 7\nlam: 0.5\n")
    _, cfg = create_method("dq", config_file=f, sets=["bins=4", "k=8"], bins=5, features=None)
    assert (cfg.bins, cfg.k, cfg.lam, cfg.features) == (5, 8, 0.5, "teacher")   # flag, --set, file, default
    with pytest.raises(UsageError, match="--bins does not apply"):
        create_method("dm", bins=3)
