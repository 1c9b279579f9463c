"""AdaptationConfig and modality layouts: defaults are the paper's, bad settings fail clearly, metadata round-trips."""

import pytest

from sam_jax.adaptation import AdaptationConfig, AdaptationError, parse_modalities


def test_defaults_are_the_papers_method():
    config = AdaptationConfig()
    assert config.modalities == ("t1n", "t1c", "t2w", "t2f") and config.in_chans == 4
    assert (config.lora_rank, config.lora_scale, config.lora_targets) == (4, 0.25, ("q", "v", "lin1", "lin2"))
    assert (config.patch_embed_init, config.cross_slice, config.trainable) == ("random", False, "lora")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all4", ("t1n", "t1c", "t2w", "t2f")),
        ("t2f_x3", ("t2f", "t2f", "t2f")),
        ("t1n_t2w_t2f", ("t1n", "t2w", "t2f")),
        (" t1c, t2w ", ("t1c", "t2w")),
    ],
)
def test_parse_modalities(spec, expected):
    assert parse_modalities(spec) == expected
    assert AdaptationConfig(modalities=spec).modalities == expected


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(modalities="t1n,dwi"), "unknown modalities"),
        (dict(modalities=()), "no modalities"),
        (dict(lora_rank=-1), "lora_rank"),
        (dict(lora_rank=2.0), "lora_rank"),
        (dict(lora_alpha=0.0), "lora_alpha"),
        (dict(lora_targets=("q", "out")), r"lora_targets q,out: unknown \['out'\]; expected among q, k, v, proj"),
        (dict(lora_targets=("q", "q")), "twice"),
        (dict(lora_targets=()), "no LoRA targets"),
        (dict(patch_embed_init="zeros"), "patch_embed_init"),
        (dict(trainable="everything"), "trainable 'everything': expected one of lora, patch_embed_only"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(AdaptationError, match=message):
        AdaptationConfig(**changes)


def test_no_lora_needs_no_targets():
    assert AdaptationConfig(lora_rank=0, lora_targets=()).lora_scale == 0.0


def test_metadata_round_trip():
    config = AdaptationConfig(
        modalities="t1n_x3",
        patch_embed_init="rgb_mean",
        lora_rank=8,
        lora_alpha=3.5,
        lora_targets=("k", "proj"),
        cross_slice=True,
        trainable="full",
    )
    metadata = config.to_metadata()
    assert all(isinstance(v, str) for v in metadata.values())
    assert AdaptationConfig.from_metadata({**metadata, "format_version": "1"}) == config


def test_incomplete_metadata_is_refused():
    metadata = AdaptationConfig().to_metadata()
    del metadata["lora_rank"]
    with pytest.raises(AdaptationError, match="lacks .*lora_rank"):
        AdaptationConfig.from_metadata(metadata)
