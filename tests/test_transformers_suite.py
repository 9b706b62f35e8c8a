"""transformers' own model tests, run on the corrected models.

`ModelTesterMixin` (and `ConfigTester`) of the transformers 5.23.0 source distribution are the standard every BERT
and ViT in transformers passes; this file runs them on `CenteredBert*` and `CenteredViT*` with corrections switched
on. The suite is not in the transformers wheel: the first run downloads the sdist from PyPI with pip (hash-pinned)
into pytest's cache (`.pytest_cache/d/transformers-tests`, or `$HF_CENTERED_TRANSFORMERS_TESTS`) and imports its
`tests` folder as the package `transformers_tests`. The sdist ships `tests/*.py` only: the three modules those import
from sub-folders it lacks are supplied here (`ExportTesterMixin` and `GenerationTesterMixin` as empty mixins, so no
`torch.export` or `generate` test runs, and `config_common_kwargs`, see `CONFIG_COMMON_KWARGS`). Without PyPI the
module is skipped with one line, except under CI (`$CI` set), where that is a failure.

The testers mirror the stock `BertModelTester` / `ViTModelTester` of transformers' repository (same sizes, dropout,
inputs and labels, but 14×14 images instead of 30×30), building our configurations; each family runs under
`CONFIGURATIONS`: centered attention with learned strengths, NeuTRENO at a fixed strength, and centered attention,
ContraNorm and DGN at fixed strengths under a gated fusion. The model classes are those of the stock `BertModelTest` /
`ViTModelTest` (but the causal `BertLMHeadModel`, which the corrected encoders refuse): the backbone, masked LM,
sequence, token and image classification in every configuration, the further `heads` (question answering, multiple
choice, next-sentence prediction, pre-training, masked image modelling) in `HEADS_CONFIGURATION` only, with
`CenteredViTForSemanticSegmentation`, which has no stock twin (the suite gives it per-pixel labels). Stock BERT and ViT
(the same testers, stock classes and configurations) pass every selected test here.

Selection rule (this file must stay within about 60-90 s of the suite's 2-core budget):
- every test of `ModelTesterMixin` that stock BERT/ViT pass on a CPU machine runs for every configuration, except
  the costliest (`SLOW_TESTS`: the loading-dtype variants, the outputs' equivalence, and eager against SDPA beyond
  float32), which run in `FULL_CONFIGURATION` only;
- tests that stock skips on a CPU machine, or that do not apply to these models (`NOT_RUN_BY_STOCK*`: GPU, flash
  attention, DeepSpeed, offloading, RoPE, MoE, composite or generative models) are not collected;
- a selected test that skips for our model fails (stock runs it), and one that stock passes and ours fails is marked
  `xfail(strict=True)` in `KNOWN_FAILURES` with its cause, so it turns into a failure once the fix lands.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import types
import unittest
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
from transformers import BertForPreTraining
from transformers.models.auto import modeling_auto

from hf_centered import (
    CenteredBertConfig,
    CenteredBertForMaskedLM,
    CenteredBertForMultipleChoice,
    CenteredBertForNextSentencePrediction,
    CenteredBertForPreTraining,
    CenteredBertForQuestionAnswering,
    CenteredBertForSequenceClassification,
    CenteredBertForTokenClassification,
    CenteredBertModel,
    CenteredViTConfig,
    CenteredViTForImageClassification,
    CenteredViTForMaskedImageModeling,
    CenteredViTForSemanticSegmentation,
    CenteredViTModel,
)

TRANSFORMERS_VERSION = "5.23.0"
SDIST_SHA256 = "19d647a4d5d903a7c644ca5cde2d86efc3dde7d8c687ae7988806ff2205efa71"
SUITE_PACKAGE = "transformers_tests"

# `config_common_kwargs` (tests/utils/test_configuration_utils.py, not in the sdist): non-default values of the
# generic `PreTrainedConfig` fields, which `ConfigTester.check_config_arguments_init` sets and reads back.
CONFIG_COMMON_KWARGS = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["BertModel"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "tokenizer_class": "BertTokenizerFast",
    "pad_token_id": 7,
}


def _download_suite(cache_dir: Path) -> Path:
    """Downloads the transformers sdist with pip and unpacks its `tests/*.py` as the package `SUITE_PACKAGE` under
    `cache_dir/<version>`; returns that folder. Several processes (pytest-xdist workers) may race: each unpacks into
    its own temporary folder and renames it into place, and a loser uses the winner's."""
    target = cache_dir / TRANSFORMERS_VERSION
    if (target / SUITE_PACKAGE / "test_modeling_common.py").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as work:
        requirement = Path(work, "requirements.txt")
        requirement.write_text(f"transformers=={TRANSFORMERS_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", "transformers"]
        command += ["--require-hashes", "-r", str(requirement), "-d", work]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()] or ["(no output)"]
            raise OSError(f"`pip download transformers=={TRANSFORMERS_VERSION}` failed: {lines[-1].strip()}")
        unpacked = Path(work, "unpacked")
        package = unpacked / SUITE_PACKAGE
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        prefix = f"transformers-{TRANSFORMERS_VERSION}/tests/"
        with tarfile.open(Path(work, f"transformers-{TRANSFORMERS_VERSION}.tar.gz")) as sdist:
            for member in sdist.getmembers():
                name = member.name.removeprefix(prefix)
                if member.isfile() and member.name.startswith(prefix) and "/" not in name and name.endswith(".py"):
                    (package / name).write_bytes(sdist.extractfile(member).read())
        try:
            os.replace(unpacked, target)
        except OSError:
            if not (target / SUITE_PACKAGE / "test_modeling_common.py").is_file():
                raise
    return target


