"""Hub-ready export: loads with trust_remote_code where hf_centered cannot be imported, with identical outputs."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    VIT_SIZES,
    bert_config,
    bert_inputs,
    run_without_the_package,
    stock_config,
    vit_config,
    vit_inputs,
)
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from torch.nn import functional as F
from transformers import (
    AutoModelForSemanticSegmentation,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    ViTModel,
    pipeline,
)

from hf_centered import (
    CenteredBertForMultipleChoice,
    CenteredBertForNextSentencePrediction,
    CenteredBertForPreTraining,
    CenteredBertForQuestionAnswering,
    CenteredBertForSequenceClassification,
    CenteredBertModel,
    CenteredViTForImageClassification,
    CenteredViTForMaskedImageModeling,
    CenteredViTForSemanticSegmentation,
    CenteredViTImageProcessor,
    export_for_hub,
    push_to_hub,
)
from hf_centered.cli import main as cli_main
from hf_centered.hub import EXPORT_MANIFEST

REPO_ROOT = Path(__file__).resolve().parents[1]

LOAD_WITHOUT_PACKAGE = """
    import json, torch
    import transformers
    folder, auto_class = sys.argv[1], sys.argv[2]
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_centered" not in type(model).__module__, type(model).__module__
    inputs = torch.load(folder + "/../inputs.pt")
    with torch.no_grad():
        output = model(**inputs)
    torch.save(output.logits, folder + "/../remote_logits.pt")
    base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    print(json.dumps({"class": type(model).__name__, "base": type(base).__name__}))
"""


# Every Auto class an exported folder's auto_map names, besides AutoConfig and AutoModel.
EXPORTED_HEADS = {
    "bert": {
        "AutoModelForSequenceClassification",
        "AutoModelForMaskedLM",
        "AutoModelForTokenClassification",
        "AutoModelForQuestionAnswering",
        "AutoModelForMultipleChoice",
        "AutoModelForNextSentencePrediction",
        "AutoModelForPreTraining",
    },
    "vit": {"AutoModelForImageClassification", "AutoModelForMaskedImageModeling", "AutoModelForSemanticSegmentation"},
}


def _move_learned_gates(model: torch.nn.Module) -> None:
    """Gates away from their initial 0, as after training."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "strength_gate" in name:
                parameter.normal_(std=0.01)


@pytest.mark.parametrize("strength", ["fixed", "learned"])
@pytest.mark.parametrize(
    ("family", "auto_class"),
    [("bert", "AutoModelForSequenceClassification"), ("vit", "AutoModelForImageClassification")],
)
def test_export_reloads_without_the_package(tmp_path, family, auto_class, strength):
    if family == "bert":
        fields = dict(correction=["centered", "neutreno", "contranorm", "dgn"], fusion="gate")
        config = bert_config(**fields, correction_strength=strength)
        model, inputs = CenteredBertForSequenceClassification(config), bert_inputs()
    else:
        config = vit_config(correction=["centered", "contranorm"], fusion="concat", correction_strength=strength)
        model, inputs = CenteredViTForImageClassification(config), vit_inputs()
    _move_learned_gates(model)
    model.train()
    model(**inputs)  # non-default DGN running statistics must travel too
    model.eval()
    folder = export_for_hub(model, tmp_path / "export", metrics={"accuracy": 0.5}, dataset="unit-test")
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits

    files = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "configuration_centered.py"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", *EXPORTED_HEADS[family]}
    for reference in auto_map.values():
        assert (folder / (reference.split(".")[0] + ".py")).is_file()

    loaded = run_without_the_package(tmp_path, LOAD_WITHOUT_PACKAGE, str(folder), auto_class)
    assert loaded["class"] == type(model).__name__
    assert loaded["base"] == ("CenteredBertModel" if family == "bert" else "CenteredViTModel")
    assert torch.equal(torch.load(tmp_path / "remote_logits.pt"), expected)


