"""Offline classification metrics for the Trainer: `evaluate.load("accuracy")` needs the Hub, scikit-learn does not."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score
from transformers import EvalPrediction


def classification_metrics(predicted_labels, reference_labels) -> dict[str, float]:
    """Accuracy and macro-averaged F1 of predicted class ids against reference class ids."""
    predicted_labels = np.asarray(predicted_labels).reshape(-1)
    reference_labels = np.asarray(reference_labels).reshape(-1)
    return {
        "accuracy": float(accuracy_score(reference_labels, predicted_labels)),
        "f1_macro": float(f1_score(reference_labels, predicted_labels, average="macro", zero_division=0)),
    }


def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """`Trainer(compute_metrics=...)`: arg-max of the logits scored with `classification_metrics`."""
    logits = eval_prediction.predictions
    if isinstance(logits, tuple):  # models returning hidden states too put the logits first
        logits = logits[0]
    return classification_metrics(np.argmax(logits, axis=-1), eval_prediction.label_ids)
