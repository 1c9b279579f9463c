"""The training step's parts, pinned by hand-worked cases: model-frame transform, error clicks, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.model.frame import clicks_to_model_frame, target_to_low_res, to_model_frame
from sam_jax.training.losses import mask_loss, multimask_loss
from sam_jax.training.prompts import click_in_error


def test_model_frame_keeps_aspect_and_clears_padding():
    images = np.zeros((1, 8, 8, 1), np.float32)
    images[0, :4, :8] = 1.0  # a 4×8 valid region (rows × cols)
    images[0, 4:, :] = 99.0  # padding beyond valid_hw must not leak in
    out, scale = to_model_frame(jnp.asarray(images), jnp.array([[4, 8]]), 16)
    np.testing.assert_array_equal(scale[0], [2.0, 2.0])  # (x, y): longest side 8 → 16 on both axes
    out = np.asarray(out[0, ..., 0])
    assert np.allclose(out[:7, :], 1.0, atol=1e-6) and np.allclose(out[9:, :], 0.0, atol=1e-6)
    # (x, y) clicks scale like SAM's ResizeLongestSide: both coordinates by the same factor
    np.testing.assert_allclose(clicks_to_model_frame(jnp.array([[[3.0, 1.0]]]), scale), [[[6.0, 2.0]]])


def test_low_res_target_is_a_soft_downsampling():
    masks = np.zeros((1, 16, 16), np.uint8)
    masks[0, :8, :8] = 1  # a quarter of the 16×16 slice; the model frame is 16, its low-res grid 4×4
    low = np.asarray(target_to_low_res(jnp.asarray(masks), jnp.array([[16, 16]]), 16, low_res=4))[0]
    assert low.shape == (4, 4)
    assert abs(low[0, 0] - 1.0) < 1e-6  # inside, far from the edge
    np.testing.assert_allclose(low[3, :], 0.0, atol=1e-6)  # outside, far from the edge
    np.testing.assert_allclose(low[:, 3], 0.0, atol=1e-6)
    # Soft at the edge: a triangle filter of half-width 4 input pixels centred on 6 weighs pixels 2…9 by
    # (1, 3, 5, 7, 7, 5, 3, 1)/32; the mask covers 2…7, 28/32 = 0.875 along each axis.
    assert abs(low[1, 1] - 0.875**2) < 1e-6
    assert abs(low.sum() - 64 / 16) < 1e-4  # the antialiasing filter keeps the area


@pytest.mark.slow
def test_click_in_error_goes_to_the_larger_error_with_the_right_label():
    truth = np.zeros((2, 8, 8), np.float32)
    logits = -np.ones((2, 8, 8), np.float32)
    truth[0, 2:6, 2:6] = 1  # sample 0: a 16-pixel miss and a 1-pixel false alarm → positive click in the miss
    logits[0, 0, 7] = 1
    truth[1] = 1
    logits[1] = 1  # sample 1: perfect → padding click
    coords, labels = click_in_error(jax.random.PRNGKey(0), jnp.asarray(logits), jnp.asarray(truth), 32)
    assert labels.tolist() == [[1], [-1]]
    col, row = (np.asarray(coords[0, 0]) / 4 - 0.5).astype(int)  # model-frame pixels → low-res cell
    assert 2 <= row < 6 and 2 <= col < 6
    # false alarm larger than the miss → negative click on the false alarm
    coords, labels = click_in_error(jax.random.PRNGKey(1), jnp.asarray(-logits[:1]), jnp.asarray(truth[:1]), 32)
    col, row = (np.asarray(coords[0, 0]) / 4 - 0.5).astype(int)
    assert labels.tolist() == [[0]] and not (2 <= row < 6 and 2 <= col < 6)


def test_losses_on_hand_worked_masks():
    target = jnp.array([[[1.0, 0.0]]])
    confident = jnp.array([[[20.0, -20.0]]])
    assert float(mask_loss("bce", confident, target)[0]) < 1e-8
    assert abs(float(mask_loss("bce", jnp.zeros((1, 1, 2)), target)[0]) - np.log(2)) < 1e-6
    assert float(mask_loss("dice", confident, target)[0]) < 1e-6
    # multimask: only the best of the candidates counts
    candidates = jnp.stack([-confident, confident, jnp.zeros_like(confident)], axis=1)
    assert float(multimask_loss("bce", candidates, target)[0]) < 1e-8


def test_the_best_validation_checkpoint_is_kept_and_found(tmp_path):
    """Scores 0.2, 0.9, 0.1, 0.4 with one latest checkpoint kept: step 2 survives as the best and restores as saved
    (orbax writes a step's metrics only when the manager tracks a best metric)."""
    import grain

    from sam_jax.training import checkpoint

    iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
    mngr = checkpoint.manager(tmp_path, keep=1)
    for step, dice in enumerate([0.2, 0.9, 0.1, 0.4], start=1):
        state = {"trainable": {"w": jnp.full((3,), float(step))}, "step": step}
        checkpoint.save(mngr, step, state, iterator, metrics={checkpoint.BEST_METRIC: dice})
    mngr.wait_until_finished()
    assert sorted(mngr.all_steps()) == [2, 4]
    assert checkpoint.best_step(mngr) == 2
    restored = checkpoint.restore_state(mngr, 2, state)
    np.testing.assert_array_equal(restored["trainable"]["w"], np.full(3, 2.0))
    mngr.close()


def _steps(cadence, rule):
    return [s for s in range(1, cadence.total_steps + 1) if rule(s)]


def test_cadence_by_hand_on_epochs_of_three_steps():
    """Epochs of 3 steps (3 slices, batch 1), 7 steps, a log line every 2, a checkpoint every 5."""
    from sam_jax.training.cadence import Cadence
    from sam_jax.training.config import TrainConfig

    cfg = TrainConfig(steps=7, batch_size=1, log_every=2, checkpoint_every=5)
    per_epoch = Cadence.of(cfg, slices_per_epoch=3, validation=True)
    assert per_epoch.total_steps == 7
    assert _steps(per_epoch, per_epoch.validates) == [3, 6, 7]  # two epoch ends, and the last step
    assert _steps(per_epoch, per_epoch.logs) == [2, 3, 4, 6, 7]  # every 2nd, and every validation's Dice
    assert _steps(per_epoch, per_epoch.checkpoints) == [3, 5, 6, 7]  # the 5th, the last, every validation
    every_2 = Cadence.of(cfg.replace(eval_every=2), slices_per_epoch=3, validation=True)
    assert _steps(every_2, every_2.validates) == [2, 4, 6, 7]
    assert _steps(every_2, every_2.checkpoints) == [2, 4, 5, 6, 7]
    unvalidated = Cadence.of(cfg, slices_per_epoch=3, validation=False)
    assert _steps(unvalidated, unvalidated.validates) == []
    assert _steps(unvalidated, unvalidated.logs) == [2, 4, 6]
    assert _steps(unvalidated, unvalidated.checkpoints) == [5, 7]


def test_cadence_when_epochs_end_inside_a_batch():
    """5 slices per epoch, batches of 2, 2.5 epochs: 12.5 slices → 7 steps. Step s ends at slice 2s: the 1st epoch
    ends in step 3 (slices 5-6), the 2nd in step 5 (slices 9-10); step 7 is the last."""
    from sam_jax.training.cadence import Cadence
    from sam_jax.training.config import TrainConfig

    cadence = Cadence.of(TrainConfig(steps=0, epochs=2.5, batch_size=2), slices_per_epoch=5, validation=True)
    assert cadence.total_steps == 7
    assert _steps(cadence, cadence.validates) == [3, 5, 7]
    assert cadence.epoch(7) == 14 / 5
