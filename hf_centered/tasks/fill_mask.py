"""`fill-mask`: masked-language-model training (BERT's objective) from a checkpoint or from scratch; masked-token
accuracy and perplexity.

Data. Each text is one example, truncated to `max_seq_length` tokens (line by line, as HF's run_mlm.py with
`--line_by_line`): texts are not concatenated and cut into blocks, so no example mixes two texts, and what a long text
holds beyond `max_seq_length` tokens is left out. The texts are read as `tasks.texts` says: the built-in
`text_corpus`, .txt or csv/json(l)/parquet files with a `text_column`, or a Hub dataset.

Masking is transformers' `DataCollatorForLanguageModeling`: `mlm_probability` (15%) of the tokens of each text, never
special tokens or padding; of the chosen ones 80% become [MASK], 10% a random token and 10% stay as they are. With
`whole_word_mask` each word is chosen with that probability and all its sub-words are masked together, all with
[MASK] (transformers replaces no whole word with random tokens). A word is what transformers 5.23 takes it to be: a
run of tokens whose characters touch in the text, so "great." is one word.

Evaluation. Training batches draw new masks at every step. The evaluation set is masked once, in `load_data`, with a
seed of its own (`EVALUATION_MASKING_SEED`, not the run's `seed`): every evaluation of a run, the stock baseline's and
those of runs with other seeds on the same evaluation texts score the same masked positions with the same
replacements. `accuracy` is the share of masked positions where the arg-max token is the original one; `perplexity`
is exp of the mean cross-entropy over all masked tokens of the evaluation set, every token weighing the same
(exp(eval_loss) differs slightly: the Trainer averages per batch). `preprocess_logits_for_metrics` keeps two numbers
per position, the arg-max and the cross-entropy, instead of a vocabulary row.

Head. A checkpoint with a masked-LM head (bert-base-uncased) loads it; one without (the packaged MiniLM, a
sentence-transformers BertModel) gets a new transform (dense, LayerNorm) and a zero output bias, which the load report
lists as missing, while the decoder is tied to the word embeddings as in stock BERT. With LoRA the transform trains
fully and is saved with the adapter; the decoder stays tied to the frozen embeddings, and the output bias stays
frozen too: PEFT saves whole modules only, and the module holding the bias, the decoder, also holds the embedding
matrix, whose copy would make the adapter as large as the embeddings and untie them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling, DataCollatorForTokenClassification, EvalPrediction

from ..metrics import load_metric
from ..modeling_centered_bert import CenteredBertForMaskedLM
from .base import IGNORED_LABEL, TEXT, Task, TaskData, fail, require_examples, subsample_splits
from .texts import TEXT_CORPUS, check_tokenizer_fits, read_texts, tokenizer_name

if TYPE_CHECKING:
    from ..finetuning import FinetuneArguments

EVALUATION_MASKING_SEED = 0
"""Seeds the one masking of the evaluation set, whatever the run's seed."""
MASKING_BATCH_SIZE = 256
"""Evaluation rows masked per collator call in `mask_once`."""
MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask")


@dataclass
class FillMaskArguments:
    """Options of `--task fill-mask`."""

    mlm_probability: float = field(
        default=0.15,
        metadata={
            "help": "Share of the tokens (of the words, with --whole_word_mask) masked in each text, strictly between "
            "0 and 1; of them 8 in 10 become [MASK], 1 in 10 a random token, 1 in 10 stay."
        },
    )
    whole_word_mask: bool = field(
        default=False, metadata={"help": "Mask all sub-words of a word together, all with [MASK]."}
    )


