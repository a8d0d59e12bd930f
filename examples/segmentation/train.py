"""Nuclei segmentation: ``0.5*cross_entropy + 0.5*dice`` against cross-entropy alone.

The real fluorescence image of cell nuclei (512x512) and its instance mask shipped inside the ``stardist``
package, read with ``tifffile``. The instance mask becomes three classes, as in nuclei segmentation practice
(the boundary class is what separates touching nuclei): background, nucleus interior (17% of the pixels) and
nucleus boundary (3%, the rare class); ``--targets nuclei`` gives plain background / nucleus instead. The image
is cut into tiles; the right-most ``held_out_width`` columns are never seen in training and are tiled for
evaluation. A small SegFormer built from a config (random weights, one input channel) is trained once per loss;
Dice and IoU per class are computed on the held-out tiles with the ``dice_iou`` metric shipped with hf-losses.

    accelerate launch examples/segmentation/train.py
    accelerate launch examples/segmentation/train.py --loss_type "0.5*cross_entropy+0.5*lovasz"
    accelerate launch examples/segmentation/train.py --tune_trials 6            # optuna over the Dice weight
    python examples/segmentation/train.py --max_train_samples 8 --max_steps 2    # smoke test
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from transformers import HfArgumentParser, SegformerConfig, SegformerForSemanticSegmentation, set_seed

TARGETS = {"nuclei_and_boundaries": ["background", "nucleus", "boundary"], "nuclei": ["background", "nucleus"]}


@dataclass
class SegmentationArguments:
    """Tiles, model size and comparison (training and loss flags come from LossTrainingArguments)."""

    targets: Literal["nuclei_and_boundaries", "nuclei"] = field(
        default="nuclei_and_boundaries",
        metadata={
            "help": "Classes to segment: background / nucleus / boundary (default; the boundary class is rare), or "
            "background / nucleus."
        },
    )
    tile_size: int = field(default=64, metadata={"help": "Side of the square tiles (pixels)."})
    train_stride: int = field(
        default=32, metadata={"help": "Step between training tiles (overlapping when < tile_size)."}
    )
    held_out_width: int = field(
        default=128, metadata={"help": "Right-most columns of the image kept for evaluation (never trained on)."}
    )
    hidden_sizes: str = field(default="16,32,64,128", metadata={"help": "SegFormer widths of the 4 stages."})
    decoder_hidden_size: int = field(default=64, metadata={"help": "SegFormer decoder width."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Cut the training tiles (smoke tests)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cut the held-out tiles (smoke tests)."})
    baseline_loss_type: str = field(default="cross_entropy", metadata={"help": "The loss compared against."})
    tune_trials: int = field(
        default=0,
        metadata={
            "help": "Run this many optuna trials over the Dice weight (or the loss's parameter) first, objective "
            "held-out Dice, then compare with the best."
        },
    )
    save_models: bool = field(default=True, metadata={"help": "Save each trained model in its run folder."})


DEFAULTS: dict[str, Any] = {
    "output_dir": "runs/segmentation",
    "loss_type": "0.5*cross_entropy+0.5*dice",
    "num_train_epochs": 15.0,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "learning_rate": 2e-3,
    "weight_decay": 0.01,
    "logging_steps": 10,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
    "seed": 42,
    # every parameter gets a gradient at every step: without this, transformers asks DDP for
    # find_unused_parameters=True (its default for any PreTrainedModel without gradient checkpointing), which costs
    # an extra traversal of the autograd graph per step and makes every rank warn about it
    "ddp_find_unused_parameters": False,
}


# ------------------------------------------------------------------------------------------ data
def instance_boundaries(instances: np.ndarray) -> np.ndarray:
    """Pixels of an instance with a 4-neighbour of another label (background or another instance)."""
    height, width = instances.shape
    padded = np.pad(instances, 1, mode="edge")
    differs = np.zeros(instances.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        differs |= padded[dy : dy + height, dx : dx + width] != instances
    return differs & (instances > 0)


def stardist_image_and_mask(targets: str = "nuclei_and_boundaries") -> tuple[np.ndarray, np.ndarray]:
    """The 2-D nuclei image (float32, normalised to ~[0, 1] by its 1st/99.8th percentiles) and its class mask:
    0 background, 1 nucleus, and with ``targets="nuclei_and_boundaries"`` 2 = nucleus boundary."""
    import tifffile

    spec = importlib.util.find_spec("stardist")  # found without importing it: we only read its data files
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "this example reads the nuclei image shipped by stardist: pip install --no-deps stardist"
        )
    folder = Path(list(spec.submodule_search_locations)[0], "data", "images")
    image = tifffile.imread(folder / "img2d.tif").astype(np.float32)
    instances = tifffile.imread(folder / "mask2d.tif").astype(np.int64)
    low, high = np.percentile(image, (1.0, 99.8))
    image = np.clip((image - low) / (high - low + 1e-8), 0.0, 1.0).astype(np.float32)
    mask = (instances > 0).astype(np.int64)
    if targets == "nuclei_and_boundaries":
        mask[instance_boundaries(instances)] = 2
    elif targets != "nuclei":
        raise ValueError(f"targets must be one of {list(TARGETS)}, got {targets!r}.")
    return image, mask


def tiles(
    image: np.ndarray,
    mask: np.ndarray,
    size: int,
    stride: int,
    x_start: int,
    x_stop: int,
) -> tuple[np.ndarray, np.ndarray]:
    """All ``size`` x ``size`` tiles whose columns lie in ``[x_start, x_stop)``, every ``stride`` pixels."""
    height = image.shape[0]
    if x_stop - x_start < size:
        raise ValueError(f"a region {x_stop - x_start} pixels wide cannot hold {size}-pixel tiles.")
    pixels, labels = [], []
    for y in range(0, height - size + 1, stride):
        for x in range(x_start, x_stop - size + 1, stride):
            pixels.append(image[None, y : y + size, x : x + size])
            labels.append(mask[y : y + size, x : x + size])
    return np.stack(pixels), np.stack(labels)


def load_data(args: SegmentationArguments) -> tuple[Any, Any]:
    """Training tiles from the left part of the image, held-out tiles (non-overlapping) from the right part."""
    from datasets import Dataset

    image, mask = stardist_image_and_mask(args.targets)
    split = image.shape[1] - args.held_out_width
    train_x, train_y = tiles(image, mask, args.tile_size, args.train_stride, 0, split)
    test_x, test_y = tiles(image, mask, args.tile_size, args.tile_size, split, image.shape[1])
    train_x, train_y = train_x[: args.max_train_samples], train_y[: args.max_train_samples]
    test_x, test_y = test_x[: args.max_eval_samples], test_y[: args.max_eval_samples]
    train = Dataset.from_dict({"pixel_values": train_x, "labels": train_y}).with_format("torch")
    test = Dataset.from_dict({"pixel_values": test_x, "labels": test_y}).with_format("torch")
    return train, test


# ------------------------------------------------------------------------------------------ model & metrics
def segformer_config(args: SegmentationArguments) -> SegformerConfig:
    label_names = TARGETS[args.targets]
    hidden_sizes = [int(size) for size in args.hidden_sizes.split(",")]
    return SegformerConfig(
        num_channels=1,
        num_encoder_blocks=4,
        depths=[1, 1, 1, 1],
        sr_ratios=[8, 4, 2, 1],
        hidden_sizes=hidden_sizes,
        num_attention_heads=[1, 1, 2, 4],
        decoder_hidden_size=args.decoder_hidden_size,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
    )


def predicted_masks(logits: Any, labels: torch.Tensor) -> torch.Tensor:
    """SegFormer predicts at 1/4 resolution: upsample (bilinear, as its own loss does) then argmax per pixel."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    logits = torch.nn.functional.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)


