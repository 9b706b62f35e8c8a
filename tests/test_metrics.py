"""The shipped `evaluate` metric modules: hand-computed cases and independent formulas, offline loading, two
processes loading at once, and the Trainer's `compute_metrics`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import f1_score
from transformers import EvalPrediction

from hf_centered.metrics import METRICS_DIR, available_metrics, classification_metrics, compute_metrics, load_metric

HUB_METRIC_IDS = ["accuracy", "f1", "mean_iou", "perplexity", "seqeval", "squad"]


def test_the_shipped_metrics_are_the_hub_ids_and_load_once_per_process():
    assert available_metrics() == HUB_METRIC_IDS
    for metric_id in HUB_METRIC_IDS:
        metric = load_metric(metric_id)
        # The module's name is what a model card's model-index reports as the metric type.
        assert metric.name == metric_id
        assert metric.description.strip() and metric.citation.strip()
        assert load_metric(metric_id) is metric


def test_a_failed_compute_leaves_the_shared_module_usable():
    accuracy = load_metric("accuracy")  # the one instance every caller of the process gets
    with pytest.raises(ValueError, match="Mismatch in the number of predictions"):
        accuracy.compute(predictions=[0, 1], references=[0])
    assert accuracy.compute(predictions=[1, 0], references=[1, 1]) == {"accuracy": 0.5}


def test_an_unknown_metric_is_one_value_error_naming_the_available_ones():
    with pytest.raises(ValueError, match=r"'rouge'.*accuracy, f1, mean_iou, perplexity, seqeval, squad"):
        load_metric("rouge")


def test_accuracy_counts_matches_by_hand():
    accuracy = load_metric("accuracy")
    references, predictions = [0, 1, 2, 0, 1, 2], [0, 1, 1, 2, 1, 0]  # positions 0, 1 and 4 are right
    assert accuracy.compute(predictions=predictions, references=references) == {"accuracy": 0.5}
    assert accuracy.compute(predictions=predictions, references=references, normalize=False) == {"accuracy": 3.0}
    weights = [0.5, 2.0, 0.7, 0.5, 9.0, 0.4]
    weighted = accuracy.compute(predictions=predictions, references=references, sample_weight=weights)
    assert weighted["accuracy"] == pytest.approx((0.5 + 2.0 + 9.0) / sum(weights))
    # Multilabel: a sample counts only if all its labels match (here the first and the third).
    multilabel = load_metric("accuracy", "multilabel")
    result = multilabel.compute(
        predictions=[[0, 1, 1], [1, 1, 0], [0, 0, 1]], references=[[0, 1, 1], [0, 1, 0], [0, 0, 1]]
    )
    assert result["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("average", ["macro", "micro", "weighted", None])
def test_f1_matches_scikit_learn(average):
    generator = np.random.default_rng(3)
    references, predictions = generator.integers(0, 5, size=37), generator.integers(0, 5, size=37)
    result = load_metric("f1").compute(predictions=predictions, references=references, average=average)
    np.testing.assert_allclose(result["f1"], f1_score(references, predictions, average=average), rtol=1e-12)


def test_f1_binary_by_hand():
    # pos_label 1: one true positive (position 3), one false positive (2), one false negative (1): P = R = F1 = 1/2.
    result = load_metric("f1").compute(predictions=[0, 0, 1, 1, 0], references=[0, 1, 0, 1, 0])
    assert result == {"f1": 0.5}
    # pos_label 0: TP 2 (0, 4), FP 1 (1), FN 1 (2): P = R = 2/3.
    result = load_metric("f1").compute(predictions=[0, 0, 1, 1, 0], references=[0, 1, 0, 1, 0], pos_label=0)
    assert result["f1"] == pytest.approx(2 / 3)


def test_classification_metrics_keep_their_keys_and_values():
    # Class 0: P 1/1, R 1/2 → F1 2/3; class 1: P 2/3, R 2/2 → 4/5; class 2: P 1/1, R 1/1 → 1. Accuracy 4/5.
    references, predictions = [0, 0, 1, 1, 2], [0, 1, 1, 1, 2]
    result = classification_metrics(predictions, references)
    assert set(result) == {"accuracy", "f1_macro"}
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["f1_macro"] == pytest.approx((2 / 3 + 4 / 5 + 1) / 3)
    logits = np.eye(3)[predictions] * 2.0 - 1.0
    from_logits = compute_metrics(
        EvalPrediction(predictions=(logits, np.zeros((5, 2, 4))), label_ids=np.array(references))
    )
    assert from_logits == result
    # A class that is never predicted scores 0, without scikit-learn's warning (the f1 module's zero_division).
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndefinedMetricWarning)
        assert classification_metrics([0, 0], [0, 1]) == {"accuracy": 0.5, "f1_macro": pytest.approx(1 / 3)}


def test_seqeval_entity_scores_by_hand():
    references = [
        ["B-PER", "I-PER", "O", "B-LOC", "O"],  # PER(0-1), LOC(3)
        ["B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],  # ORG(0-2), PER(4)
        ["O", "O", "O"],
    ]
    predictions = [
        ["B-PER", "I-PER", "O", "B-ORG", "O"],  # PER right; ORG(3) is not the LOC
        ["B-ORG", "I-ORG", "O", "O", "B-PER"],  # ORG(0-1) has the wrong span; PER right
        ["B-MISC", "I-MISC", "O"],  # an entity that is not there
    ]
    result = load_metric("seqeval").compute(predictions=predictions, references=references, zero_division=0)
    # 4 reference entities, 5 predicted, 2 found: P 2/5, R 2/4.
    assert result["overall_precision"] == pytest.approx(0.4)
    assert result["overall_recall"] == pytest.approx(0.5)
    assert result["overall_f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)
    assert result["overall_accuracy"] == pytest.approx(9 / 13)  # wrong tokens: the LOC, the third ORG, two MISC
    assert result["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "number": 2}
    assert result["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert result["ORG"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 1}
    assert result["MISC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "number": 0}


def test_seqeval_default_mode_reads_an_entity_from_i_after_o_and_strict_iob2_does_not():
    references, predictions = [["O", "B-PER", "I-PER", "O"]], [["O", "I-PER", "I-PER", "O"]]
    seqeval = load_metric("seqeval")
    assert seqeval.compute(predictions=predictions, references=references)["overall_f1"] == 1.0
    strict = seqeval.compute(
        predictions=predictions, references=references, mode="strict", scheme="IOB2", zero_division=0
    )
    assert strict["overall_precision"] == 0.0 and strict["overall_recall"] == 0.0
    with pytest.raises(ValueError, match="scheme should be one of"):
        seqeval.compute(predictions=predictions, references=references, scheme="IOB3")


@pytest.mark.parametrize(
    ("prediction", "answer", "exact", "f1"),
    [
        ("The Cat!", "cat", 1.0, 1.0),  # case, punctuation and the article go
        ("an apple, a pear", "apple   pear", 1.0, 1.0),  # articles and spaces
        ("U.S.A.", "usa", 1.0, 1.0),  # punctuation inside words goes too
        ("theatre", "atre", 0.0, 0.0),  # "the" goes only as a word
        ("the big red dog", "red dog barks", 0.0, 2 / 3),  # 2 shared of 3 and 3 words
        ("dog dog cat", "dog cat cat", 0.0, 2 / 3),  # shared words counted with multiplicity: dog once, cat once
        ("Paris", "London", 0.0, 0.0),
    ],
)
def test_squad_normalisation_and_word_f1(prediction, answer, exact, f1):
    result = load_metric("squad").compute(
        predictions=[{"id": "q", "prediction_text": prediction}],
        references=[{"id": "q", "answers": {"text": [answer], "answer_start": [0]}}],
    )
    assert result["exact_match"] == pytest.approx(100 * exact)
    assert result["f1"] == pytest.approx(100 * f1)


def test_squad_takes_the_best_answer_and_scores_an_unanswered_question_zero():
    references = [
        {"id": "a", "answers": {"text": ["red dog barks", "a red dog"], "answer_start": [0, 0]}},
        {"id": "b", "answers": {"text": ["Paris"], "answer_start": [0]}},
        {"id": "c", "answers": {"text": ["never answered"], "answer_start": [0]}},
    ]
    predictions = [
        {"id": "a", "prediction_text": "the big red dog"},
        {"id": "b", "prediction_text": "paris."},
        {"id": "z", "prediction_text": "never answered"},  # an id no reference has: question c is left unanswered
    ]
    result = load_metric("squad").compute(predictions=predictions, references=references)
    # a: best F1 is against "a red dog" (2/3 vs 2 shared of 3 and 2 words = 4/5), no exact match; b: exact; c: 0.
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (4 / 5 + 1 + 0) / 3)


def confusion_matrix_iou(predictions, references, num_labels, ignore_index):
    """Per-class IoU and accuracy from a (reference, prediction) confusion matrix over the non-ignored pixels."""
    confusion = np.zeros((num_labels, num_labels))
    for prediction, reference in zip(predictions, references, strict=True):
        kept = reference != ignore_index
        np.add.at(confusion, (reference[kept], prediction[kept]), 1)
    true_positives = np.diag(confusion)
    with np.errstate(invalid="ignore"):
        iou = true_positives / (confusion.sum(0) + confusion.sum(1) - true_positives)
        accuracy = true_positives / confusion.sum(1)
    return iou, accuracy, true_positives.sum() / confusion.sum()


def test_mean_iou_matches_a_confusion_matrix_with_ignored_pixels_and_an_absent_class():
    generator = np.random.default_rng(5)
    num_labels, ignore_index = 6, 255
    # Two maps of different sizes; classes 0-3 in the references, 0-4 predicted, 5 nowhere.
    references = [generator.integers(0, 4, size=(5, 7)), generator.integers(0, 4, size=(6, 3))]
    predictions = [generator.integers(0, 5, size=(5, 7)), generator.integers(0, 5, size=(6, 3))]
    for reference in references:
        reference[generator.random(reference.shape) < 0.2] = ignore_index
    result = load_metric("mean_iou").compute(
        predictions=predictions, references=references, num_labels=num_labels, ignore_index=ignore_index
    )
    iou, accuracy, overall = confusion_matrix_iou(predictions, references, num_labels, ignore_index)
    assert np.isnan(result["per_category_iou"][5]) and result["per_category_iou"][4] == 0.0
    assert np.isnan(result["per_category_accuracy"][4]) and np.isnan(result["per_category_accuracy"][5])
    np.testing.assert_allclose(result["per_category_iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(result["per_category_accuracy"], accuracy, rtol=1e-12)
    assert result["mean_iou"] == pytest.approx(np.mean(iou[:5]))  # the absent class is skipped, not counted as 0
    assert result["mean_accuracy"] == pytest.approx(np.mean(accuracy[:4]))
    assert result["overall_accuracy"] == pytest.approx(overall)
    replaced = load_metric("mean_iou").compute(
        predictions=predictions, references=references, num_labels=num_labels, ignore_index=ignore_index, nan_to_num=-1
    )
    assert replaced["per_category_iou"][5] == -1 and replaced["per_category_accuracy"][4] == -1


def test_mean_iou_reduce_labels_and_label_map():
    generator = np.random.default_rng(6)
    references = [generator.integers(0, 4, size=(4, 5)).astype(np.uint8)]  # 0 is background
    predictions = [generator.integers(0, 3, size=(4, 5))]
    reduced = load_metric("mean_iou").compute(
        predictions=predictions, references=references, num_labels=3, ignore_index=255, reduce_labels=True
    )
    shifted = references[0].astype(np.int64) - 1  # background -1 is left out below, classes 1-3 become 0-2
    iou, accuracy, overall = confusion_matrix_iou(predictions, [shifted], 3, ignore_index=-1)
    np.testing.assert_allclose(reduced["per_category_iou"], iou, rtol=1e-12)
    np.testing.assert_allclose(reduced["per_category_accuracy"], accuracy, rtol=1e-12)
    assert reduced["overall_accuracy"] == pytest.approx(overall)
    # label_map looks up the original ids: swapping 1 and 2 is not two successive replacements.
    mapped = load_metric("mean_iou").compute(
        predictions=predictions, references=references, num_labels=4, ignore_index=255, label_map={1: 2, 2: 1}
    )
    swapped = np.choose(references[0], [0, 2, 1, 3])
    iou, _, _ = confusion_matrix_iou(predictions, [swapped], 4, ignore_index=255)
    np.testing.assert_allclose(mapped["per_category_iou"], iou, rtol=1e-12)


def test_mean_iou_reproduces_the_hub_documentation_example():
    predictions = [
        np.array([[1, 2], [3, 4], [5, 255]]),
        np.array([[2, 7], [9, 2], [3, 6]]),
        np.array([[2, 2, 3], [8, 2, 4], [3, 255, 2]]),
    ]
    references = [
        np.array([[0, 3], [5, 4], [6, 255]]),
        np.array([[1, 7], [9, 2], [3, 6]]),
        np.array([[1, 2, 2], [8, 2, 1], [3, 255, 1]]),
    ]
    result = load_metric("mean_iou").compute(
        predictions=predictions, references=references, num_labels=10, ignore_index=255, reduce_labels=False
    )
    assert result["mean_iou"] == pytest.approx(0.4775)
    assert result["mean_accuracy"] == pytest.approx(0.5916666666666666)
    assert result["overall_accuracy"] == pytest.approx(0.5263157894736842)
    np.testing.assert_allclose(result["per_category_iou"], [0, 0, 0.375, 0.4, 0.5, 0, 0.5, 1, 1, 1])


def test_perplexity_is_exp_of_the_mean_masked_token_cross_entropy():
    batch, length, vocabulary = 3, 7, 11
    logits = torch.randn(batch, length, vocabulary) * 3  # float32, as a model gives them
    labels = torch.randint(0, vocabulary, (batch, length))
    labels[torch.rand(batch, length) < 0.6] = -100
    labels[0, 0] = 4  # at least one scored token
    # The metric computes in float64 from the float32 logits; so does the reference.
    mean_loss = F.cross_entropy(logits.double().reshape(-1, vocabulary), labels.reshape(-1), ignore_index=-100)
    expected = torch.exp(mean_loss).item()
    from_logits = load_metric("perplexity", "logits").compute(predictions=logits.numpy(), references=labels.numpy())
    assert from_logits["perplexity"] == pytest.approx(expected, rel=1e-9)
    scored = labels != -100
    token_losses = F.cross_entropy(logits.double()[scored], labels[scored], reduction="none")
    from_losses = load_metric("perplexity").compute(predictions=token_losses.numpy())
    assert from_losses["perplexity"] == pytest.approx(expected, rel=1e-12)
    # Sequences of different lengths: every token weighs the same, not every sequence.
    ragged = load_metric("perplexity", "logits").compute(
        predictions=[logits[0, :2].tolist(), logits[1].tolist()],
        references=[labels[0, :2].tolist(), labels[1].tolist()],
    )
    kept = torch.cat([labels[0, :2], labels[1]])
    ragged_logits = torch.cat([logits[0, :2], logits[1]]).double()
    expected_ragged = torch.exp(F.cross_entropy(ragged_logits, kept, ignore_index=-100)).item()
    assert ragged["perplexity"] == pytest.approx(expected_ragged, rel=1e-9)


def test_perplexity_refuses_no_scored_token_and_an_unknown_configuration():
    with pytest.raises(ValueError, match="at least one scored token"):
        load_metric("perplexity", "logits").compute(predictions=[[[0.0, 1.0]]], references=[[-100]])
    with pytest.raises(ValueError, match='configurations "default" and "logits"'):
        load_metric("perplexity", "probabilities")


EXAMPLE_INPUTS = {
    "accuracy": dict(predictions=[0, 1], references=[0, 0]),
    "f1": dict(predictions=[0, 1], references=[0, 1]),
    "mean_iou": dict(predictions=[[[0, 1]]], references=[[[0, 0]]], num_labels=2, ignore_index=255),
    "perplexity": dict(predictions=[1.0]),
    "seqeval": dict(predictions=[["B-PER"]], references=[["B-PER"]]),
    "squad": dict(
        predictions=[{"id": "q", "prediction_text": "a"}],
        references=[{"id": "q", "answers": {"text": ["a"], "answer_start": [0]}}],
    ),
}

CHILD = """
import json, os, socket, sys, time
from pathlib import Path

