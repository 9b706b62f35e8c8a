"""`accuracy`: the fraction of predictions equal to their reference, as the Hub's metric of the same id computes it.

Shipped with hf_centered so that it loads offline by path (`evaluate.load(".../evaluation/accuracy")`, or
`hf_centered.metrics.load_metric("accuracy")`). Inputs, keyword arguments and output are the Hub metric's: integer
`predictions` and `references` (lists of label sets with the `"multilabel"` configuration, where a sample counts only
if all its labels match), `normalize` and `sample_weight`; returns `{"accuracy": float}`.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions: (TP + TN) / (TP + TN + FP + FN).
With the "multilabel" configuration each prediction is a set of labels (a 0/1 indicator list) and counts as correct
only when it matches its reference exactly (subset accuracy).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels (indicator lists with the "multilabel" configuration).
    references (`list` of `int`): ground-truth labels, in the same form.
    normalize (`bool`, defaults to `True`): the fraction of correct predictions if True, else their (weighted) count.
    sample_weight (`list` of `float`, *optional*): one weight per sample.

Returns:
    accuracy (`float`): in [0, 1] when `normalize` is True, a (weighted) count otherwise.

Examples:
    >>> accuracy = evaluate.load("hf_centered/evaluation/accuracy")
    >>> accuracy.compute(references=[0, 1, 2, 0], predictions=[0, 1, 1, 2])
    {'accuracy': 0.5}
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
class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        label = datasets.Value("int32")
        if self.config_name == "multilabel":
            label = datasets.List(label)
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": label, "references": label}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize: bool = True, sample_weight=None) -> dict[str, float]:
        score = accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
        return {"accuracy": float(score)}
