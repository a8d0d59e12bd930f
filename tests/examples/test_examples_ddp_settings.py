"""The examples set ``ddp_find_unused_parameters=False`` (transformers would ask DDP for True, its default for any
``PreTrainedModel`` without gradient checkpointing): that is right only while every trainable parameter of the
example's model reaches its outputs. Checked here on each example's model in one process; the 2-process launch in
``test_examples_accelerate_launch.py`` checks DDP's side (no reducer warning, no "Expected to have finished
reduction" error at the second step)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def medical_model(example):
    medical = example("medical_diagnosis")
    model = medical.TabularMLPForSequenceClassification(medical.TabularMLPConfig(num_features=10, num_labels=2))
    return model, {"features": torch.randn(4, 10)}


def segmentation_model(example):
    segmentation = example("segmentation")
    args = segmentation.SegmentationArguments()
    model = segmentation.SegformerForSemanticSegmentation(segmentation.segformer_config(args))
    return model, {"pixel_values": torch.randn(2, model.config.num_channels, args.tile_size, args.tile_size)}


def recommendation_model(example):
    recommendation = example("recommendation")
    data = SimpleNamespace(num_items=30, pad_id=30)  # what build_model reads of the data
    model = recommendation.build_model(data, recommendation.RecommendationArguments(max_length=12))
    return model, {"input_ids": torch.randint(0, 31, (2, 12))}


MODELS = {
    "medical_diagnosis": medical_model,
    "segmentation": segmentation_model,
    "recommendation": recommendation_model,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_example_does_not_ask_ddp_to_search_for_unused_parameters(example, name):
    assert example(name).DEFAULTS["ddp_find_unused_parameters"] is False


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_parameter_of_the_example_model_gets_a_gradient(example, name):
    torch.manual_seed(0)
    model, inputs = MODELS[name](example)
    model.train()
    model(**inputs).logits.float().pow(2).mean().backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not unused, f"{name}: parameters without gradient {unused}; set ddp_find_unused_parameters=True"