def refuse(*args, **kwargs):
    raise OSError("no network in this test")

socket.socket.connect = refuse  # loading a shipped metric must not need the network
from hf_centered.metrics import available_metrics, load_metric

ready = Path(sys.argv[1]) / f"ready-{os.getpid()}"
ready.touch()
while len(list(ready.parent.glob("ready-*"))) < 2:  # both processes load at the same moment
    time.sleep(0.01)
names = {metric_id: load_metric(metric_id).name for metric_id in available_metrics()}
f1 = load_metric("f1").compute(predictions=[0, 1, 1, 2], references=[0, 1, 2, 2], average="macro")["f1"]
seqeval = load_metric("seqeval").compute(predictions=[["B-PER", "O"]], references=[["B-PER", "B-LOC"]])
print(json.dumps({"names": names, "f1": f1, "seqeval_recall": seqeval["overall_recall"]}))
"""


def test_two_processes_load_every_metric_offline_at_once_from_an_empty_cache(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
        "HF_METRICS_CACHE": str(tmp_path / "metrics"),
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD), str(tmp_path)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [rank.communicate(timeout=300) for rank in ranks]
    for rank, (_, stderr) in zip(ranks, outputs, strict=True):
        assert rank.returncode == 0, stderr[-3000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert results[0] == results[1]
    assert results[0]["names"] == {metric_id: metric_id for metric_id in HUB_METRIC_IDS}
    # Class 0: F1 1; class 1: P 1/2, R 1 → 2/3; class 2: P 1, R 1/2 → 2/3. One of the two entities found.
    assert results[0]["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3) and results[0]["seqeval_recall"] == 0.5
    # evaluate copied each script once into the modules cache, and wrote no prediction file to the metrics cache.
    copies = sorted(path.name for path in (tmp_path / "modules").rglob("*.py") if path.name != "__init__.py")
    assert copies == [f"{metric_id}.py" for metric_id in HUB_METRIC_IDS]
    assert not [path for path in (tmp_path / "metrics").rglob("*") if path.is_file()]


def test_loading_writes_nothing_inside_the_package():
    for metric_id in HUB_METRIC_IDS:
        load_metric(metric_id).compute(**EXAMPLE_INPUTS[metric_id])
    files = [path for path in METRICS_DIR.rglob("*") if path.is_file() and "__pycache__" not in path.parts]
    # Only the scripts: evaluate's copies, locks and predictions all go to its caches (the package may be read-only).
    assert sorted(path.relative_to(METRICS_DIR).as_posix() for path in files) == [
        f"{metric_id}/{metric_id}.py" for metric_id in HUB_METRIC_IDS
    ]
