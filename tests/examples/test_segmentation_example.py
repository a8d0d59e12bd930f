"""examples/segmentation: stardist tiles with a held-out region, SegFormer from a config, smoke comparison."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from example_runs import SMOKE_FLAGS

from hf_losses.cli.main import main as cli_main
from hf_losses.cli.plotting import curve_keys, read_log_history


def test_image_and_mask_are_the_real_stardist_nuclei(example):
    image, mask = example("segmentation").stardist_image_and_mask("nuclei")
    assert image.shape == mask.shape == (512, 512)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert set(np.unique(mask)) == {0, 1}
    assert 0.1 < mask.mean() < 0.3  # about a fifth of the pixels are nuclei
    # nuclei are brighter than background: the mask belongs to this image
    assert image[mask == 1].mean() > image[mask == 0].mean() + 0.1


def test_three_class_mask_splits_nuclei_into_interior_and_a_rare_boundary(example):
    segmentation = example("segmentation")
    _, binary = segmentation.stardist_image_and_mask("nuclei")
    _, mask = segmentation.stardist_image_and_mask("nuclei_and_boundaries")
    assert set(np.unique(mask)) == {0, 1, 2}
    np.testing.assert_array_equal(mask > 0, binary == 1)  # same nuclei, boundary carved out of them
    assert 0.01 < np.mean(mask == 2) < 0.06


def test_instance_boundaries_hand_computed(example):
    instances = np.array([[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 2], [0, 1, 1, 1, 2], [0, 0, 0, 0, 0]])
    expected = np.array(
        [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 1], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=bool
    )
    np.testing.assert_array_equal(example("segmentation").instance_boundaries(instances), expected)


def test_tiles_cover_the_requested_columns_only(example):
    segmentation = example("segmentation")
    image = np.arange(16 * 16, dtype=np.float32).reshape(16, 16)
    mask = (image % 2).astype(np.int64)
    pixels, labels = segmentation.tiles(image, mask, size=4, stride=4, x_start=8, x_stop=16)
    assert pixels.shape == (8, 1, 4, 4) and labels.shape == (8, 4, 4)
    columns = pixels.astype(np.int64) % 16
    assert columns.min() == 8 and columns.max() == 15
    np.testing.assert_array_equal(labels, (pixels[:, 0] % 2).astype(np.int64))


def test_held_out_tiles_never_overlap_training_tiles(example):
    segmentation = example("segmentation")
    args = segmentation.SegmentationArguments()
    train, test = segmentation.load_data(args)
    assert len(train) == 15 * 11 and len(test) == 8 * 2
    image, _ = segmentation.stardist_image_and_mask(args.targets)
    split = 512 - args.held_out_width
    # every training tile is a crop of the left region, every held-out tile one of the right region
    left, right = image[:, :split], image[:, split:]
    first_train, first_test = train[0]["pixel_values"][0].numpy(), test[0]["pixel_values"][0].numpy()
    np.testing.assert_array_equal(first_train, left[:64, :64])
    np.testing.assert_array_equal(first_test, right[:64, :64])


def test_predicted_masks_upsample_quarter_resolution_logits(example):
    segmentation = example("segmentation")
    logits = torch.zeros(2, 2, 4, 4)
    logits[:, 1, :2] = 5.0  # nucleus in the top half
    masks = segmentation.predicted_masks(logits, torch.zeros(2, 16, 16, dtype=torch.long))
    assert masks.shape == (2, 16, 16)
    assert masks[:, :6].eq(1).all() and masks[:, 10:].eq(0).all()


def test_smoke_run_compares_ce_plus_dice_with_ce(example, tmp_path):
    segmentation = example("segmentation")
    table = segmentation.main(
        [
            "--output_dir",
            str(tmp_path),
            "--max_train_samples",
            "4",
            "--max_eval_samples",
            "2",
            "--per_device_train_batch_size",
            "2",
            *SMOKE_FLAGS,
        ]
    )
    rows = table.splitlines()[2:]
    assert [row.split("|")[1].strip() for row in rows] == ["cross_entropy", "0.5*cross_entropy+0.5*dice"]
    header = [cell.strip() for cell in table.splitlines()[0].split("|")[1:-1]]
    assert header[1:5] == ["Dice nucleus", "Dice boundary", "mean Dice", "mean IoU"]
    for row in rows:
        nucleus, boundary, dice, iou = (float(cell) for cell in row.split("|")[2:6])
        assert dice == pytest.approx((nucleus + boundary) / 2, abs=1e-4)
        assert 0.0 <= iou <= dice <= 1.0  # IoU <= Dice always
    assert (tmp_path / "loss_curves.png").is_file()
    loss_config = json.loads((tmp_path / "0.5_cross_entropy_0.5_dice" / "loss_config.json").read_text())
    assert loss_config["loss_task"] == "semantic_segmentation"
    # every run folder can be plotted with `hf-losses plot`; the composite logs each component
    history = read_log_history(tmp_path / "0.5_cross_entropy_0.5_dice")
    assert {"loss/cross_entropy", "loss/dice"} <= set(curve_keys(history)["train"])
    assert cli_main(["plot", str(tmp_path / "0.5_cross_entropy_0.5_dice")]) == 0
    assert (tmp_path / "0.5_cross_entropy_0.5_dice" / "loss_curves.png").is_file()
