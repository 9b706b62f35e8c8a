"""`text-generation`: causal language modelling (next-token prediction) from a decoder checkpoint or from scratch;
held-out perplexity and next-token accuracy.

Models. The decoder families of the generic path (`AutoModelForCausalLM`): Llama, Qwen2, GPT-2. The causal-LM heads
of encoder families (BERT's, RoBERTa's, ELECTRA's) are not offered: they are encoders switched to decoders by
`is_decoder=True`, which the corrected configurations refuse. From scratch (`--architecture`) the family is Llama
unless `model_type` names another; the tokenizer then also decides the ids that open and close a text (its BOS/EOS
tokens, or [CLS]/[SEP] for a BERT tokenizer).

Tokenizer. Every text is trained as the tokenizer opens it (BOS or [CLS], where it adds one) and closed with its EOS
token (a BERT tokenizer's [SEP]), so that `generate()` stops where the training texts ended. A prompt must be opened
the same way but left open: the tokenizer saved with the model does exactly that, so that `pipeline("text-generation",
folder)("the movie")` continues the text. A tokenizer whose template closes every text (BERT's adds [SEP], after which
the model would start a new text) is saved as a `TokenizersBackend` with the template's opening tokens only, its
closing token as EOS, and without `token_type_ids` (a decoder takes none); a slow tokenizer that closes texts is
saved as it is, and is then prompted with `add_special_tokens=False` and the opening token written out. The saved
tokenizer pads on the left, as batched generation needs (training batches are padded on the right whatever it says).

Data. The texts of `tasks.texts` (the built-in `text_corpus`, .txt or csv/json(l)/parquet files with a
`text_column`, a Hub dataset), each text one example (line by line, as `fill-mask`: no example mixes two texts): its
opening ids, its tokens cut to leave room for them and the EOS id within `max_seq_length`, the EOS id (a cut text is
closed too, as a BERT tokenizer closes every text). Batches are padded on the right whatever the tokenizer's padding
side (the positions of a left-padded row would start late), and the labels are the input ids with padding ignored:
read from the attention mask, not from the pad id, which for many decoders is the EOS token that ends each text.

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
from tokenizers import Tokenizer, processors
from transformers import EvalPrediction, PreTrainedTokenizerBase, TokenizersBackend

from ..metrics import load_metric
from .base import IGNORED_LABEL, TEXT, Task, TaskData, fail, require_examples, subsample_splits
from .texts import TEXT_CORPUS, check_tokenizer_fits, read_texts, tokenizer_name

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
        opening, _ = text_boundaries(processor)
        closing_id = boundary_id(processor, "eos")
        closing = [] if closing_id is None else [closing_id]
        room = data_args.max_seq_length - len(opening) - len(closing)
        if room < 1:
            fail(
                f"max_seq_length={data_args.max_seq_length} leaves no token of text beside the "
                f"{len(opening) + len(closing)} ids that open and close each text: use a larger --max_seq_length"
            )
        raw, dataset_label = read_texts(args, self.builtin_datasets)
        require_examples(raw)
        train, evaluation = subsample_splits(raw, args)

        def tokenize(batch):
            texts = processor(batch["text"], add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
            input_ids = [opening + ids + closing for ids in texts]
            return {"input_ids": input_ids, "attention_mask": [[1] * len(ids) for ids in input_ids]}

        with args.training.main_process_first(desc="tokenising"):
            train = train.map(tokenize, batched=True, remove_columns=["text"])
            evaluation = evaluation.map(tokenize, batched=True, remove_columns=["text"])
        return TaskData(train=train, evaluation=evaluation, dataset_label=dataset_label)

    def adapt_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
        adapted = open_ended(tokenizer)
        adapted.padding_side = "left"  # batched prompts end where generation starts; the collator pads on the right
        return adapted

    def data_collator(self, args: FinetuneArguments, processor) -> DataCollatorForCausalLanguageModeling:
        return DataCollatorForCausalLanguageModeling(processor)

    def preprocess_logits_for_metrics(self):
        return next_tokens_and_losses

    def compute_metrics(self, data: TaskData):
        return next_token_metrics


def text_boundaries(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids `tokenizer` puts before and after a text of its own accord (its template's special tokens)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    framed = tokenizer("a")["input_ids"]
    for start in range(len(framed) - len(plain) + 1):
        if framed[start : start + len(plain)] == plain:
            return framed[:start], framed[start + len(plain) :]
    fail(
        f"the tokenizer {tokenizer_name(tokenizer)} encodes a text differently with its special tokens than without, "
        "so the ids that open and close a text cannot be told apart: use a tokenizer that only adds them around it"
    )


BOUNDARY_FALLBACKS = {"bos": "cls", "eos": "sep"}


def boundary_id(tokenizer: PreTrainedTokenizerBase, name: str) -> int | None:
    """The id that opens (`name` "bos") or closes ("eos") a text: the tokenizer's BOS/EOS token, else [CLS]/[SEP]."""
    token_id = getattr(tokenizer, f"{name}_token_id", None)
    return token_id if token_id is not None else getattr(tokenizer, f"{BOUNDARY_FALLBACKS[name]}_token_id", None)


def open_ended(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer` as a prompt needs it: opening a text as it does and leaving it open (module docstring). A tokenizer
    that closes no text is returned as it is; one that does, as a copy whose template keeps only the opening tokens,
    whose EOS token is the closing one where it named none, and which returns no `token_type_ids`."""
    opening, closing = text_boundaries(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if not closing or backend is None:
        return tokenizer
    opening_tokens = tokenizer.convert_ids_to_tokens(opening)
    backend = Tokenizer.from_str(backend.to_str())
    backend.post_processor = processors.TemplateProcessing(
        single=[*opening_tokens, "$A"],
        pair=[*opening_tokens, "$A", "$B:1"],
        special_tokens=list(dict.fromkeys(zip(opening_tokens, opening, strict=True))),
    )
    special_tokens = dict(tokenizer.special_tokens_map)
    if tokenizer.bos_token is None and opening:
        special_tokens["bos_token"] = opening_tokens[0]
    if tokenizer.eos_token is None:
        special_tokens["eos_token"] = tokenizer.convert_ids_to_tokens(closing[-1])
    adapted = TokenizersBackend(
        tokenizer_object=backend,
        name_or_path=tokenizer.name_or_path,
        model_max_length=tokenizer.model_max_length,
        truncation_side=tokenizer.truncation_side,
        clean_up_tokenization_spaces=tokenizer.clean_up_tokenization_spaces,
        model_input_names=[name for name in tokenizer.model_input_names if name != "token_type_ids"],
        **special_tokens,
    )
    adapted.chat_template = tokenizer.chat_template
    return adapted


def set_text_boundaries(config, tokenizer) -> None:
    """From scratch: the ids that open and close a text are the tokenizer's (BOS/EOS, else [CLS]/[SEP])."""
    for name in BOUNDARY_FALLBACKS:
        token_id = boundary_id(tokenizer, name)
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
