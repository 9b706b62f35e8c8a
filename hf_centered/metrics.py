"""Every fine-tuning task's metrics, computed through the `evaluate` API with metric modules shipped in the package.

`evaluate.load("accuracy")` fetches the metric's script from the Hub, so it fails offline. hf_centered ships its own
modules instead, one per Hub metric id, in `hf_centered/evaluation/<id>/<id>.py` (an `evaluate.Metric` each, with
the Hub metric's inputs, keyword arguments and output names), and loads them by path, which never touches the
network. The ids are the Hub's, so a model card's model-index names the usual metrics:

    accuracy, f1, seqeval, mean_iou, squad, perplexity

(`perplexity` is for masked language models: exp of the mean cross-entropy of the masked tokens, from per-token
losses or from logits and labels; see its module.)

Use in a task module::

    from ..metrics import load_metric

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        ...
        scores = load_metric("seqeval").compute(predictions=predicted_tags, references=reference_tags)
        return {"overall_f1": scores["overall_f1"], ...}

`load_metric(id)` returns one module per process (loaded once, then cached) configured for a single process:
the Trainer already gathers every rank's predictions before `compute_metrics`, so evaluate's own distributed mode
(`num_process`, `process_id`, file locks and rendez-vous in its cache) is not used. Call `compute(...)` with all of
an evaluation's inputs at once, as above; it keeps them in memory, so nothing is written to evaluate's metrics cache.
What `evaluate.load` does write is a copy of the script under `HF_MODULES_CACHE` (default
`~/.cache/huggingface/modules/evaluate_modules/metrics/<id>/<hash of the script>/`), under a file lock, so torchrun
ranks loading at the same time wait for one another instead of clashing; point `HF_MODULES_CACHE` (and
`HF_METRICS_CACHE`, whose folder for the metric is created) at a writable folder where the home directory is not.
"""

from __future__ import annotations

import functools
from pathlib import Path

import evaluate
import numpy as np
from transformers import EvalPrediction

METRICS_DIR = Path(__file__).resolve().parent / "evaluation"


def available_metrics() -> list[str]:
    """The ids of the shipped metric modules (folders `<id>` holding `<id>.py`), sorted."""
    return sorted(folder.name for folder in METRICS_DIR.iterdir() if (folder / f"{folder.name}.py").is_file())


@functools.cache
def load_metric(metric_id: str, config_name: str | None = None) -> evaluate.EvaluationModule:
    """The shipped `evaluate` module of the Hub metric `metric_id`, loaded by path (offline) once per process.

    `config_name` selects a configuration where the metric has several (`"multilabel"` for accuracy and f1,
    `"logits"` for perplexity). Raises `ValueError` naming the available ids for an unknown one.
    """
    available = available_metrics()
    if metric_id not in available:
        raise ValueError(f"Unknown metric {metric_id!r}; the shipped metrics are: {', '.join(available)}")
    return evaluate.load(str(METRICS_DIR / metric_id), config_name, keep_in_memory=True)


def classification_metrics(predicted_labels, reference_labels) -> dict[str, float]:
    """Accuracy and macro-averaged F1 of predicted class ids against reference class ids."""
    predicted_labels = np.asarray(predicted_labels).reshape(-1)
    reference_labels = np.asarray(reference_labels).reshape(-1)
    accuracy = load_metric("accuracy").compute(predictions=predicted_labels, references=reference_labels)
    # zero_division=0: a class that is never predicted nor present scores 0, without scikit-learn's warning.
    f1 = load_metric("f1").compute(
        predictions=predicted_labels, references=reference_labels, average="macro", zero_division=0
    )
    return {"accuracy": accuracy["accuracy"], "f1_macro": f1["f1"]}


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: arg-max of the logits scored with `classification_metrics`."""
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):  # models returning hidden states too put the logits first
        logits = logits[0]
    return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids)