def make_compute_metrics(label_names: list[str]):
    """Dice and IoU of each class over all held-out pixels, and their means over the foreground classes (the
    ``dice_iou`` metric module shipped with hf-losses)."""
    from hf_losses.metrics import load_metric

    metric = load_metric("dice_iou")

    def compute_metrics(prediction: Any) -> dict[str, float]:
        result = metric.compute(
            predictions=list(prediction.predictions),
            references=list(prediction.label_ids),
            num_classes=len(label_names),
        )
        named = {"dice": result["dice"], "iou": result["iou"]}  # means over the foreground classes
        for index, name in enumerate(label_names):
            named[f"dice_{name}"] = result[f"dice_{index}"]
            named[f"iou_{name}"] = result[f"iou_{index}"]
        return named

    return compute_metrics


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> str:
    from hf_losses.cli.comparison import run_comparison
    from hf_losses.trainers import LossTrainer, LossTrainingArguments

    parser = HfArgumentParser((LossTrainingArguments, SegmentationArguments))
    parser.set_defaults(**DEFAULTS)
    training_args, args = parser.parse_args_into_dataclasses(args=argv)
    train_dataset, test_dataset = load_data(args)
    config = segformer_config(args)
    label_names = TARGETS[args.targets]

    def model_init(trial: Any = None) -> SegformerForSemanticSegmentation:
        set_seed(training_args.seed)
        return SegformerForSemanticSegmentation(config)

    def make_trainer(run_args: Any) -> Any:
        return LossTrainer(
            model_init=model_init,
            args=run_args,
            train_dataset=train_dataset,
            eval_dataset=test_dataset,
            compute_metrics=make_compute_metrics(label_names),
            preprocess_logits_for_metrics=predicted_masks,
        )

    held_out = np.concatenate([labels.numpy().reshape(-1) for labels in test_dataset["labels"]])
    shares = ", ".join(f"{name} {np.mean(held_out == index):.1%}" for index, name in enumerate(label_names))
    intro = (
        f"stardist nuclei image, {args.tile_size}x{args.tile_size} tiles: {len(train_dataset)} training tiles "
        f"(stride {args.train_stride}) from the left part, {len(test_dataset)} held-out tiles from the right-most "
        f"{args.held_out_width} columns (pixels: {shares}). SegFormer ({config.hidden_sizes}) from a config, "
        f"{training_args.num_train_epochs:g} epochs, seed {training_args.seed}. Dice and IoU over all held-out "
        f"pixels, per class and averaged over the foreground classes."
    )
    columns = [(f"eval_dice_{name}", f"Dice {name}") for name in label_names[1:]]
    columns += [("eval_dice", "mean Dice"), ("eval_iou", "mean IoU")]
    return run_comparison(
        make_trainer,
        training_args,
        baseline_loss_type=args.baseline_loss_type,
        title="Nuclei segmentation",
        intro=intro,
        columns=columns,
        plot_metrics=("eval_dice", f"eval_dice_{label_names[-1]}"),
        tune_trials=args.tune_trials,
        objective_metric="dice",
        save_models=args.save_models,
        model_card={"dataset": "stardist 2-D nuclei image", "tasks": "image-segmentation"},
    )


if __name__ == "__main__":
    main()
    from hf_losses.distributed import shut_down

    shut_down()  # barrier + destroy_process_group: no abort at exit under 2 processes
