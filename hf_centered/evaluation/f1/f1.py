"""`f1`: the harmonic mean of precision and recall, as the Hub's metric of the same id computes it.

Shipped with hf_centered so that it loads offline by path (`hf_centered.metrics.load_metric("f1")`). Inputs,
keyword arguments and output are the Hub metric's (`labels`, `pos_label`, `average` defaulting to `"binary"`,
`sample_weight`; returns `{"f1": float}`, or one score per label with `average=None`), plus scikit-learn's
`zero_division`, so that a class never predicted scores 0 without a warning when asked.
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score

_DESCRIPTION = """
The F1 score is the harmonic mean of precision and recall: F1 = 2 * precision * recall / (precision + recall).
For more than two classes choose an `average`: "macro" (unweighted mean of the per-class scores), "micro" (from the
global true/false positive and false negative counts), "weighted" (per-class scores weighted by support) or None
(one score per class).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels (indicator lists with the "multilabel" configuration).
    references (`list` of `int`): ground-truth labels, in the same form.
    labels (`list` of `int`, *optional*): the labels to include when `average` is not "binary", and their order
        when it is None; by default every label of `predictions` and `references`, sorted.
    pos_label (`int`, defaults to 1): the positive class when `average` is "binary".
    average (`str` or `None`, defaults to "binary"): "binary", "micro", "macro", "weighted", "samples" or None.
    sample_weight (`list` of `float`, *optional*): one weight per sample.
    zero_division (`"warn"`, 0 or 1, defaults to "warn"): the score of a class with no prediction and no reference
        ("warn" scores 0 and warns).

Returns:
    f1 (`float`, or an array of `float` with `average=None`): in [0, 1], higher is better.

Examples:
    >>> f1 = evaluate.load("hf_centered/evaluation/f1")
    >>> f1.compute(references=[0, 1, 0, 1, 0], predictions=[0, 0, 1, 1, 0])
    {'f1': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
          Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
          Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.List(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(
        self,
        predictions,
        references,
        labels=None,
        pos_label: int = 1,
        average: str | None = "binary",
        sample_weight=None,
        zero_division="warn",
    ) -> dict:
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        # One number for an averaged score, the per-label array for average=None, as on the Hub.
        return {"f1": float(score) if np.ndim(score) == 0 else score}