def _stub_module(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    sys.modules.setdefault(name, module)


def load_transformers_tests() -> tuple[types.ModuleType, types.ModuleType]:
    """`(test_modeling_common, test_configuration_common)` of the transformers sdist, downloaded on first use."""
    cache_dir = Path(os.environ.get("HF_CENTERED_TRANSFORMERS_TESTS") or Path(tempfile.gettempdir(), "hf_centered"))
    root = str(_download_suite(cache_dir))
    if root not in sys.path:
        sys.path.insert(0, root)
    for package in ("exporters", "generation", "utils"):
        _stub_module(f"{SUITE_PACKAGE}.{package}", __path__=[])
    _stub_module(f"{SUITE_PACKAGE}.exporters.test_export", ExportTesterMixin=type("ExportTesterMixin", (), {}))
    _stub_module(f"{SUITE_PACKAGE}.generation.test_utils", GenerationTesterMixin=type("GenerationTesterMixin", (), {}))
    _stub_module(f"{SUITE_PACKAGE}.utils.test_configuration_utils", config_common_kwargs=CONFIG_COMMON_KWARGS)
    return (
        importlib.import_module(f"{SUITE_PACKAGE}.test_modeling_common"),
        importlib.import_module(f"{SUITE_PACKAGE}.test_configuration_common"),
    )


try:
    common, configuration_common = load_transformers_tests()
except (OSError, subprocess.SubprocessError) as error:
    if os.environ.get("CI"):
        raise
    pytest.skip(f"transformers' test suite is unavailable (PyPI unreachable?): {error}", allow_module_level=True)

ModelTesterMixin = common.ModelTesterMixin
ConfigTester = configuration_common.ConfigTester
floats_tensor, ids_tensor, random_attention_mask = common.floats_tensor, common.ids_tensor, common.random_attention_mask


class Tester:
    """What both testers hold: the test case they report to, and the configuration class and corrections to build."""

    def __init__(self, parent: unittest.TestCase, config_class: type, **corrections):
        self.parent = parent
        self.config_class = config_class
        self.corrections = corrections


class BertTester(Tester):
    """The stock `BertModelTester`'s sizes and inputs, building `config_class` with `corrections`."""

    batch_size = 13
    seq_length = 7
    vocab_size = 99
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    intermediate_size = 37
    max_position_embeddings = 512
    type_vocab_size = 16
    type_sequence_label_size = 2
    num_labels = 3
    num_choices = 4
    is_training = True

    def get_config(self):
        return self.config_class(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            is_decoder=False,
            initializer_range=0.02,
            **self.corrections,
        )

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        token_type_ids = ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size)
        sequence_labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
        token_labels = ids_tensor([self.batch_size, self.seq_length], self.num_labels)
        return self.get_config(), input_ids, token_type_ids, attention_mask, sequence_labels, token_labels

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, token_type_ids, attention_mask, *_ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


