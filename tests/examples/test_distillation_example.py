"""examples/distillation: a fine-tuned MiniLM taught to a 2-layer MiniLM on the demo's imbalanced reviews, and a
4x128 Llama taught to a 2x64 one on convention speeches (or Hamlet); their data, the student's initialisation, and
smoke runs through ``main([...])`` (one process; the 2-process launches: test_distillation_example_launch.py)."""

from __future__ import annotations

import json

import pytest
import torch
from example_runs import SMOKE_FLAGS, load_example

#: one smoke run of each example, shared by the tests that read its output
CLASSIFICATION_SMOKE = [
    "--max_train_samples",
    "16",
    "--max_eval_samples",
    "8",
    "--per_device_train_batch_size",
    "4",
    "--max_length",
    "24",
    "--timing_repeats",
    "1",
]
CAUSAL_LM_SMOKE = [
    "--max_train_samples",
    "8",
    "--max_eval_samples",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--vocab_size",
    "300",
    "--block_size",
    "32",
]


def classification():
    return load_example("distillation", "classification")


def causal_lm():
    return load_example("distillation", "causal_lm")


def table_rows(table: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of a Markdown table's body rows."""
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


# ------------------------------------------------------------------------------------------ classification
def test_classification_uses_the_demos_reviews_and_split():
    from hf_losses.cli import demo

    args = classification().ClassificationDistillationArguments()
    assert classification().load_reviews(args) == demo.load_reviews(demo.DemoArguments())


def test_student_keeps_the_embeddings_and_first_layers_of_the_pretrained_model(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=4, num_attention_heads=2, intermediate_size=16, num_labels=2
    )
    teacher = BertForSequenceClassification(config)
    reference = {name: value.clone() for name, value in teacher.state_dict().items()}
    student = classification().cut_to_first_layers(teacher, 2)
    assert len(student.bert.encoder.layer) == student.config.num_hidden_layers == 2
    kept = student.state_dict()
    assert set(kept) == {
        name for name in reference if not name.startswith(("bert.encoder.layer.2.", "bert.encoder.layer.3."))
    }
    for name, value in kept.items():
        torch.testing.assert_close(value, reference[name], rtol=0, atol=0)
    student.save_pretrained(tmp_path)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path)
    assert len(reloaded.bert.encoder.layer) == 2


@pytest.mark.parametrize("layers", [0, 5])
def test_student_layers_outside_the_teachers_depth_are_refused(layers):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=4, num_attention_heads=2, intermediate_size=8)
    with pytest.raises(ValueError, match=r"student_layers must be in \[1, 4\]"):
        classification().cut_to_first_layers(BertForSequenceClassification(config), layers)


def test_classification_defaults_distil_mostly_soft_targets_from_a_class_weighted_teacher():
    example = classification()
    training_args, args = example.parse_arguments(["--output_dir", "unused"])
    assert (training_args.loss_type, training_args.loss_kwargs) == ("distillation", example.DEFAULT_DISTILLATION_KWARGS)
    assert training_args.teacher_model is None and args.student_layers == 2
    assert example.teacher_class_weights(args.teacher_class_weights) == "balanced"
    assert example.teacher_class_weights("none") is None


def test_classification_smoke_run_reports_teacher_and_three_students_and_names_the_teacher(tmp_path, capsys):
    table = classification().main(["--output_dir", str(tmp_path), *CLASSIFICATION_SMOKE, *SMOKE_FLAGS])
    distillation = "distillation(temperature=2, alpha=0.9)"
    rows = table_rows(table)
    assert list(rows) == [
        "teacher (6 layers): cross_entropy + balanced class weights",
        "student (2 layers): cross_entropy",
        f"student (2 layers): {distillation}",
        f"student (2 layers): {distillation} + balanced class weights",
    ]
    for cells in rows.values():  # accuracy, macro-F1, minority recall, parameters, ms/review, train time
        assert "n/a" not in cells and all(float(cell) >= 0 for cell in cells)
    parameters = [float(cells[3]) for cells in rows.values()]
    assert parameters[0] == pytest.approx(22.714, abs=1e-3) and parameters[1:] == [pytest.approx(15.616, abs=1e-3)] * 3
    results = (tmp_path / "results.md").read_text()
    assert table in results and "world size 1" in results and table in capsys.readouterr().out
    teacher_dir = tmp_path / "teacher"
    assert (teacher_dir / "model.safetensors").is_file()
    assert json.loads((teacher_dir / "config.json").read_text())["num_hidden_layers"] == 6
    for folder, teacher in [
        ("student_cross_entropy", None),
        ("student_distillation_temperature_2_alpha_0.9", str(teacher_dir)),
        ("student_distillation_temperature_2_alpha_0.9_balanced_class_weights", str(teacher_dir)),
    ]:
        loss_config = json.loads((tmp_path / folder / "loss_config.json").read_text())
        assert loss_config.get("teacher_model") == teacher
        assert json.loads((tmp_path / folder / "config.json").read_text())["num_hidden_layers"] == 2
    weighted = json.loads((tmp_path / folder / "loss_config.json").read_text())
    assert weighted["class_weights"] == "balanced" and weighted["loss_type"] == "distillation"
    assert "teacher" in (tmp_path / folder / "README.md").read_text()


