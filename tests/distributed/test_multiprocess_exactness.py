"""2 real processes (torchrun, gloo): 2 x batch 2 x GA 2 and 2 x batch 4 x GA 1 give the gradient of one process
seeing the same 8 samples as one batch, for every case of the matrix; a trainable loss parameter gets the same,
synchronised gradient. One launch runs every case (process start-up is the expensive part on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from exactness_cases import cases, ignored_labels, num_classes, reference_loss
from launching import launch, read_json_lines
from tiny_tasks import as_batch, reference_gradient, relative_error

pytestmark = pytest.mark.multiprocess

TOLERANCE = 1e-5
WORKER = Path(__file__).resolve().parent / "workers" / "exactness_worker.py"
CASES = cases()


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("exactness") / "gradients.pt"
    result = launch(WORKER, str(output), nproc=2, timeout=900)
    lines = read_json_lines(result.stdout)
    return torch.load(output, weights_only=False), lines


def test_two_processes_ran_data_parallel_without_being_told(two_process_run):
    """Plain torchrun on CPU: LossTrainingArguments chose use_cpu + gloo, so the Trainer wrapped the model in DDP
    (without them transformers 5 trains each process alone on its shard, silently)."""
    _, lines = two_process_run
    assert sorted(line["rank"] for line in lines) == [0, 1]
    for line in lines:
        assert line["world_size"] == 2 and line["process_group"] == 2
        assert line["wrapper"] == "DistributedDataParallel"
        assert line["distributed_type"].endswith("MULTI_CPU")
        assert line["use_cpu"] is True and line["ddp_backend"] == "gloo"


@pytest.mark.parametrize(("loss_type", "task"), CASES, ids=[f"{loss}-{task}" for loss, task in CASES])
def test_two_processes_match_one_process(two_process_run, loss_type, task):
    data, _ = two_process_run
    classes = num_classes(task, loss_type)
    examples = as_batch(task, 8, ignored=ignored_labels(loss_type, task), num_labels=classes)
    reference = reference_gradient(task, reference_loss(loss_type, task), examples, num_labels=classes)
    for configuration in ("2x2", "4x1"):
        key = f"{loss_type}|{task}|{configuration}"
        if key in data["skipped"]:
            pytest.skip(f"{key}: hf_losses.trainers.hidden_states is not there yet")
        assert relative_error(data["gradients"][key], reference) <= TOLERANCE, f"2 processes x {configuration}"


def test_trainable_loss_parameters_are_reduced_across_processes(two_process_run):
    """Uncertainty weights live in the loss, outside DDP: the trainer averages their gradients, so both
    configurations give the same model and loss-parameter gradients, and every rank keeps the same values."""
    data, _ = two_process_run
    gradients = data["gradients"]
    from hf_losses import get_loss

    kwargs = {
        "top_k": 2,
        "diversity_weight": 0.3,
        "weighting": "uncertainty",
        "initial_log_variance": 0.2,
        "item_embeddings": [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]],
    }
    task = "sequence_classification"
    examples = as_batch(task, 8)
    from tiny_tasks import build_model, flat_grad

    from hf_losses.tasks import build_task

    loss = get_loss("relevance_diversity", **kwargs)
    model = build_model(task)
    inputs = {k: v for k, v in examples.items() if k != "labels"}
    logits, labels = build_task(task, model).read(model(**inputs), examples)
    loss(logits, labels).backward()
    model_reference = flat_grad(model)
    loss_reference = torch.cat([p.grad.reshape(-1).double() for p in loss.parameters()])
    for configuration in ("2x2", "4x1"):
        assert relative_error(gradients[f"trainable|{configuration}|model_grad"], model_reference) <= TOLERANCE
        assert relative_error(gradients[f"trainable|{configuration}|loss_grad"], loss_reference) <= TOLERANCE
    expected_after = torch.cat([(p.detach() - 0.5 * p.grad).reshape(-1).double() for p in loss.parameters()])
    assert torch.allclose(gradients["trainable|2x2|params_after_step"], expected_after, atol=1e-6)


def test_components_are_averaged_across_processes(two_process_run):
    """Each process sees 4 of the 8 samples; the logged loss/<name> is the global mean over all 8."""
    from tiny_tasks import build_model

    from hf_losses import get_loss
    from hf_losses.tasks import build_task

    data, _ = two_process_run
    (entry,) = data["logs"]
    task = "sequence_classification"
    examples = as_batch(task, 8)
    model = build_model(task)
    loss = get_loss("0.3*cross_entropy+0.7*focal")
    with torch.no_grad():
        logits, labels = build_task(task, model).read(
            model(**{k: v for k, v in examples.items() if k != "labels"}), examples
        )
        total = loss(logits, labels)
    for name, value in loss.last_components.items():
        assert entry[f"loss/{name}"] == pytest.approx(float(value), rel=1e-5)
    assert entry["loss"] == pytest.approx(float(total), rel=1e-4)