class ViTTester(Tester):
    """The stock `ViTModelTester`'s sizes and inputs (eager attention, as there), building `config_class`."""

    batch_size = 13
    image_size = 14  # the stock tester's 30 (226 tokens) costs a quarter of this file's time: 50 tokens here
    patch_size = 2
    num_channels = 3
    hidden_size = 32
    num_hidden_layers = 2
    num_attention_heads = 4
    intermediate_size = 37
    type_sequence_label_size = 10
    is_training = True
    # The sequence is the patches and the [CLS] token; half of it is masked in masked image modelling.
    mask_length = (image_size // patch_size) ** 2
    seq_length = mask_length + 1
    mask_ratio = 0.5
    num_masks = int(mask_ratio * seq_length)

    def get_config(self):
        return self.config_class(
            image_size=self.image_size,
            patch_size=self.patch_size,
            num_channels=self.num_channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            is_decoder=False,
            initializer_range=0.02,
            encoder_stride=2,
            attn_implementation="eager",
            **self.corrections,
        )

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        labels = ids_tensor([self.batch_size], self.type_sequence_label_size)
        return self.get_config(), pixel_values, labels

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, _ = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


CONFIGURATIONS = {
    "centered_learned": dict(correction="centered", correction_strength="learned"),
    "neutreno_fixed": dict(correction="neutreno", neutreno_lambda=0.6),
    "centered_contranorm_dgn_gate": dict(correction=["centered", "contranorm", "dgn"], dgn_groups=3, fusion="gate"),
}
"""The corrections each family runs under. Learned strengths start at 0, so the first one checks the gates' own
parameters (initialisation, loading, gradients) on a model that computes the stock function; the other two run with
every correction active."""
FULL_CONFIGURATION = "centered_contranorm_dgn_gate"
"""The configuration that also runs `SLOW_TESTS`."""
HEADS_CONFIGURATION = "neutreno_fixed"
"""The configuration that also runs each family's further `heads`: every head doubles the time of the tests that
loop over the model classes, and the heads only add their layers on top of a backbone the other classes test."""

# Tests of `ModelTesterMixin` that stock BERT and ViT skip on a CPU machine (GPU, flash attention, DeepSpeed, kernels,
# accelerate offloading), that do not apply to an encoder with absolute positions (RoPE, MoE, sliding windows,
# composite, decoder or seq2seq models, tensor parallelism), or where every check is a subtest stock skips
# (`_keep_in_fp32_modules`, weight conversions). Not collected.
NOT_RUN_BY_STOCK = {
    "test_attn_implementation_composite_models",
    "test_can_be_initialized_on_meta",
    "test_can_init_all_missing_weights",
    "test_can_load_with_device_context_manager",
    "test_can_load_with_global_device_set",
    "test_can_set_attention_dynamically_composite_model",
    "test_causal_lm_loss_honors_shift_labels",
    "test_cpu_offload",
    "test_disk_offload_bin",
    "test_disk_offload_safetensors",
    "test_encoder_decoder_loss_no_double_shift",
    "test_flex_attention_with_grads",
    "test_internal_model_config_and_subconfig_are_same",
    "test_keep_in_fp32_modules",
    "test_keep_in_fp32_modules_exist",
    "test_kernels_can_load_without_crashing",
    "test_model_parallelism",
    "test_model_rope_scaling_frequencies",
    "test_model_rope_with_partial_rotation",
    "test_moe_models_record_router_logits",
    "test_output_router_logits_from_config",
    "test_resize_embeddings_untied_with_deepspeed",
    "test_resize_embeddings_untied_with_deepspeed_multi_gpu",
    "test_resize_position_vector_embeddings",
    "test_resize_tokens_embeddings_with_deepspeed",
    "test_resize_tokens_embeddings_with_deepspeed_multi_gpu",
    "test_sdpa_can_compile_dynamic",
    "test_sdpa_can_dispatch_composite_models",
    "test_sdpa_can_dispatch_on_flash",
    "test_sliding_window_mask",
    "test_tied_head_has_a_tp_plan_entry",
    "test_torch_compile_for_training",
    "test_tp_plan_matches_params",
    "test_vision_axial_rope",
}
NOT_RUN_BY_STOCK_PREFIXES = (
    "test_flash_attn_",
    "test_eager_matches_batched_and_grouped_inference_",
    "test_model_rope_scaling_from_config_",
)
NOT_RUN_BY_STOCK_PER_FAMILY = {
    # BERT has no weight-conversion mapping, so these two only skip.
    "Bert": {"test_reverse_loading_mapping", "test_can_load_from_already_mapped_keys"},
    # A ViT has no token embeddings to resize nor `inputs_embeds`, and no loss the input-grad check can use.
    "ViT": {
        "test_enable_input_require_grads_with_gradient_checkpointing",
        "test_inputs_embeds",
        "test_inputs_embeds_matches_input_ids",
        "test_resize_embeddings_untied",
        "test_resize_embeddings_untied_no_reinit_on_post_init",
        "test_resize_tokens_embeddings",
    },
}

# The costliest tests (each over a second per configuration), run in `FULL_CONFIGURATION` only: the loading
# dtype variants and the outputs' equivalence across `return_dict`/`output_*`, and eager against SDPA in every dtype
# and padding variant; the other configurations run eager against SDPA in float32, padded on either side.
SLOW_TESTS = {"test_bc_torch_dtype", "test_model_outputs_equivalence"}
SLOW_TEST_PREFIXES = ("test_eager_matches_sdpa_inference_",)
FAST_VARIANTS = {
    "test_eager_matches_sdpa_inference_09_fp32_pad_left",
    "test_eager_matches_sdpa_inference_13_fp32_pad_right",
    "test_eager_matches_sdpa_inference_24_fp32_pad_left_output_attentions",
}

# A test stock passes and ours does not: `{(family, test name): reason}`, marked `xfail(strict=True)`, so it fails
# once the fix lands and the entry must go.
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _stock_class(model_class: type) -> type:
    """The stock transformers class a model class derives from (itself for a stock class)."""
    return next(cls for cls in model_class.__mro__ if cls.__module__.startswith("transformers."))


# Our heads without a stock twin, and the Auto mapping that decides their inputs and labels.
WITHOUT_STOCK_TWIN = {
    CenteredViTForSemanticSegmentation.__name__: modeling_auto.MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
}


class SuiteMixin(ModelTesterMixin):
    """What each test class shares: the stock tester, and our classes entered in the Auto mappings by name.

    `ModelTesterMixin` decides a class's inputs and labels by looking its name up in the stock `*_MAPPING_NAMES`
    (e.g. `MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES`); each of our classes is entered, for the duration of a
    test, in every mapping that lists its stock base class for the stock model type, or for a head without a stock
    twin, in the mapping of its Auto class (`WITHOUT_STOCK_TWIN`).
    """

    model_tester_class: type
    config_class: type
    stock_model_type: str
    config_tester_kwargs: dict
    corrections: dict = {}

    def setUp(self):
        super().setUp()
        common.global_rng.seed(0)  # the suite draws its inputs from this generator: the same inputs on every run
        self.model_tester = self.model_tester_class(self, self.config_class, **self.corrections)
        model_type = self.config_class.model_type
        for name, mapping in vars(modeling_auto).items():
            if not (name.endswith("_MAPPING_NAMES") and isinstance(mapping, dict)):
                continue
            for model_class in self.all_model_classes:
                stock_name = _stock_class(model_class).__name__
                if model_class.__name__ in WITHOUT_STOCK_TWIN:
                    entered = mapping is WITHOUT_STOCK_TWIN[model_class.__name__]
                else:
                    entered = model_class.__name__ != stock_name and mapping.get(self.stock_model_type) == stock_name
                if entered:
                    patcher = mock.patch.dict(mapping, {model_type: model_class.__name__})
                    patcher.start()
                    self.addCleanup(patcher.stop)

    def test_config(self):
        tester = ConfigTester(self, config_class=self.config_class, **self.config_tester_kwargs, **self.corrections)
        tester.run_common_tests()


class BertSuiteMixin(SuiteMixin):
    """The stock `BertModelTest`'s own input preparation: pre-training also takes the next-sentence labels."""

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and issubclass(model_class, BertForPreTraining):
            batch_size, seq_length = self.model_tester.batch_size, self.model_tester.seq_length
            inputs_dict["labels"] = torch.zeros((batch_size, seq_length), dtype=torch.long)
            inputs_dict["next_sentence_label"] = torch.zeros(batch_size, dtype=torch.long)
        return inputs_dict


class ViTSuiteMixin(SuiteMixin):
    """The stock `ViTModelTest`'s own version of a common test: a ViT's input embeddings are its patch embeddings."""

    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), torch.nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, torch.nn.Linear))