LOAD_HEADS_WITHOUT_PACKAGE = """
    import json, torch
    import transformers
    classes = {}
    for folder, auto_class in zip(sys.argv[1::2], sys.argv[2::2]):
        model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
        assert "hf_centered" not in type(model).__module__, type(model).__module__
        with torch.no_grad():
            output = model(**torch.load(folder + ".inputs.pt"))
        tensors = {name: value for name, value in output.items() if name not in ("hidden_states", "attentions")}
        torch.save(tensors, folder + ".remote.pt")
        classes[auto_class] = type(model).__name__
    print(json.dumps(classes))
"""


def _new_head_exports() -> list[tuple[str, torch.nn.Module, dict[str, torch.Tensor], str]]:
    """(Auto class, model, inputs, pipeline tag) of every head added after the first six, with every correction
    under a gated fusion; masked image modelling masks half the patches and segmentation has labels, so that their
    losses are compared too."""
    fields = dict(correction=["centered", "neutreno", "contranorm", "dgn"], fusion="gate")
    vit = vit_config(encoder_stride=VIT_SIZES["patch_size"], **fields)
    images = vit_inputs()
    num_patches = (VIT_SIZES["image_size"] // VIT_SIZES["patch_size"]) ** 2
    masked = {**images, "bool_masked_pos": torch.rand(3, num_patches) < 0.5}
    labels = torch.randint(0, vit.num_labels, (3, VIT_SIZES["image_size"], VIT_SIZES["image_size"]))
    labels[0, :3] = vit.semantic_loss_ignore_index
    choices = {name: tensor.view(3, 2, -1) for name, tensor in bert_inputs(batch_size=6).items()}
    return [
        ("AutoModelForQuestionAnswering", CenteredBertForQuestionAnswering(bert_config(num_labels=2, **fields)),
         bert_inputs(), "question-answering"),
        ("AutoModelForMultipleChoice", CenteredBertForMultipleChoice(bert_config(**fields)), choices,
         "multiple-choice"),
        ("AutoModelForNextSentencePrediction", CenteredBertForNextSentencePrediction(bert_config(**fields)),
         bert_inputs(), "text-classification"),
        ("AutoModelForPreTraining", CenteredBertForPreTraining(bert_config(**fields)), bert_inputs(), "fill-mask"),
        ("AutoModelForMaskedImageModeling", CenteredViTForMaskedImageModeling(vit), masked,
         "image-feature-extraction"),
        ("AutoModelForSemanticSegmentation", CenteredViTForSemanticSegmentation(vit), {**images, "labels": labels},
         "image-segmentation"),
    ]  # fmt: skip


def test_new_heads_export_and_reload_without_the_package(tmp_path):
    """Each head's export loads through its Auto class where hf_centered cannot be imported and gives bit-identical
    outputs (and losses); its card carries the head's pipeline tag."""
    arguments, expected, classes = [], {}, {}
    for auto_class, model, inputs, pipeline_tag in _new_head_exports():
        classes[auto_class] = type(model).__name__
        model.train()
        model(**inputs)  # non-default DGN running statistics must travel too
        model.eval()
        folder = export_for_hub(model, tmp_path / auto_class)
        assert ModelCard.load(folder / "README.md").data.pipeline_tag == pipeline_tag
        torch.save(inputs, f"{folder}.inputs.pt")
        with torch.no_grad():
            output = model(**inputs)
        expected[auto_class] = {name: output[name] for name in output if name not in ("hidden_states", "attentions")}
        arguments += [str(folder), auto_class]
    assert run_without_the_package(tmp_path, LOAD_HEADS_WITHOUT_PACKAGE, *arguments) == classes
    for folder, auto_class in zip(arguments[::2], arguments[1::2], strict=True):
        remote = torch.load(f"{folder}.remote.pt")
        assert remote.keys() == expected[auto_class].keys() and len(remote) >= 1
        for name, tensor in expected[auto_class].items():
            assert torch.equal(remote[name], tensor), (auto_class, name)


SEGMENT_WITHOUT_THE_PACKAGE = """
    import json
    import numpy as np
    from PIL import Image
    from transformers import pipeline
    folder, image_file = sys.argv[1:]
    segments = pipeline("image-segmentation", model=folder, trust_remote_code=True)(Image.open(image_file))
    print(json.dumps([[segment["label"], np.asarray(segment["mask"]).tolist()] for segment in segments]))
"""


def test_segmentation_export_segments_pil_images_in_the_pipeline(tmp_path):
    """`pipeline("image-segmentation", folder, trust_remote_code=True)` on a PIL image of another size than the
    model's: one mask per predicted class, at the image's size, as computed by hand from the logits resized to it;
    the same without hf_centered."""
    labels = {0: "background", 1: "digit", 2: "edge"}
    config = vit_config(image_size=15, patch_size=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    model = CenteredViTForSemanticSegmentation(config).eval()
    with torch.no_grad():  # logits that vary over the image, so that several classes show
        model.decode_head.weight.mul_(50)
    processor = CenteredViTImageProcessor(size={"height": 15, "width": 15})
    folder = export_for_hub(model, tmp_path / "segmenter", processor)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8))  # 23 wide
    image.save(tmp_path / "image.png")

    with torch.no_grad():
        logits = model(**processor(images=image, return_tensors="pt")).logits
    label_map = F.interpolate(logits, size=(17, 23), mode="bilinear", align_corners=False)[0].argmax(dim=0).numpy()
    expected = [[labels[label], ((label_map == label) * 255).tolist()] for label in np.unique(label_map)]
    assert len(expected) >= 2

    segments = pipeline("image-segmentation", model=str(folder), trust_remote_code=True)(image)
    assert all(segment["mask"].size == image.size and segment["score"] is None for segment in segments)
    assert [[segment["label"], np.asarray(segment["mask"]).tolist()] for segment in segments] == expected
    assert run_without_the_package(tmp_path, SEGMENT_WITHOUT_THE_PACKAGE, str(folder), str(tmp_path / "image.png")) == (
        expected
    )