@dataclass
class DataCollatorForLanguageModelingWithFixedEvaluation(DataCollatorForLanguageModeling):
    """`DataCollatorForLanguageModeling` that leaves rows masked already alone and pads offsets for whole words.

    - Rows that carry `labels` (the evaluation set, masked once by `mask_once`) are padded only, their labels with
      -100, so that every evaluation scores the same masks.
    - With `whole_word_mask` the stock collator reads each row's `offset_mapping`, which `tokenizer.pad` leaves
      unpadded (rows of different lengths then fail to stack): it is padded here like the input ids, with (0, 0).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.padding_collator = DataCollatorForTokenClassification(
            self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of, label_pad_token_id=IGNORED_LABEL
        )

    def create_rng(self) -> None:
        """The seeded generator: in a DataLoader worker seeded with `seed` + its id, as stock; elsewhere with `seed`.
        Stock refuses any process but the main one outside a DataLoader, and experiments/run_all.py runs finetune.py
        in spawned worker processes."""
        worker = torch.utils.data.get_worker_info()
        self.generator = self.get_generator(self.seed + (worker.id if worker is not None else 0))

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        if "labels" in examples[0]:
            return self.padding_collator(examples)
        if self.whole_word_mask:
            examples = self.with_padded_offsets(examples)
        return super().torch_call(examples)

    def with_padded_offsets(self, examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """`examples` with their `offset_mapping` padded to the length `tokenizer.pad` gives their input ids."""
        length = max(len(example["input_ids"]) for example in examples)
        if self.pad_to_multiple_of is not None:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = []
        for example in examples:
            offsets = [tuple(offset) for offset in example["offset_mapping"]]
            padding = [(0, 0)] * (length - len(offsets))
            offsets = offsets + padding if self.tokenizer.padding_side == "right" else padding + offsets
            padded.append({**example, "offset_mapping": offsets})
        return padded


class FillMask(Task):
    name = "fill-mask"
    modality = TEXT
    auto_class = "AutoModelForMaskedLM"
    model_class = CenteredBertForMaskedLM
    builtin_datasets = (TEXT_CORPUS,)
    column_options = ("text_column",)
    arguments = FillMaskArguments
    metric_names = ("accuracy", "perplexity")
    # PEFT has no masked-LM task type; the decoder is the tied embedding matrix and stays out (module docstring).
    head_modules = ("cls.predictions.transform",)
    remove_unused_columns = False  # the collator reads special_tokens_mask and offset_mapping, no model input

    def check_arguments(self, args: FinetuneArguments) -> None:
        probability = self.options(args).mlm_probability
        if not 0 < probability < 1:
            fail(f"mlm_probability={probability} must lie strictly between 0 and 1")

    def load_data(self, args: FinetuneArguments, config, processor) -> TaskData:
        options, data_args = self.options(args), args.data
        check_tokenizer(processor, config, options, data_args.max_seq_length)
        raw, dataset_label = read_texts(args, self.builtin_datasets)
        require_examples(raw)
        train, evaluation = subsample_splits(raw, args)

        def tokenize(batch):
            return processor(
                batch["text"],
                truncation=True,
                max_length=data_args.max_seq_length,
                return_special_tokens_mask=True,  # spares the collator a tokenizer call per row
                return_offsets_mapping=options.whole_word_mask,
            )

        with args.training.main_process_first(desc="tokenising"):
            train = train.map(tokenize, batched=True, remove_columns=["text"])
            evaluation = evaluation.map(tokenize, batched=True, remove_columns=["text"])
        masked_evaluation = mask_once(evaluation, masking_collator(processor, options, seed=EVALUATION_MASKING_SEED))
        if all(label == IGNORED_LABEL for labels in masked_evaluation["labels"] for label in labels):
            fail(
                f"masking {options.mlm_probability:.0%} of the evaluation tokens chose none of them: use more or "
                "longer evaluation texts or a larger mlm_probability"
            )
        # the over-smoothing profile of the texts themselves, not of their masked copies
        model_inputs = [name for name in MODEL_INPUTS if name in evaluation.column_names]
        return TaskData(
            train=train,
            evaluation=masked_evaluation,
            dataset_label=dataset_label,
            profile_inputs=evaluation.select_columns(model_inputs),
        )

    def data_collator(self, args: FinetuneArguments, processor) -> DataCollatorForLanguageModelingWithFixedEvaluation:
        # Training masks come from the global RNG, which the Trainer seeds and saves in its checkpoints.
        return masking_collator(processor, self.options(args))

    def preprocess_logits_for_metrics(self):
        return predicted_tokens_and_losses

    def compute_metrics(self, data: TaskData):
        return masked_token_metrics

    def card_hyperparameters(self, args: FinetuneArguments) -> dict[str, Any]:
        options = self.options(args)
        return {
            **super().card_hyperparameters(args),
            "mlm_probability": options.mlm_probability,
            "whole_word_mask": options.whole_word_mask,
        }


def check_tokenizer(tokenizer, config, options: FillMaskArguments, max_seq_length: int) -> None:
    """What the tokenizer must offer the masking and the model: a mask token, ids inside the model's vocabulary,
    offsets for whole words, and no longer sequences than the model has positions."""
    name = tokenizer_name(tokenizer)
    if tokenizer.mask_token is None:
        fail(f"the tokenizer {name} has no mask token; masked-LM training needs one (e.g. BERT's [MASK])")
    check_tokenizer_fits(tokenizer, config, max_seq_length)
    if options.whole_word_mask and not tokenizer.is_fast:
        fail(f"--whole_word_mask needs a fast tokenizer (it reads where each token lies in the text); {name} is not")


def masking_collator(
    tokenizer, options: FillMaskArguments, seed: int | None = None
) -> DataCollatorForLanguageModelingWithFixedEvaluation:
    """The collator masking as `options` say, from its own generator seeded with `seed` (None: the global RNG)."""
    # Whole words are masked with [MASK] only: said here, transformers would warn and set it itself.
    replacement = dict(mask_replace_prob=1.0, random_replace_prob=0.0) if options.whole_word_mask else {}
    return DataCollatorForLanguageModelingWithFixedEvaluation(
        tokenizer,
        mlm_probability=options.mlm_probability,
        whole_word_mask=options.whole_word_mask,
        seed=seed,
        **replacement,
    )


def mask_once(dataset: Dataset, collator: DataCollatorForLanguageModeling) -> Dataset:
    """The rows of `dataset` masked by `collator`, unpadded again: the model's inputs and the `labels`."""
    columns: dict[str, list[list[int]]] = {}
    right_padded = collator.tokenizer.padding_side == "right"
    for start in range(0, len(dataset), MASKING_BATCH_SIZE):
        rows = dataset.select(range(start, min(start + MASKING_BATCH_SIZE, len(dataset)))).to_list()
        batch = collator(rows)
        for i, row in enumerate(rows):
            length = len(row["input_ids"])
            real = slice(None, length) if right_padded else slice(-length, None)
            for key, values in batch.items():
                columns.setdefault(key, []).append(values[i, real].tolist())
    return Dataset.from_dict(columns)


