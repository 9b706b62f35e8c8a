"""Real clients: PEFT (default targets, prefix tuning, frozen DGN), Trainer folders, old-style gradient checkpointing
in config.json, torch.jit.trace and the image-classification pipeline."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import (
    CORRECTIONS,
    FUSIONS,
    TINY_DIGITS_VIT,
    bert_config,
    bert_inputs,
    pad_more,
    run_without_the_package,
    stock_config,
    vit_config,
    vit_inputs,
)
from peft import IA3Config, LoraConfig, PrefixTuningConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from transformers import (
    BertForSequenceClassification,
    BertModel,
    DynamicCache,
    Trainer,
    TrainingArguments,
    ViTForImageClassification,
    ViTModel,
    pipeline,
)
from transformers.modeling_layers import GradientCheckpointingLayer

from hf_centered import (
    CenteredBertForSequenceClassification,
    CenteredBertModel,
    CenteredViTForImageClassification,
    CenteredViTModel,
    finetuning,
    modeling_centered_bert,
    modeling_centered_vit,
)
from hf_centered.data import DIGITS_MAX_VALUE, digits

METHODS = [["none"], *([name] for name in CORRECTIONS), CORRECTIONS]


def _adapted_module_names(model: torch.nn.Module) -> set[str]:
    return {name.split(".", 2)[-1] for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)}


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_default_targets_are_stock_berts(method):
    """Without `target_modules`, PEFT adapts the modules it adapts in a stock BERT, and the adapter starts as the
    identity."""
    config, inputs = bert_config(), bert_inputs()
    model = CenteredBertForSequenceClassification(config).eval()
    stock = BertForSequenceClassification(stock_config(config))
    peft_class = LoraConfig if method == "lora" else IA3Config
    with torch.no_grad():
        expected = model(**inputs).logits
    adapted = get_peft_model(model, peft_class(task_type="SEQ_CLS"))
    stock_adapted = get_peft_model(stock, peft_class(task_type="SEQ_CLS"))
    assert _adapted_module_names(adapted) == _adapted_module_names(stock_adapted)
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, expected)


@pytest.mark.parametrize(
    ("method", "targets"),
    [("lora", {"q_proj", "v_proj"}), ("ia3", {"k_proj", "v_proj", "o_proj", "fc2"})],
)
def test_peft_default_targets_of_the_vit_are_berts_in_vit_names(method, targets):
    """PEFT has no default targets for the 5.x ViT (its few `vit` entries use the pre-5.x `query`/`value`): ours are
    BERT's, renamed (IA3 scales the inputs of the output projections like BERT's `output.dense`)."""
    model, inputs = CenteredViTForImageClassification(vit_config()).eval(), vit_inputs()
    with torch.no_grad():
        expected = model(**inputs).logits
    peft_config = LoraConfig() if method == "lora" else IA3Config()
    adapted = get_peft_model(model, peft_config)
    assert {name.rsplit(".", 1)[-1] for name in _adapted_module_names(adapted)} == targets
    if method == "ia3":
        assert set(adapted.peft_config["default"].feedforward_modules) == {"o_proj", "fc2"}
    with torch.no_grad():
        torch.testing.assert_close(adapted(**inputs).logits, expected)


def _prefix_tuned(model: torch.nn.Module) -> torch.nn.Module:
    return get_peft_model(model, PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4))


def test_prefix_tuning_without_correction_equals_stock_bert():
    config, inputs = bert_config(correction="none"), bert_inputs()
    model = _prefix_tuned(CenteredBertForSequenceClassification(config)).eval()
    stock = BertForSequenceClassification(stock_config(config))
    stock.load_state_dict(model.get_base_model().state_dict(), strict=False)
    stock = _prefix_tuned(stock).eval()
    stock.prompt_encoder.load_state_dict(model.prompt_encoder.state_dict())
    stock.base_model.classifier.load_state_dict(model.base_model.classifier.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fusion", ["none", "gate"])
@pytest.mark.parametrize("methods", METHODS, ids="+".join)
def test_prefix_tuning_trains_every_method_and_keeps_padding_invariance(methods, fusion):
    model = _prefix_tuned(CenteredBertForSequenceClassification(bert_config(correction=methods, fusion=fusion)))
    inputs, labels = bert_inputs(), torch.tensor([0, 2, 1])
    for training in (True, False):
        model.train(training)
        with torch.no_grad():
            padded, unpadded = model(**pad_more(inputs, 3)).logits, model(**inputs).logits
        torch.testing.assert_close(padded, unpadded, atol=1e-5, rtol=1e-5)
    model.train()
    model(**inputs, labels=labels).loss.backward()
    prompt_gradient = model.prompt_encoder["default"].embedding.weight.grad
    assert prompt_gradient is not None and prompt_gradient.abs().sum() > 0


def test_centering_with_a_prefix_averages_the_virtual_and_the_real_keys():
    """With prefix tuning the keys are the virtual ones, then the tokens': the centered context subtracts the mean of
    the values over every key a query may attend to, so each row of the centered attention still sums to 0."""
    config = bert_config(correction="centered", num_hidden_layers=1)
    model = CenteredBertModel(config).eval()
    inputs, num_virtual, heads, head_dim = bert_inputs(), 4, config.num_attention_heads, 9
    batch_size = inputs["input_ids"].shape[0]
    virtual_keys, virtual_values = torch.randn(2, batch_size, heads, num_virtual, head_dim)
    cache = DynamicCache(config=config)
    cache.update(virtual_keys, virtual_values, 0)
    attendable = torch.cat([torch.ones(batch_size, num_virtual, dtype=torch.long), inputs["attention_mask"]], dim=1)

    attention = model.encoder.layer[0].attention.self
    seen = {}
    attention.register_forward_pre_hook(lambda module, args, kwargs: seen.update(hidden=args[0]), with_kwargs=True)
    attention.register_forward_hook(lambda module, args, output: seen.update(output=output[0]))
    with torch.no_grad():
        model(input_ids=inputs["input_ids"], attention_mask=attendable, past_key_values=cache)

        def split_heads(tensor):
            return tensor.view(batch_size, -1, heads, head_dim).transpose(1, 2)

        hidden = seen["hidden"]
        query = split_heads(attention.query(hidden))
        keys = torch.cat([virtual_keys, split_heads(attention.key(hidden))], dim=2)
        values = torch.cat([virtual_values, split_heads(attention.value(hidden))], dim=2)
        real = attendable.bool()[:, None, None, :]
        scores = (query @ keys.transpose(-1, -2) / head_dim**0.5).masked_fill(~real, float("-inf"))
        value_mean = (values * real.transpose(-1, -2)).sum(dim=2, keepdim=True) / real.sum(dim=-1, keepdim=True)
        context = torch.softmax(scores, dim=-1) @ values - config.centered_scale * value_mean
        expected = model.encoder.layer[0].attention.output.dense(context.transpose(1, 2).reshape(hidden.shape))
    real_tokens = inputs["attention_mask"].bool()
    torch.testing.assert_close(seen["output"][real_tokens], expected[real_tokens], atol=1e-5, rtol=1e-5)


def test_a_frozen_dgn_keeps_its_running_statistics():
    """Under an adapter that does not save DGN, its running statistics must stay those of the base model."""
    inputs = bert_inputs()
    model = CenteredBertForSequenceClassification(bert_config(correction="dgn"))
    adapted = get_peft_model(model, LoraConfig(target_modules=["query", "value"]))
    adapted.train()

    def running_statistics():
        return {name: buffer.clone() for name, buffer in adapted.named_buffers() if "running" in name}

    before = running_statistics()
    adapted(**inputs)
    after = running_statistics()
    assert before and all(torch.equal(after[name], before[name]) for name in before)

    trainable = CenteredBertForSequenceClassification(bert_config(correction="dgn")).train()
    running_mean = trainable.bert.encoder.layer[0].corrections["dgn"].running_mean.clone()
    trainable(**inputs)
    assert not torch.equal(trainable.bert.encoder.layer[0].corrections["dgn"].running_mean, running_mean)


LOAD_WITH_EVERY_AUTO_CLASS = """
    import json, transformers
    loaded = {}
    for folder_and_class in sys.argv[1:]:
        folder, auto_class = folder_and_class.split("::")
        # a head of another size (multiple choice's one output, NSP's two) starts new, as with stock BERT
        model = getattr(transformers, auto_class).from_pretrained(
            folder, trust_remote_code=True, ignore_mismatched_sizes=True
        )
        assert "hf_centered" not in type(model).__module__, type(model).__module__
        loaded[folder_and_class] = type(model).__name__
    print(json.dumps(loaded))