def test_model_card_describes_the_model(tmp_path):
    model = CenteredBertForSequenceClassification(bert_config(correction=["centered", "dgn"], fusion="gate"))
    folder = export_for_hub(
        model,
        tmp_path / "card",
        model_name="centered-tiny",
        model_id="org/centered-tiny",
        base_model="org/tiny-bert",
        metrics={"accuracy": 0.8125, "f1": 0.8},
        dataset="rotten_tomatoes",
        training_hyperparameters={"learning_rate": 5e-5},
    )
    card = ModelCard.load(folder / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "org/tiny-bert" and data["pipeline_tag"] == "text-classification"
    assert {"hf_centered", "custom_code", "centered-correction", "dgn-correction", "gate-fusion"} <= set(data["tags"])
    assert data["model-index"][0]["results"][0]["metrics"][0]["value"] == 0.8125
    text = card.text
    assert 'AutoModelForSequenceClassification.from_pretrained("org/centered-tiny", trust_remote_code=True)' in text
    assert "`centered_scale=0.7`" in text and "`dgn_groups=3`" in text and "| accuracy | 0.8125 |" in text
    assert "Centered Self-Attention Layers" in text and "Differentiable Group Normalization" in text
    assert "@inproceedings{shi2022revisiting" in text and "learning_rate" in text


def test_export_refuses_to_overwrite_and_bad_input(tmp_path):
    model = CenteredBertModel(bert_config())
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "trained.safetensors").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty"):
        export_for_hub(model, tmp_path / "taken")
    assert (tmp_path / "taken" / "trained.safetensors").read_text() == "precious"
    with pytest.raises(ValueError, match="Unknown model card field"):
        export_for_hub(model, tmp_path / "new", accuracy=0.9)
    stock = BertForSequenceClassification(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37, vocab_size=99)
    )
    with pytest.raises(ValueError, match="expects an hf_centered model"):
        export_for_hub(stock, tmp_path / "stock")
    export_for_hub(model, tmp_path / "taken", overwrite=True)
    assert (tmp_path / "taken" / "model.safetensors").is_file()


