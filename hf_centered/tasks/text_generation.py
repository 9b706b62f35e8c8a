"""`text-generation`: causal language modelling (next-token prediction) from a decoder checkpoint or from scratch;
held-out perplexity and next-token accuracy.

Models. The decoder families of the generic path (`AutoModelForCausalLM`): Llama, Qwen2, GPT-2. The causal-LM heads
of encoder families (BERT's, RoBERTa's, ELECTRA's) are not offered: they are encoders switched to decoders by
`is_decoder=True`, which the corrected configurations refuse. From scratch (`--architecture`) the family is Llama
unless `model_type` names another; the tokenizer then also decides the ids that open and close a text (its BOS/EOS
tokens, or [CLS]/[SEP] for a BERT tokenizer), so that `generate()` stops where the training texts ended. A model
trained with a BERT tokenizer is prompted as its texts began, without the [SEP] that tokenizer closes a text with:
`pipeline("text-generation", folder)("[CLS] the movie", add_special_tokens=False)`, or `generate(input_ids)` of such
ids (that tokenizer also returns `token_type_ids`, which a decoder does not take).

Data. The texts of `tasks.texts` (the built-in `text_corpus`, .txt or csv/json(l)/parquet files with a
`text_column`, a Hub dataset), each text one example truncated to `max_seq_length` tokens with the tokenizer's own
special tokens, as `fill-mask` does (line by line: no example mixes two texts). Batches are padded on the right
whatever the tokenizer's padding side (the positions of a left-padded row would start late), and the labels are the
input ids with padding ignored: read from the attention mask, not from the pad id, which for many decoders is the
EOS token that ends each text.

Evaluation. Every token but a text's first is predicted from the ones before it. `perplexity` is exp of the mean
cross-entropy over all predicted tokens of the evaluation set, every token weighing the same (exp(eval_loss) differs
slightly: the Trainer averages per batch); `accuracy` is the share of them whose arg-max is the next token.
`preprocess_logits_for_metrics` keeps two numbers per position instead of a vocabulary row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedTokenizerBase

from ..metrics import load_metric
from .base import IGNORED_LABEL, TEXT, Task, TaskData, require_examples, subsample_splits
from .texts import TEXT_CORPUS, check_tokenizer_fits, read_texts

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments

MODEL_INPUTS = ("input_ids", "attention_mask")


@dataclass
class DataCollatorForCausalLanguageModeling:
    """Pads a batch on the right and labels every real token with itself (the model shifts the labels: position t
    predicts the token at t + 1); padding is labelled -100 by the attention mask, so an EOS token that doubles as the
    pad token is still learnt where it ends a text."""

    tokenizer: PreTrainedTokenizerBase

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{name: example[name] for name in MODEL_INPUTS} for example in examples]
        batch = self.tokenizer.pad(rows, padding=True, padding_side="right", return_tensors="pt")
        batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORED_LABEL)
        return dict(batch)


class TextGeneration(Task):
    name = "text-generation"
    modality = TEXT
    auto_class = "AutoModelForCausalLM"
    builtin_datasets = (TEXT_CORPUS,)
    column_options = ("text_column",)
    metric_names = ("perplexity", "accuracy")
    peft_task_type = "CAUSAL_LM"

    @property
    def scratch_model_type(self) -> str:
        return "llama"

    def head_class(self, config):
        if hasattr(config, "is_decoder"):  # an encoder family (module docstring)
            return None
        return super().head_class(config)

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        data_args = args.data
        check_tokenizer_fits(processor, config, data_args.max_seq_length)
        if args.model.architecture is not None:
            set_text_boundaries(config, processor)
        raw, dataset_label = read_texts(args, self.builtin_datasets)
        require_examples(raw)
        train, evaluation = subsample_splits(raw, args)

        def tokenize(batch):
            return processor(
                batch["text"], truncation=True, max_length=data_args.max_seq_length, return_token_type_ids=False
            )

        with args.training.main_process_first(desc="tokenising"):
            train = train.map(tokenize, batched=True, remove_columns=["text"])
            evaluation = evaluation.map(tokenize, batched=True, remove_columns=["text"])
        return TaskData(train=train, evaluation=evaluation, dataset_label=dataset_label)

    def data_collator(self, args: FinetuneArguments, processor) -> DataCollatorForCausalLanguageModeling:
        return DataCollatorForCausalLanguageModeling(processor)

    def preprocess_logits_for_metrics(self):
        return next_tokens_and_losses

    def compute_metrics(self, data: TaskData):
        return next_token_metrics


def set_text_boundaries(config, tokenizer) -> None:
    """From scratch: the ids that open and close a text are the tokenizer's (BOS/EOS, else [CLS]/[SEP])."""
    for name, fallback in (("bos", "cls"), ("eos", "sep")):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is None:
            token_id = getattr(tokenizer, f"{fallback}_token_id", None)
        if token_id is not None:
            setattr(config, f"{name}_token_id", token_id)


def next_tokens_and_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position t the arg-max token predicted for it from the tokens before it and its cross-entropy (nats), both
    aligned with `labels`; the first position, predicted from nothing, holds -100 and 0."""
    if isinstance(logits, tuple):  # models returning a cache or hidden states too put the logits first
        logits = logits[0]
    predicted = torch.full_like(labels, IGNORED_LABEL)
    losses = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
    shifted = logits[:, :-1].float()
    predicted[:, 1:] = shifted.argmax(dim=-1)
    losses[:, 1:] = torch.nn.functional.cross_entropy(
        shifted.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORED_LABEL, reduction="none"
    ).view_as(labels[:, 1:])
    return predicted, losses


def next_token_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Perplexity and next-token accuracy over every predicted token of the evaluation (a text's first is not)."""
    predicted_tokens, losses = eval_prediction.predictions
    labels = np.asarray(eval_prediction.label_ids)
    scored = labels != IGNORED_LABEL
    scored[:, 0] = False
    accuracy = load_metric("accuracy").compute(predictions=predicted_tokens[scored], references=labels[scored])
    perplexity = load_metric("perplexity").compute(predictions=losses[scored])
    return {"perplexity": perplexity["perplexity"], "accuracy": accuracy["accuracy"]}
