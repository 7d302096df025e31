"""Config validation: every numeric field of every Config carries its range rule at its definition."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from dcompress.config import Validated, field_check, resolve_config
from dcompress.errors import UsageError
from dcompress.registry import list_methods
from dcompress.train.experts import ExpertConfig
from dcompress.train.fair import FairConfig, FullDataConfig
from dcompress.train.teacher import TeacherConfig

CONFIGS = [m.Config for m in list_methods()] + [ExpertConfig, TeacherConfig, FairConfig, FullDataConfig]

# The rules as the global table by field name (config.RULES) had them before they moved next to
# their fields; the regression guard: every field of these names keeps its check, with the same text.
OLD_RULES = {
    **dict.fromkeys((
        "lr", "lr_img", "lr_lr", "lr_net", "lr_teacher", "lr_y", "distill_lr",
        "batch_real", "batch_syn", "batch_train", "batch_size", "bins", "k", "epochs", "expert_epochs",
        "syn_steps", "n_nets", "distill_steps", "distill_epochs", "decay_epochs", "buffer_experts",
        "buffer_epochs", "label_experts", "inner_loop", "outer_loop", "dense_max", "eval_max", "max_samples",
        "lr_grid", "val_per_class", "num_crop", "mipc"), "> 0"),
    **dict.fromkeys((
        "iterations", "weight_decay", "rho", "alpha", "lam", "seed", "min_start_epoch", "max_start_epoch", "threshold",
        "current_max_start_epoch", "expansion_end_epoch", "jitter", "l2_scale", "tv_l2", "r_bn",
        "first_bn_multiplier"), ">= 0"),
    **dict.fromkeys(("momentum", "momentum_y", "momentum_img", "momentum_lr", "beta1", "beta2", "holdout"), "in [0, 1)"),
    **dict.fromkeys(("decay_factor", "min_scale_crops", "max_scale_crops", "min_scale", "max_scale", "cda_milestone"),
                    "in (0, 1]"),
    **dict.fromkeys(("lrs_weight", "ars_weight"), "in [0, 1]"),
    "factor": ">= 0 (0: by resolution)",
}
# a value each rule refuses
OUT_OF_RANGE = {"> 0": 0, ">= 0": -1, "in [0, 1)": 1, "in (0, 1]": 0, "in [0, 1]": 1.5, ">= 0 (0: by resolution)": -1,
                ">= 2": 1}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _all_configs():
    return sorted(set(CONFIGS) | set(_subclasses(Validated)), key=lambda c: (c.__module__, c.__qualname__))


def _numeric(tp) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) for a in args)


@pytest.mark.parametrize("cls", _all_configs(), ids=lambda c: f"{c.__module__.split('.')[-1]}.{c.__qualname__}")
def test_every_numeric_field_has_a_range_rule(cls):
    hints = typing.get_type_hints(cls)
    missing = [f.name for f in dataclasses.fields(cls) if _numeric(hints[f.name]) and field_check(f) is None]
    assert missing == [], (f"{cls.__qualname__}: give {missing} a range rule at the field "
                           "(dcompress/config.py positive, non_negative, unit_open, ...)")


@pytest.mark.parametrize("cls", _all_configs(), ids=lambda c: f"{c.__module__.split('.')[-1]}.{c.__qualname__}")
def test_no_rule_of_the_old_table_is_lost(cls):
    """A subclass overriding a default (DATM's syn_steps) must use the helper again, or it loses the check."""
    lost = {f.name: (field_check(f) or (None, None))[1] for f in dataclasses.fields(cls)
            if f.name in OLD_RULES and (field_check(f) or (None, None))[1] != OLD_RULES[f.name]}
    assert lost == {}, f"{cls.__qualname__}: rule missing or changed (expected {[OLD_RULES[k] for k in lost]})"


@pytest.mark.parametrize("cls", _all_configs(), ids=lambda c: f"{c.__module__.split('.')[-1]}.{c.__qualname__}")
def test_out_of_range_values_are_refused(cls):
    checked = [f for f in dataclasses.fields(cls) if field_check(f) is not None]
    for f in checked:
        text = field_check(f)[1]
        bad = OUT_OF_RANGE[text]
        setting = f"{f.name}=0.1,{bad}" if typing.get_origin(typing.get_type_hints(cls)[f.name]) is tuple else f"{f.name}={bad}"
        with pytest.raises(UsageError) as e:
            resolve_config(cls, sets=[setting])
        assert f"{f.name!r} must be {text}, got {bad}" in str(e.value) or \
            f"every {f.name!r} value must be finite and {text}, got {float(bad)}" in str(e.value), str(e.value)
        assert e.value.key == f.name


def test_datm_keeps_the_rules_of_the_fields_it_overrides():
    from dcompress.registry import get_method

    with pytest.raises(UsageError, match="'syn_steps' must be > 0, got 0"):
        resolve_config(get_method("datm").Config, sets=["syn_steps=0"])
    with pytest.raises(UsageError, match="'expert_epochs' must be > 0, got -1"):
        get_method("datm").Config(expert_epochs=-1)


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