# ------------------------------------------------------------------------------------------ causal LM
@pytest.mark.parametrize(("corpus", "first_words"), [("convention", "Thank you."), ("hamlet", "The Tragedy of Hamlet")])
def test_every_tenth_passage_of_whole_lines_is_held_out(corpus, first_words):
    example = causal_lm()
    lines = example.read_corpus(corpus)
    training, held_out = example.split_passages(lines, passage_words=300, held_out_every=10)
    assert len(held_out) == (len(training) + len(held_out)) // 10
    assert not set(training) & set(held_out)
    assert training[0].startswith(first_words)
    passages = [*training, *held_out]
    assert sorted(line for passage in passages for line in passage.split("\n")) == sorted(lines)  # whole lines
    assert sum(len(passage.split()) < 300 for passage in passages) <= 1  # the last one may be short


def test_passages_reach_the_asked_number_of_words_with_whole_lines():
    lines = ["a b", "c d e", "f", "g h i j", "k"]
    training, held_out = causal_lm().split_passages(lines, passage_words=3, held_out_every=2)
    assert (training, held_out) == (["a b\nc d e", "k"], ["f\ng h i j"])


def test_unknown_corpus_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"corpus must be one of \['convention', 'hamlet'\]"):
        causal_lm().read_corpus("shakespeare")


def test_blocks_are_the_passages_tokens_with_eos_between_them():
    example = causal_lm()
    tokenizer = example.train_tokenizer(["to be or not to be", "that is the question"] * 10, vocab_size=60)
    blocks = example.token_blocks(tokenizer, ["to be or not to be", "that is the question"], block_size=5)
    eos = tokenizer.eos_token_id
    ids = tokenizer("to be or not to be")["input_ids"] + [eos] + tokenizer("that is the question")["input_ids"] + [eos]
    assert blocks["input_ids"] == [ids[start : start + 5] for start in range(0, len(ids) - 4, 5)]
    assert blocks["labels"] == blocks["input_ids"]


def test_causal_lm_defaults_distil_a_4x128_teacher_into_a_2x64_student():
    example = causal_lm()
    training_args, args = example.parse_arguments(["--output_dir", "unused"])
    assert training_args.loss_type == "causal_lm_distillation"
    assert training_args.loss_kwargs == example.DEFAULT_DISTILLATION_KWARGS
    sizes = (args.teacher_layers, args.teacher_hidden_size, args.student_layers, args.student_hidden_size)
    assert sizes == (4, 128, 2, 64)


def test_causal_lm_smoke_run_reports_teacher_and_two_students_and_names_the_teacher(tmp_path):
    table = causal_lm().main(["--output_dir", str(tmp_path), *CAUSAL_LM_SMOKE, *SMOKE_FLAGS])
    distillation = "causal_lm_distillation(temperature=1, alpha=0.5)"
    rows = table_rows(table)
    assert list(rows) == ["teacher (4x128): causal_lm", "student (2x64): causal_lm", f"student (2x64): {distillation}"]
    for cells in rows.values():  # NLL, perplexity, token accuracy, parameters, train time
        assert "n/a" not in cells and all(float(cell) >= 0 for cell in cells)
        assert float(cells[1]) == pytest.approx(2.718281828 ** float(cells[0]), rel=1e-3)
    teacher_parameters, student_parameters = (
        float(rows["teacher (4x128): causal_lm"][3]),
        float(rows[f"student (2x64): {distillation}"][3]),
    )
    assert teacher_parameters > 3 * student_parameters
    assert "world size 1" in (tmp_path / "results.md").read_text()
    teacher_dir = tmp_path / "teacher"
    assert (teacher_dir / "tokenizer.json").is_file()  # a later run can reuse it with --teacher_model
    assert "teacher_model" not in json.loads((tmp_path / "student_causal_lm" / "loss_config.json").read_text())
    loss_config = json.loads(
        (tmp_path / "student_causal_lm_distillation_temperature_1_alpha_0.5" / "loss_config.json").read_text()
    )
    assert loss_config["teacher_model"] == str(teacher_dir) and loss_config["loss_type"] == "causal_lm_distillation"
    # a second run taught by the saved teacher: its tokenizer is reused (same vocabulary), it is not trained again
    again = tmp_path / "again"
    table = causal_lm().main(
        ["--output_dir", str(again), "--teacher_model", str(teacher_dir), *CAUSAL_LM_SMOKE, *SMOKE_FLAGS]
    )
    rows = table_rows(table)
    assert list(rows)[0] == f"teacher (4x128): given, {teacher_dir}" and rows[list(rows)[0]][-1] == "0.0"
    assert not (again / "teacher").exists()
    loss_config = json.loads(
        (again / "student_causal_lm_distillation_temperature_1_alpha_0.5" / "loss_config.json").read_text()
    )
    assert loss_config["teacher_model"] == str(teacher_dir)
