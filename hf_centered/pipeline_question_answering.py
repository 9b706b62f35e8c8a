"""The `question-answering` pipeline of extractive heads (`AutoModelForQuestionAnswering`), shipped inside exports.

transformers 5 removed its own `question-answering` pipeline (it points to text generation with a chat model), but a
model that points at a span of the context still needs one. `add_to_folder(folder)` names this module's pipeline
under `custom_pipelines` in a saved model's config.json and copies this file beside the model's code, so that

    pipeline("question-answering", model=folder, trust_remote_code=True)(question=..., context=...)

answers as transformers 4's pipeline did: `{"score", "start", "end", "answer"}` per question, `answer` being
`context[start:end]` (a list of `top_k` such answers for `top_k` > 1). The module imports only numpy, torch and
transformers, since the folder must work where hf_centered is not installed.

The span search is that of transformers' question-answering example (utils_qa.py), which hf_centered's evaluation
uses too (`span_candidates`), so the pipeline gives exactly the answers that the reported exact match and F1 score:
each feature (a window of a long context) proposes the spans between its `n_best_size` best start and end tokens that
lie in the context, end after they start and are at most `max_answer_len` tokens long; spans are ranked by start
logit + end logit over all features; `score` is the softmax of that sum over the `n_best_size` best spans of the
question. Parameters as in transformers 4: `top_k` (1), `max_answer_len` (15), `max_seq_len` (384, at most the
tokenizer's `model_max_length`), `doc_stride` (128, at most half of `max_seq_len`); and `n_best_size` (20).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.pipelines.base import ChunkPipeline

TASK = "question-answering"
DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128
DEFAULT_MAX_ANSWER_LEN = 15
DEFAULT_N_BEST_SIZE = 20


def span_candidates(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list,
    n_best_size: int,
    max_answer_length: int,
) -> list[tuple[float, int, int]]:
    """The valid spans of one feature among its `n_best_size` best start and end tokens, as (start logit + end
    logit, first character, end character), best start first and for each start best end first (utils_qa's order).

    `offsets` holds a token's (first, end) characters in the context, None outside the context. Logits past its
    length (padding of a batch) are cut off first, so that they take none of the `n_best_size` places and the spans
    do not depend on how the features were batched."""
    start_logits, end_logits = start_logits[: len(offsets)], end_logits[: len(offsets)]
    candidates = []
    top_starts = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
    top_ends = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
    for start in top_starts:
        for end in top_ends:
            if offsets[start] is None or offsets[end] is None:
                continue
            if end < start or end - start + 1 > max_answer_length:
                continue
            candidates.append((float(start_logits[start] + end_logits[end]), offsets[start][0], offsets[end][1]))
    return candidates


class ExtractiveQuestionAnsweringPipeline(ChunkPipeline):
    """Answers questions with a span of their context; see the module's docstring.

    Call it with `question=` and `context=` (strings, or lists of equal length, or one context for several
    questions), with a `{"question", "context"}` dict or with a list of such dicts.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"{type(self).__name__} maps tokens back to the context through offsets, which needs a fast "
                f"tokenizer, not a {type(self.tokenizer).__name__}."
            )

    def _sanitize_parameters(
        self,
        top_k: int | None = None,
        max_answer_len: int | None = None,
        max_seq_len: int | None = None,
        doc_stride: int | None = None,
        n_best_size: int | None = None,
        **kwargs,
    ):
        preprocess_params, postprocess_params = {}, {}
        for name, value, params in (
            ("top_k", top_k, postprocess_params),
            ("max_answer_len", max_answer_len, postprocess_params),
            ("n_best_size", n_best_size, postprocess_params),
            ("max_seq_len", max_seq_len, preprocess_params),
        ):
            if value is not None:
                if value < 1:
                    raise ValueError(f"{name} must be >= 1, got {value}")
                params[name] = value
        if doc_stride is not None:
            if doc_stride < 0:
                raise ValueError(f"doc_stride must be >= 0, got {doc_stride}")
            preprocess_params["doc_stride"] = doc_stride
        return preprocess_params, {}, postprocess_params

    def __call__(
        self, *args, question: str | list[str] | None = None, context: str | list[str] | None = None, **kwargs
    ):
        if question is None and context is None:
            if len(args) != 1:
                raise ValueError("give question= and context=, a {'question', 'context'} dict or a list of them")
            return super().__call__(args[0], **kwargs)
        if question is None or context is None or args:
            raise ValueError("give both question= and context= (and no other inputs)")
        if isinstance(question, str):
            if not isinstance(context, str):
                raise ValueError("one question needs one context")
            return super().__call__({"question": question, "context": context}, **kwargs)
        contexts = [context] * len(question) if isinstance(context, str) else list(context)
        if len(contexts) != len(question):
            raise ValueError(f"got {len(question)} questions and {len(contexts)} contexts")
        examples = [{"question": q, "context": c} for q, c in zip(question, contexts, strict=True)]
        return super().__call__(examples, **kwargs)

    def preprocess(self, example: dict[str, str], max_seq_len: int | None = None, doc_stride: int | None = None):
        if not isinstance(example, dict) or not {"question", "context"} <= set(example):
            raise ValueError(f"an input must be a {{'question', 'context'}} dict, got {example!r}")
        question, context = example["question"].lstrip(), example["context"]
        if not question.strip() or not context.strip():
            raise ValueError("the question and the context must not be empty")
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, DEFAULT_MAX_SEQ_LEN)
        if doc_stride is None:
            doc_stride = min(DEFAULT_DOC_STRIDE, max_seq_len // 2)
        encoded = self.tokenizer(
            question,
            context,
            truncation="only_second",
            max_length=max_seq_len,
            stride=doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        features = len(encoded["input_ids"])
        for feature in range(features):
            sequence_ids = encoded.sequence_ids(feature)
            offsets = encoded["offset_mapping"][feature]
            model_inputs = {
                name: torch.tensor([encoded[name][feature]])
                for name in self.tokenizer.model_input_names
                if name in encoded
            }
            yield {
                **model_inputs,
                "offsets": [
                    offset if sequence == 1 else None for offset, sequence in zip(offsets, sequence_ids, strict=True)
                ],
                "context": context,
                "is_last": feature == features - 1,
            }

    def _forward(self, inputs: dict[str, Any]) -> dict[str, Any]:
        offsets, context, is_last = inputs.pop("offsets"), inputs.pop("context"), inputs.pop("is_last")
        outputs = self.model(**inputs)
        return {
            "start_logits": outputs.start_logits,
            "end_logits": outputs.end_logits,
            "offsets": offsets,
            "context": context,
            "is_last": is_last,
        }

    def postprocess(
        self,
        outputs: list[dict[str, Any]],
        top_k: int = 1,
        max_answer_len: int = DEFAULT_MAX_ANSWER_LEN,
        n_best_size: int = DEFAULT_N_BEST_SIZE,
    ):
        n_best_size = max(n_best_size, top_k)
        candidates = []
        for output in outputs:
            start_logits = output["start_logits"][0].float().numpy()
            end_logits = output["end_logits"][0].float().numpy()
            candidates += span_candidates(start_logits, end_logits, output["offsets"], n_best_size, max_answer_len)
        context = outputs[0]["context"]
        # A stable sort: among equal scores the earlier feature, start and end win, as in utils_qa.
        best = sorted(candidates, key=lambda candidate: candidate[0], reverse=True)[:n_best_size]
        scores = np.array([score for score, _, _ in best])
        probabilities = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum() if best else scores
        answers = [
            {"score": float(probability), "start": start, "end": end, "answer": context[start:end]}
            for probability, (_, start, end) in zip(probabilities, best, strict=True)
        ][:top_k]
        if not answers:  # no window offered a valid span (e.g. max_answer_len below every answer's length)
            answers = [{"score": 0.0, "start": 0, "end": 0, "answer": ""}]
        return answers[0] if top_k == 1 else answers


def add_to_folder(folder: str | Path) -> None:
    """Makes `pipeline("question-answering", model=folder, trust_remote_code=True)` use this pipeline: names it under
    `custom_pipelines` in the saved model's `folder/config.json` and copies this module into `folder`."""
    folder = Path(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    module = Path(__file__).stem
    config.setdefault("custom_pipelines", {})[TASK] = {
        "impl": f"{module}.{ExtractiveQuestionAnsweringPipeline.__name__}",
        "pt": ["AutoModelForQuestionAnswering"],
        "type": "text",
    }
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(__file__, folder / Path(__file__).name)