def record_uploads(monkeypatch) -> list:
    """Fakes the Hub: records the repository creations and the path of every file a commit would upload."""
    calls = []

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("upload", repo_id, sorted(operation.path_in_repo for operation in operations)))
        return "commit-url"

    def upload_folder(self, **kwargs):
        raise AssertionError(f"the whole folder {kwargs['folder_path']} would be uploaded")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_only_the_export(tmp_path, monkeypatch):
    calls = record_uploads(monkeypatch)
    folder = export_for_hub(CenteredBertModel(bert_config()), tmp_path / "push")
    exported = sorted(path.name for path in folder.iterdir())
    for name in ("optimizer.pt", "training_args.bin", "trainer_state.json", "finetune_args.json", "notes.txt"):
        (folder / name).write_text("not part of the model")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "model.safetensors").write_text("a checkpoint")
    assert push_to_hub(folder, "org/model", private=True) == "commit-url"
    assert calls[0] == ("create", "org/model", {"private": True, "exist_ok": True})
    assert calls[1] == ("upload", "org/model", [name for name in exported if name != EXPORT_MANIFEST])
    assert {"config.json", "model.safetensors", "README.md", "modeling_centered_bert.py"} <= set(calls[1][2])

    # a folder exported before the manifest existed: the files an export writes, nothing else
    (folder / EXPORT_MANIFEST).unlink()
    push_to_hub(folder, "org/model")
    assert calls[3] == calls[1]
    with pytest.raises(FileNotFoundError, match="export_for_hub"):
        push_to_hub(tmp_path, "org/model")


def test_overwrite_replaces_exactly_the_previous_export(tmp_path, capsys):
    folder = tmp_path / "export"
    bert = CenteredBertForSequenceClassification(bert_config())
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    # a sharded save: an index and several weight files, which a later single-file save must not leave behind
    bert.save_pretrained = functools.partial(bert.save_pretrained, max_shard_size="40KB")
    export_for_hub(bert, folder, BertTokenizer(vocab=vocab), profile_inputs=[bert_inputs()])
    first = {path.name for path in folder.iterdir()}
    assert {"model.safetensors.index.json", "modeling_centered_bert.py", "oversmoothing_profile.png"} <= first
    assert "vocab.txt" in first or "tokenizer.json" in first
    (folder / "notes.txt").write_text("mine")
    (folder / "checkpoint-1").mkdir()

    vit = CenteredViTForImageClassification(vit_config())
    vit.save_pretrained(tmp_path / "vit")
    assert cli_main(["export", str(tmp_path / "vit"), str(folder), "--overwrite"]) == 0
    second = {path.name for path in folder.iterdir()}
    exported = set(json.loads((folder / EXPORT_MANIFEST).read_text())["files"])
    assert second == exported | {EXPORT_MANIFEST, "notes.txt", "checkpoint-1"}
    assert "modeling_centered_vit.py" in exported and "model.safetensors" in exported
    assert not {"model.safetensors.index.json", "modeling_centered_bert.py", "oversmoothing_profile.png"} & second
    assert not any(name.startswith(("model-0", "vocab", "tokenizer")) for name in second)
    assert (folder / "notes.txt").read_text() == "mine"
    reloaded = CenteredViTForImageClassification.from_pretrained(folder)
    for name, tensor in vit.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_cli_export_converts_a_stock_checkpoint(tmp_path, capsys):
    stock = BertForSequenceClassification(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=99,
            num_labels=3,
        )
    )
    stock.save_pretrained(tmp_path / "stock")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"])}
    BertTokenizer(vocab=vocab).save_pretrained(tmp_path / "stock")
    code = cli_main(
        [
            "export",
            str(tmp_path / "stock"),
            str(tmp_path / "out"),
            "--correction",
            "centered",
            "contranorm",
            "--contranorm-scale",
            "0.05",
            "--fusion",
            "concat",
            "--correction-layers",
            "1",
        ]
    )
    assert code == 0 and "CenteredBertForSequenceClassification" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["correction"] == ["centered", "contranorm"] and saved["contranorm_scale"] == 0.05
    assert saved["correction_layers"] == [1] and len(saved["id2label"]) == 3
    assert (tmp_path / "out" / "tokenizer.json").is_file() or (tmp_path / "out" / "vocab.txt").is_file()
    reloaded = CenteredBertForSequenceClassification.from_pretrained(tmp_path / "out")
    for name, tensor in stock.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name
    assert cli_main(["export", str(tmp_path / "stock"), str(tmp_path / "out2"), "--task", "image-classification"]) == 2
    assert not (tmp_path / "out2").exists()


