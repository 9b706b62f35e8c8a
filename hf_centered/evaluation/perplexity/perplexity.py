"""`perplexity` of a masked language model: exp of the mean cross-entropy over the masked (scored) tokens.

Shipped with hf_centered so that it loads offline by path (`hf_centered.metrics.load_metric("perplexity")`). The id
is the Hub's, so that a model card's model-index names the usual metric, but the inputs are not: the Hub's
`perplexity` runs a causal language model (`model_id`) over raw texts, which neither applies to a masked LM nor works
offline. Here the model has already run, and

    perplexity = exp( (1 / N) * sum_i -log p(y_i | x) )

over the N scored tokens i of the whole evaluation set (labels other than -100: the masked positions), with natural
logarithms. Every token weighs the same, whichever batch or sequence it came from (the Trainer's `eval_loss` averages
per batch instead, so exp(eval_loss) differs slightly when batches hold different numbers of masked tokens).

Two configurations, for the two ways a caller may hold the numbers:
- `"default"`: `predictions` are the per-token cross-entropy losses (nats) of the scored tokens, one float each
  (e.g. from `torch.nn.functional.cross_entropy(..., reduction="none")` with the unscored tokens left out); this
  keeps an evaluation's memory at one float per token instead of one vocabulary row.
- `"logits"`: `predictions` are the logits of each sequence, (seq_len, vocab_size), and `references` its labels,
  (seq_len,), -100 at the positions not scored; the losses are computed here in float64.
Returns `{"perplexity": float}`.
"""

import datasets
import evaluate
import numpy as np

IGNORED_LABEL = -100  # the label of unscored positions in transformers' masked-LM collators and losses

_DESCRIPTION = """
Perplexity of a masked language model: the exponential of the mean cross-entropy (natural logarithm) of the scored
tokens, i.e. the inverse geometric mean of the probabilities the model gives the right tokens. Lower is better; a
model guessing uniformly over V tokens scores V.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: configuration "default": the cross-entropy loss (nats) of each scored token, a `list` of `float`;
        configuration "logits": the logits of each sequence, a `list` of (seq_len, vocab_size) arrays.
    references: configuration "logits" only: the labels of each sequence, a `list` of (seq_len,) integer arrays with
        -100 at the positions not scored.

Returns:
    perplexity (`float`): exp of the mean cross-entropy over all scored tokens.

Examples:
    >>> perplexity = evaluate.load("hf_centered/evaluation/perplexity")
    >>> perplexity.compute(predictions=[0.0, 2.0])
    {'perplexity': 2.718281828459045}
    >>> perplexity = evaluate.load("hf_centered/evaluation/perplexity", "logits")
    >>> perplexity.compute(predictions=[[[0.0, 0.0], [5.0, 1.0]]], references=[[1, -100]])
    {'perplexity': 2.0}
"""

_CITATION = """
@article{jelinek1977perplexity,
  title={Perplexity--a measure of the difficulty of speech recognition tasks},
  author={Jelinek, Fred and Mercer, Robert L and Bahl, Lalit R and Baker, James K},
  journal={The Journal of the Acoustical Society of America},
  volume={62},
  number={S1},
  pages={S63--S63},
  year={1977}
}
"""


def token_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy (nats) of each scored position of one sequence: logsumexp of its logits minus the label's."""
    scored = labels != IGNORED_LABEL
    logits, labels = logits[scored].astype(np.float64), labels[scored]
    largest = logits.max(axis=-1, keepdims=True)  # subtracted before exp for stability
    log_normalizer = largest[:, 0] + np.log(np.exp(logits - largest).sum(axis=-1))
    return log_normalizer - logits[np.arange(len(labels)), labels]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        if self.config_name == "logits":
            features = {
                "predictions": datasets.List(datasets.List(datasets.Value("float32"))),
                "references": datasets.List(datasets.Value("int64")),
            }
        elif self.config_name == "default":
            features = {"predictions": datasets.Value("float64")}
        else:
            raise ValueError(f'perplexity has the configurations "default" and "logits", not {self.config_name!r}')
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(features),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"],
        )

    def _compute(self, predictions, references=None) -> dict[str, float]:
        if self.config_name == "logits":
            losses = np.concatenate(
                [
                    token_losses(np.asarray(logits), np.asarray(labels, dtype=np.int64))
                    for logits, labels in zip(predictions, references, strict=True)
                ]
            )
        else:
            losses = np.asarray(predictions, dtype=np.float64)
        if losses.size == 0:
            raise ValueError("perplexity needs at least one scored token (a label other than -100)")
        return {"perplexity": float(np.exp(losses.mean()))}