def predicted_tokens_and_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per position the arg-max token and the cross-entropy (nats, 0 where the label is -100): two numbers instead of
    a vocabulary row for the Trainer to keep."""
    if isinstance(logits, tuple):  # models returning hidden states too put the logits first
        logits = logits[0]
    if logits.dim() == 2:  # config.sparse_prediction: the logits of the labelled positions, in order
        labelled = labels != IGNORED_LABEL
        tokens = torch.full_like(labels, IGNORED_LABEL)
        tokens[labelled] = logits.argmax(dim=-1)
        losses = torch.zeros(labels.shape, dtype=torch.float32, device=labels.device)
        losses[labelled] = torch.nn.functional.cross_entropy(logits.float(), labels[labelled], reduction="none")
        return tokens, losses
    losses = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORED_LABEL, reduction="none"
    )
    return logits.argmax(dim=-1), losses.view_as(labels)


def masked_token_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
    """Masked-token accuracy and perplexity over every masked position of the evaluation."""
    predicted_tokens, losses = eval_prediction.predictions
    labels = np.asarray(eval_prediction.label_ids)
    masked = labels != IGNORED_LABEL
    accuracy = load_metric("accuracy").compute(predictions=predicted_tokens[masked], references=labels[masked])
    perplexity = load_metric("perplexity").compute(predictions=losses[masked])
    return {"accuracy": accuracy["accuracy"], "perplexity": perplexity["perplexity"]}