def test_cli_export_puts_a_segmentation_head_on_a_stock_vit(tmp_path, capsys):
    stock = ViTModel(stock_config(vit_config(image_size=15, patch_size=3)), add_pooling_layer=False)
    stock.save_pretrained(tmp_path / "stock")
    arguments = ["export", str(tmp_path / "stock"), str(tmp_path / "out"), "--task", "semantic-segmentation"]
    assert cli_main([*arguments, "--num-labels", "4", "--correction", "neutreno"]) == 0
    assert "CenteredViTForSemanticSegmentation" in capsys.readouterr().out
    model = AutoModelForSemanticSegmentation.from_pretrained(tmp_path / "out")
    assert type(model) is CenteredViTForSemanticSegmentation and model.config.num_labels == 4
    for name, tensor in stock.state_dict().items():
        assert torch.equal(model.vit.state_dict()[name], tensor), name
    assert ModelCard.load(tmp_path / "out" / "README.md").data.pipeline_tag == "image-segmentation"


def test_model_card_carries_the_oversmoothing_profile(tmp_path):
    model = CenteredBertForSequenceClassification(bert_config(correction="contranorm"))
    folder = export_for_hub(model, tmp_path / "profiled", profile_inputs=[bert_inputs(), bert_inputs(seed=1)])
    assert (folder / "oversmoothing_profile.png").read_bytes().startswith(b"\x89PNG")
    profile = json.loads((folder / "oversmoothing_profile.json").read_text())
    assert len(profile["cosine_similarity"]) == model.config.num_hidden_layers + 1 and profile["num_sequences"] == 6
    text = ModelCard.load(folder / "README.md").text
    assert "## Over-smoothing profile" in text and "over 6 sequences" in text
    assert "![over-smoothing profile](oversmoothing_profile.png)" in text
    assert f"{profile['cosine_similarity'][-1]:.3f}" in text


def test_model_card_shows_the_learned_strengths_and_the_stock_model(tmp_path):
    model = CenteredBertForSequenceClassification(
        bert_config(correction=["centered", "dgn"], correction_strength="learned")
    )
    _move_learned_gates(model)
    stock = CenteredBertForSequenceClassification(bert_config(correction="none"))
    from hf_centered.diagnostics import oversmoothing_profile

    stock_profile = oversmoothing_profile(stock, [bert_inputs()], progress=False)
    folder = export_for_hub(
        model,
        tmp_path / "learned",
        metrics={"accuracy": 0.75, "f1_macro": 0.7},
        baseline_metrics={"accuracy": 0.5, "f1_macro": 0.25},
        profile_inputs=[bert_inputs()],
        baseline_profile=stock_profile,
    )
    strengths = json.loads((folder / "correction_strengths.json").read_text())
    assert strengths == model.correction_strengths()
    assert (folder / "correction_strengths.png").read_bytes().startswith(b"\x89PNG")
    text = ModelCard.load(folder / "README.md").text
    assert "## Learned correction strengths" in text and "![learned correction strengths]" in text
    assert "| place | `centered` | `dgn` |" in text
    assert "| accuracy | 0.7500 | 0.5000 |" in text and "stock model, same setup" in text
    assert "also draws the stock model" in text
    assert {"correction_strengths.json", "correction_strengths.png"} <= set(
        json.loads((folder / EXPORT_MANIFEST).read_text())["files"]
    )
    assert "github.com" not in text  # the project has no public repository to link yet
    fixed = export_for_hub(CenteredBertForSequenceClassification(bert_config()), tmp_path / "fixed")
    assert not (fixed / "correction_strengths.json").exists()
    assert "Learned correction strengths" not in (fixed / "README.md").read_text()