FAMILIES = {
    "Bert": dict(
        suite=BertSuiteMixin,
        model_tester_class=BertTester,
        config_class=CenteredBertConfig,
        stock_model_type="bert",
        config_tester_kwargs=dict(hidden_size=37),
        all_model_classes=(
            CenteredBertModel,
            CenteredBertForMaskedLM,
            CenteredBertForSequenceClassification,
            CenteredBertForTokenClassification,
        ),
        heads=(
            CenteredBertForMultipleChoice,
            CenteredBertForNextSentencePrediction,
            CenteredBertForPreTraining,
            CenteredBertForQuestionAnswering,
        ),
    ),
    "ViT": dict(
        suite=ViTSuiteMixin,
        model_tester_class=ViTTester,
        config_class=CenteredViTConfig,
        stock_model_type="vit",
        config_tester_kwargs=dict(hidden_size=37, has_text_modality=False),
        all_model_classes=(CenteredViTModel, CenteredViTForImageClassification),
        heads=(CenteredViTForMaskedImageModeling, CenteredViTForSemanticSegmentation),
        test_resize_embeddings=False,
    ),
}


def is_selected(family: str, configuration: str, name: str) -> bool:
    """Whether the test `name` of `family` runs under `configuration` (the selection rule of the module docstring)."""
    if name in NOT_RUN_BY_STOCK | NOT_RUN_BY_STOCK_PER_FAMILY[family] or name.startswith(NOT_RUN_BY_STOCK_PREFIXES):
        return False
    is_slow = name in SLOW_TESTS or (name.startswith(SLOW_TEST_PREFIXES) and name not in FAST_VARIANTS)
    return configuration == FULL_CONFIGURATION or not is_slow


