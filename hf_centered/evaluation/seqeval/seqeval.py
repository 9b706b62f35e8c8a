"""`seqeval`: entity-level precision, recall and F1 of a sequence labelling, as the Hub's metric of the same id.

Shipped with hf_centered so that it loads offline by path (`hf_centered.metrics.load_metric("seqeval")`). It scores
with the `seqeval` package, the library behind the Hub's metric, rather than a re-implementation: entity extraction
has many corner cases (an `I-` after `O` or after another type, `E-`/`S-` tags, suffix tags) whose conlleval-compatible
treatment must match the numbers people compare against. Inputs, keyword arguments and output are the Hub metric's:
lists of tag sequences; `suffix`, `scheme`, `mode`, `sample_weight`, `zero_division`; one dict per entity type
(`precision`, `recall`, `f1`, `number` = its count in the references) and `overall_precision`, `overall_recall`,
`overall_f1` (micro averages over entities) and `overall_accuracy` (token accuracy).
"""

import datasets
import evaluate
import seqeval.scheme
from seqeval.metrics import accuracy_score, classification_report

_CITATION = """
@inproceedings{ramshaw-marcus-1995-text,
    title = "Text Chunking using Transformation-Based Learning",
    author = "Ramshaw, Lance and Marcus, Mitch",
    booktitle = "Third Workshop on Very Large Corpora",
    year = "1995",
    url = "https://www.aclweb.org/anthology/W95-0107",
}
@misc{seqeval,
  title={{seqeval}: A Python framework for sequence labeling evaluation},
  url={https://github.com/chakki-works/seqeval},
  author={Hiroki Nakayama},
  year={2018},
}
"""

_DESCRIPTION = """
Entity-level evaluation of sequence labelling (named-entity recognition, chunking) with seqeval, which reproduces
the conlleval script of the CoNLL shared tasks. An entity counts as found only if its type and its exact span match.
By default (mode=None) entities are read the conlleval way, which accepts every prefix style (IOB1, IOB2, IOE1,
IOE2, IOBES) and starts an entity at an I- tag that follows O or another type; mode="strict" with a `scheme` reads
only well-formed entities of that scheme.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `str`): predicted tags, one list per sequence.
    references (`list` of `list` of `str`): reference tags, one list per sequence, of the same lengths.
    suffix (`bool`, defaults to False): whether the tag's prefix comes after its type ("PER-B").
    scheme (`str`, *optional*): "IOB1", "IOB2", "IOE1", "IOE2", "IOBES" or "BILOU", used with mode="strict".
    mode (`str`, *optional*): None (conlleval-compatible, the default) or "strict".
    sample_weight (`list` of `float`, *optional*): one weight per sequence.
    zero_division (`"warn"`, 0 or 1, defaults to "warn"): the value of a ratio with a zero denominator ("warn" gives
        0 and warns).

Returns:
    one dict per entity type: `precision`, `recall`, `f1`, `number` (its count in the references);
    overall_precision, overall_recall, overall_f1: micro averages over all entities;
    overall_accuracy: the fraction of tokens whose tag is right.

Examples:
    >>> seqeval = evaluate.load("hf_centered/evaluation/seqeval")
    >>> predictions = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    >>> references = [["O", "O", "O", "B-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    >>> results = seqeval.compute(predictions=predictions, references=references)
    >>> results["overall_f1"], results["PER"]["f1"]
    (0.5, 1.0)
"""

_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Seqeval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        tags = datasets.List(datasets.Value("string", id="label"), id="sequence")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            homepage="https://github.com/chakki-works/seqeval",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": tags, "references": tags}),
            codebase_urls=["https://github.com/chakki-works/seqeval"],
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(
        self,
        predictions,
        references,
        suffix: bool = False,
        scheme: str | None = None,
        mode: str | None = None,
        sample_weight=None,
        zero_division="warn",
    ) -> dict:
        if scheme is not None and scheme not in _SCHEMES:
            raise ValueError(f"scheme should be one of {', '.join(_SCHEMES)}, got {scheme!r}")
        report = classification_report(
            y_true=references,
            y_pred=predictions,
            suffix=suffix,
            output_dict=True,
            scheme=getattr(seqeval.scheme, scheme) if scheme is not None else None,
            mode=mode,
            sample_weight=sample_weight,
            zero_division=zero_division,
        )
        overall = report.pop("micro avg")
        del report["macro avg"], report["weighted avg"]
        scores = {
            entity_type: {
                "precision": float(score["precision"]),
                "recall": float(score["recall"]),
                "f1": float(score["f1-score"]),
                "number": int(score["support"]),
            }
            for entity_type, score in report.items()
        }
        scores["overall_precision"] = float(overall["precision"])
        scores["overall_recall"] = float(overall["recall"])
        scores["overall_f1"] = float(overall["f1-score"])
        scores["overall_accuracy"] = float(accuracy_score(y_true=references, y_pred=predictions))
        return scores