def test_model_card_takes_a_computed_profile(tmp_path):
    from hf_centered.diagnostics import oversmoothing_profile

    model = CenteredBertForSequenceClassification(bert_config(correction="centered", fusion="max"))
    profile = oversmoothing_profile(model, [bert_inputs(), bert_inputs(seed=2)])
    profile.model_name = "/home/someone/checkpoints/local"  # a local path must not be published
    folder = export_for_hub(model, tmp_path / "given", profile=profile, model_name="tiny-centered")
    saved = json.loads((folder / "oversmoothing_profile.json").read_text())
    assert saved == {**json.loads(json.dumps(profile.to_dict())), "model_name": "tiny-centered"}
    assert profile.model_name == "/home/someone/checkpoints/local"  # the caller's profile is left alone
    text = ModelCard.load(folder / "README.md").text
    assert "over 6 sequences" in text and f"{profile['effective_rank'][-1]:.3f}" in text
    assert (folder / "oversmoothing_profile.png").read_bytes().startswith(b"\x89PNG")


def test_every_export_option_is_explained():
    from hf_centered.cli import build_parser

    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    export = subparsers.choices["export"]
    unexplained = [action.dest for action in export._actions if not action.help]
    assert not unexplained


LOAD_CORRECTED_WITHOUT_PACKAGE = """
    import json, torch
    import transformers
    folder, auto_class = sys.argv[1], sys.argv[2]
    model = getattr(transformers, auto_class).from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_centered" not in type(model).__module__, type(model).__module__
    inputs = torch.load(folder + "/../inputs.pt")
    with torch.no_grad():
        outputs = {"logits": model(**inputs).logits}
        if auto_class == "AutoModelForCausalLM":
            outputs["generated"] = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)
    torch.save(outputs, folder + "/../remote_outputs.pt")
    # A stock model saved in the same process must stay stock: the remote code registers nothing for it.
    stock = transformers.AutoModel.from_config(transformers.BertConfig(hidden_size=8, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=8, vocab_size=20))
    stock.save_pretrained(folder + "/../stock")
    stock_config = json.load(open(folder + "/../stock/config.json"))
    print(json.dumps({"class": type(model).__name__, "attention": model.config._attn_implementation,
                      "stock_auto_map": stock_config.get("auto_map"), "stock_type": stock_config["model_type"]}))
"""


@pytest.mark.parametrize(
    ("family", "auto_class"),
    [
        ("roberta", "AutoModelForSequenceClassification"),
        ("llama", "AutoModelForCausalLM"),
        ("dinov2", "AutoModelForImageClassification"),
        ("deit", "AutoModelForImageClassification"),  # the second of its two heads, named by `architectures`
    ],
)
def test_a_generically_corrected_export_reloads_without_the_package(tmp_path, family, auto_class):
    import transformers
    from test_modeling_generic import family_config, padded_inputs

    import hf_centered

    torch.manual_seed(0)
    architectures = ["DeiTForImageClassificationWithTeacher"] if family == "deit" else None
    stock = getattr(transformers, auto_class).from_config(family_config(family, architectures=architectures)).eval()
    model = hf_centered.correct(
        stock, correction=["centered", "neutreno", "contranorm", "dgn"], fusion="gate", correction_strength="learned"
    )
    _move_learned_gates(model)
    inputs = padded_inputs(family, "left" if family == "llama" else "right")
    folder = export_for_hub(model, tmp_path / "export", dataset="unit-test")
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = {"logits": model(**inputs).logits}
        if family == "llama":  # ContraNorm needs every earlier token: generation without a KV cache
            expected["generated"] = model.generate(**inputs, max_new_tokens=3, do_sample=False, pad_token_id=0)

    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoConfig"] == f"modeling_generic.{type(stock.config).__name__}"
    assert auto_map[auto_class] == f"modeling_generic.{type(model).__name__}"
    card = ModelCard.load(folder / "README.md")
    assert "contranorm-correction" in card.data.tags and "gate-fusion" in card.data.tags

    loaded = run_without_the_package(tmp_path, LOAD_CORRECTED_WITHOUT_PACKAGE, str(folder), auto_class)
    assert loaded == {
        "class": type(model).__name__,
        "attention": "hf_centered_sdpa",
        "stock_auto_map": None,
        "stock_type": "bert",
    }
    remote = torch.load(tmp_path / "remote_outputs.pt")
    assert remote.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(remote[name], value), name
    assert type(getattr(transformers, auto_class).from_pretrained(folder)) is type(model)  # with the package too