"""


def test_trainer_and_save_pretrained_folders_load_with_every_auto_class_without_the_package(tmp_path):
    """`Trainer.save_model` and a plain `save_pretrained` write the complete `auto_map` (not only the saved class)."""
    bert_folder, vit_folder = tmp_path / "bert", tmp_path / "vit"
    bert = CenteredBertForSequenceClassification(bert_config(correction=["centered", "dgn"], fusion="gate"))
    training_args = TrainingArguments(output_dir=str(bert_folder), report_to="none", use_cpu=True)
    Trainer(model=bert, args=training_args).save_model()
    CenteredViTForImageClassification(vit_config()).save_pretrained(vit_folder)
    # every head of each modelling file, and the configuration
    expected = {
        folder: {"AutoConfig": config_name} | {auto: cls.__name__ for auto, cls in modeling.AUTO_MODEL_CLASSES.items()}
        for folder, config_name, modeling in (
            (bert_folder, "CenteredBertConfig", modeling_centered_bert),
            (vit_folder, "CenteredViTConfig", modeling_centered_vit),
        )
    }
    assert len(expected[bert_folder]) == 9 and len(expected[vit_folder]) == 5
    for folder, classes in expected.items():
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert {name: reference.rsplit(".", 1)[-1] for name, reference in auto_map.items()} == classes
    wanted = {f"{folder}::{auto}": name for folder, classes in expected.items() for auto, name in classes.items()}
    assert run_without_the_package(tmp_path, LOAD_WITH_EVERY_AUTO_CLASS, *wanted) == wanted


def _checkpointing_flags_and_recomputations(model: torch.nn.Module, inputs: dict) -> tuple[list[bool], int]:
    """Each checkpointing layer's flag, and how often the first one's attention ran in one training step (2: the
    layer was recomputed; the layer's own hooks stay outside the checkpoint)."""
    layers = [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]
    calls = []
    handle = layers[0].attention.register_forward_hook(lambda *args: calls.append(1))
    model.train()
    output = model(**inputs)
    (output.logits if hasattr(output, "logits") else output.last_hidden_state).sum().backward()
    handle.remove()
    return [layer.gradient_checkpointing for layer in layers], len(calls)


@pytest.mark.parametrize(
    ("stock_class", "centered_class"),
    [
        (BertModel, CenteredBertModel),
        (BertForSequenceClassification, CenteredBertForSequenceClassification),
        (ViTModel, CenteredViTModel),
        (ViTForImageClassification, CenteredViTForImageClassification),
    ],
    ids=lambda cls: cls.__name__,
)
def test_old_style_gradient_checkpointing_in_config_json_is_honoured_like_stock(tmp_path, stock_class, centered_class):
    config, inputs = (bert_config(), bert_inputs()) if "Bert" in stock_class.__name__ else (vit_config(), vit_inputs())
    results = []
    for model_class, model_config in ((stock_class, stock_config(config)), (centered_class, config)):
        folder = tmp_path / model_class.__name__
        model_class(model_config).save_pretrained(folder)
        saved = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**saved, "gradient_checkpointing": True}))
        model = model_class.from_pretrained(folder)
        assert not hasattr(model.config, "gradient_checkpointing")  # consumed, so never saved again
        results.append(_checkpointing_flags_and_recomputations(model, inputs))
    stock_result, centered_result = results
    assert stock_result == ([True] * config.num_hidden_layers, 2)
    assert centered_result == stock_result


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("architecture", ["bert", "vit"])
def test_torch_jit_trace_of_every_method_gives_the_eager_outputs_and_saves(tmp_path, architecture, fusion):
    """Tracing checks its graph by recording it again without autograd, so the fusions must take the same path with
    and without it; the saved trace must hold no autograd Function."""
    for strength in ("fixed", "learned"):
        if architecture == "bert":
            config, inputs = (
                bert_config(correction=CORRECTIONS, fusion=fusion, correction_strength=strength),
                bert_inputs(),
            )
            model = CenteredBertForSequenceClassification(config)
        else:
            config, inputs = (
                vit_config(correction=CORRECTIONS, fusion=fusion, correction_strength=strength),
                vit_inputs(),
            )
            model = CenteredViTForImageClassification(config)
        with torch.no_grad():  # gates away from 0, as after training
            for name, parameter in model.named_parameters():
                if "strength_gate" in name:
                    parameter.normal_(std=0.01)
        model.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(model, example_kwarg_inputs=inputs, strict=False)
        torch.jit.save(traced, tmp_path / "traced.pt")
        reloaded = torch.jit.load(tmp_path / "traced.pt")
        with torch.no_grad():
            expected = model(**inputs).logits
            torch.testing.assert_close(traced(**inputs)["logits"], expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(reloaded(**inputs)["logits"], expected, atol=1e-6, rtol=0)


CLASSIFY_WITHOUT_THE_PACKAGE = """
    import json
    from PIL import Image
    from transformers import pipeline
    folder, image_file = sys.argv[1:]
    classify = pipeline("image-classification", model=folder, trust_remote_code=True)
    grey = Image.open(image_file)
    print(json.dumps({mode: classify(grey.convert(mode), top_k=10) for mode in ("L", "RGB")}))
"""


def test_digits_export_classifies_pil_images_in_the_pipeline(tmp_path):
    """A 1-channel digits ViT from finetune.py: grey and RGB PIL images reach it as the grey pixels it trained on."""
    output_dir = tmp_path / "digits"
    argv = ["--dataset_name", "digits", "--architecture", json.dumps(TINY_DIGITS_VIT), "--max_steps", "2"]
    argv += ["--max_eval_samples", "20", "--profile_sequences", "0", "--output_dir", str(output_dir)]
    finetuning.main(argv)

    images, _ = digits()
    trained_pixels = torch.as_tensor(images[:1] / DIGITS_MAX_VALUE, dtype=torch.float32)[:, None]  # (1, 1, 8, 8)
    grey = Image.fromarray(np.round(images[0] * 255 / DIGITS_MAX_VALUE).astype(np.uint8))  # mode "L"
    image_file = tmp_path / "digit.png"
    grey.save(image_file)
    classify = pipeline("image-classification", model=str(output_dir), trust_remote_code=True)
    results = {}
    for mode in ("L", "RGB"):
        image = grey.convert(mode)
        pixel_values = classify.image_processor(images=image, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(pixel_values, trained_pixels, atol=1 / 255, rtol=0)  # 8-bit rounding
        results[mode] = classify(image, top_k=10)
        assert {result["label"] for result in results[mode]} == {str(digit) for digit in range(10)}
    remote = run_without_the_package(tmp_path, CLASSIFY_WITHOUT_THE_PACKAGE, str(output_dir), str(image_file))
    for mode_results in (results["RGB"], remote["L"], remote["RGB"]):
        assert [result["label"] for result in mode_results] == [result["label"] for result in results["L"]]
        scores = [result["score"] for result in mode_results]
        np.testing.assert_allclose(scores, [result["score"] for result in results["L"]], atol=1e-6)


def test_a_strength_changed_on_the_config_reaches_the_copies_peft_trains():
    """`modules_to_save` deep-copies the correction modules; the copies must still read the model's configuration."""
    model = CenteredBertForSequenceClassification(bert_config(correction=["centered", "dgn"]))
    adapted = get_peft_model(
        model, LoraConfig(target_modules=["query", "value"], modules_to_save=finetuning.peft_modules_to_save(model))
    ).eval()
    inputs = bert_inputs()
    with torch.no_grad():
        before = adapted(**inputs).logits
        adapted.config.centered_scale = adapted.config.dgn_lambda = 0.0
        after = adapted(**inputs).logits
    stock = BertForSequenceClassification(stock_config(model.config)).eval()
    stock.load_state_dict(adapted.merge_and_unload().state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(after, stock(**inputs).logits, atol=1e-6, rtol=0)
    assert (after - before).abs().max() > 1e-3
    whole_copy = copy.deepcopy(model)  # a copy of the whole model reads its own copy of the configuration
    whole_copy.config.centered_scale = 0.5
    assert model.config.centered_scale == 0.0
    assert whole_copy.bert.encoder.layer[0].attention.self.corrections["centered"].config is whole_copy.config
