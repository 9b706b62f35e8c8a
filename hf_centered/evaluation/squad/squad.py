"""`squad`: exact match and token F1 of extractive answers, as the Hub's metric of the same id (SQuAD v1.1).

Shipped with hf_centered so that it loads offline by path (`hf_centered.metrics.load_metric("squad")`). Inputs and
output are the Hub metric's: `predictions` are `{"id", "prediction_text"}` dicts, `references` are `{"id", "answers":
{"text": [...], "answer_start": [...]}}` dicts; returns `{"exact_match", "f1"}` in percent. The scoring follows the
official v1.1 evaluation script: both texts are normalised (lower-cased, punctuation removed, the articles a/an/the
removed, whitespace collapsed), each question takes its best score over its reference answers, and a question without
a prediction scores 0.
"""

import re
import string
from collections import Counter

import datasets
import evaluate

_CITATION = """
@inproceedings{Rajpurkar2016SQuAD10,
  title={SQuAD: 100,000+ Questions for Machine Comprehension of Text},
  author={Pranav Rajpurkar and Jian Zhang and Konstantin Lopyrev and Percy Liang},
  booktitle={EMNLP},
  year={2016}
}
"""

_DESCRIPTION = """
The scores of the official evaluation script of SQuAD v1.1 (the Stanford Question Answering Dataset), whose answers
are spans of a reading passage: exact match of the normalised texts, and F1 over their bag of words.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `dict`): one per question, {"id": str, "prediction_text": str}.
    references (`list` of `dict`): one per question, {"id": str, "answers": {"text": [str, ...],
        "answer_start": [int, ...]}}; answer_start is not used by the scores.

Returns:
    exact_match (`float`): percentage of questions whose normalised prediction equals one of their answers.
    f1 (`float`): mean over questions of the best word-level F1 against their answers, in percent.

Examples:
    >>> squad = evaluate.load("hf_centered/evaluation/squad")
    >>> squad.compute(
    ...     predictions=[{"id": "q1", "prediction_text": "the 1976 season"}],
    ...     references=[{"id": "q1", "answers": {"text": ["1976"], "answer_start": [97]}}],
    ... )
    {'exact_match': 0.0, 'f1': 66.66666666666666}
"""

logger = evaluate.logging.get_logger(__name__)

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """The official normalisation: lower case, no punctuation, no articles (a, an, the), single spaces."""
    text = "".join(character for character in text.lower() if character not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def word_f1(prediction: str, answer: str) -> float:
    """F1 between the normalised texts' bags of words (words shared, counted with multiplicity)."""
    predicted_words = normalize_answer(prediction).split()
    answer_words = normalize_answer(answer).split()
    shared = sum((Counter(predicted_words) & Counter(answer_words)).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / len(predicted_words), shared / len(answer_words)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Squad(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
            codebase_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
            reference_urls=["https://rajpurkar.github.io/SQuAD-explorer/"],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        predicted_text = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
        exact_match_total = f1_total = 0.0
        for reference in references:
            if reference["id"] not in predicted_text:
                logger.warning(f"Unanswered question {reference['id']} will receive score 0.")
                continue
            prediction, answers = predicted_text[reference["id"]], reference["answers"]["text"]
            exact_match_total += max(exact_match(prediction, answer) for answer in answers)
            f1_total += max(word_f1(prediction, answer) for answer in answers)
        return {"exact_match": 100.0 * exact_match_total / len(references), "f1": 100.0 * f1_total / len(references)}