def _must_not_skip(test: Callable, family: str) -> Callable:
    """`test`, failing where it would skip: the selected tests all run for the stock model."""

    @functools.wraps(test)
    def run(self):
        try:
            test(self)
        except unittest.SkipTest as skip:
            raise AssertionError(f"skipped, where stock {family} runs it: {skip}") from None

    return run


def _test_class(family: str, configuration: str) -> type:
    """The `unittest.TestCase` of `family` under `configuration`: the selected tests, known failures marked."""
    attributes = dict(FAMILIES[family], corrections=CONFIGURATIONS[configuration], __module__=__name__)
    suite = attributes.pop("suite")
    heads = attributes.pop("heads")
    if configuration == HEADS_CONFIGURATION:
        attributes["all_model_classes"] += heads
    for name in dir(suite):
        if not name.startswith("test_") or not callable(getattr(suite, name)):
            continue
        if not is_selected(family, configuration, name):
            attributes[name] = None  # unittest collects callable attributes only
            continue
        test = _must_not_skip(getattr(suite, name), family)
        if (family, name) in KNOWN_FAILURES:
            test = pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[family, name])(test)
        attributes[name] = test
    return type(f"TestCentered{family}_{configuration}", (suite, unittest.TestCase), attributes)


for _family in FAMILIES:
    for _configuration in CONFIGURATIONS:
        _test_case = _test_class(_family, _configuration)
        globals()[_test_case.__name__] = _test_case
del _test_case  # pytest collects every TestCase of the module, whatever name it is bound to
