"""hf_centered.finetuning: tiny end-to-end runs, configuration parsing, LoRA, DDP, resume, push, bad input."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import NO_DROPOUT, TINY_DIGITS_VIT, save_tiny_pretrained_bert
from datasets import Dataset, DatasetDict
from huggingface_hub import HfApi
from safetensors.torch import load_file
from transformers import BertModel, BertTokenizer, Trainer, TrainerCallback

from hf_centered import CenteredBertForSequenceClassification, finetuning
from hf_centered.data import rotten_tomatoes
from hf_centered.finetuning import EMBEDDED_DEFAULT, main, parse_arguments
from hf_centered.hub import EXPORT_MANIFEST
from hf_centered.tasks import text_classification
from hf_centered.tasks.base import split_indices

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))
ACCELERATE_FILES = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))
WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "fine",
    "boring",
    "fun",
    "dull",
    "movie",
    "film",
    "plot",
    "actor",
    "the",
    "is",
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> SimpleNamespace:
    """A tiny pretrained BERT with its tokenizer, and small csv files with class names as labels."""
    root = tmp_path_factory.mktemp("finetune_assets")
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    # no dropout: its draws differ between processes, and the DDP comparison needs none
    save_tiny_pretrained_bert(root / "tiny_bert", BertTokenizer(vocab=vocab), **NO_DROPOUT)
    generator = torch.Generator().manual_seed(0)
    for name, rows in (("train.csv", 40), ("validation.csv", 12)):
        with open(root / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sentence", "sentiment"])
            for _ in range(rows):
                label = int(torch.randint(2, (1,), generator=generator))
                words = [WORDS[int(i)] for i in torch.randint(len(WORDS), (6,), generator=generator)]
                writer.writerow([" ".join(words) + (" good" if label else " bad"), ["neg", "pos"][label]])
    return SimpleNamespace(root=root, model=root / "tiny_bert", train=root / "train.csv", val=root / "validation.csv")


def text_argv(assets, output_dir: Path, *extra: str) -> list[str]:
    """A short csv run of the tiny BERT; `extra` overrides any of it."""
    return [
        "--model_name_or_path", str(assets.model),
        "--train_file", str(assets.train),
        "--validation_file", str(assets.val),
        "--text_column", "sentence",
        "--label_column", "sentiment",
        "--output_dir", str(output_dir),
        "--max_steps", "3",
        "--per_device_train_batch_size", "4",
        "--logging_steps", "1",
        "--save_strategy", "no",
        "--seed", "0",
        "--no_baseline",
        *extra,
    ]  # fmt: skip


def logged_losses(output_dir: Path, key: str = "loss") -> list[float]:
    """The per-step training `loss` (or `grad_norm`) that the Trainer logged."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry[key] for entry in state["log_history"] if "loss" in entry]


def assert_same_weights(folder_a: Path, folder_b: Path, atol: float) -> None:
    weights_a, weights_b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        torch.testing.assert_close(weights_a[name], weights_b[name], atol=atol, rtol=0, msg=name)


def test_csv_run_ends_as_a_hub_ready_checkpoint(assets, tmp_path, capsys):
    output_dir = tmp_path / "out"
    metrics = main(text_argv(assets, output_dir, "--correction", "centered", "neutreno", "--fusion", "gate"))
    assert 0 <= metrics["eval_accuracy"] <= 1 and "eval_f1_macro" in metrics
    assert "eval accuracy" in capsys.readouterr().out
    config = json.loads((output_dir / "config.json").read_text())
    assert config["correction"] == ["centered", "neutreno"] and config["fusion"] == "gate"
    assert config["id2label"] == {"0": "neg", "1": "pos"}
    assert {"AutoConfig", "AutoModelForSequenceClassification"} <= set(config["auto_map"])
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()
    assert not list(output_dir.glob("checkpoint-*"))
    card = (output_dir / "README.md").read_text()
    assert "accuracy" in card and f"{metrics['eval_accuracy']:.4f}" in card and "learning_rate" in card
    assert "| lr_scheduler_type | linear |" in card  # enum values, not their Python repr
    reloaded = CenteredBertForSequenceClassification.from_pretrained(output_dir).eval()
    assert reloaded.config.num_labels == 2

    # the card's over-smoothing profile is the trained model's, on the held-out texts
    assert "Over-smoothing profile" in card and (output_dir / "oversmoothing_profile.png").is_file()
    profile = json.loads((output_dir / "oversmoothing_profile.json").read_text())
    assert profile["num_sequences"] == 12 and len(profile["cosine_similarity"]) == 3
    tokenizer = BertTokenizer.from_pretrained(output_dir)
    with open(assets.val, newline="") as handle:
        texts = [row["sentence"] for row in csv.DictReader(handle)]
    similarities = []
    with torch.no_grad():
        for text in texts:
            tokens = reloaded(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states[-1][0]
            pairwise = torch.nn.functional.cosine_similarity(tokens[:, None], tokens[None], dim=-1)
            n = len(tokens)
            similarities.append(float(pairwise[~torch.eye(n, dtype=torch.bool)].mean()))
    assert profile["cosine_similarity"][-1] == pytest.approx(sum(similarities) / len(similarities), abs=1e-5)


def test_builtin_rotten_tomatoes_split_by_movie(assets, tmp_path, capsys):
    _, labels, movies = rotten_tomatoes()
    train_idx, eval_idx = split_indices(labels, 0.2, seed=3, groups=movies)
    assert not {movies[i] for i in train_idx} & {movies[i] for i in eval_idx}
    again_train, _ = split_indices(labels, 0.2, seed=3, groups=movies)
    assert list(train_idx) == list(again_train)


def test_the_embedded_default_compares_with_the_stock_model(assets, tmp_path, capsys, monkeypatch):
    """The default recipe (learned centered attention) on a tiny slice: the stock model is fine-tuned first under the
    same setup, both results are printed side by side with the learned strengths, the card compares them, and a
    rerun reuses the finished baseline instead of training it again."""
    output_dir = tmp_path / "rt"
    argv = ["--model_name_or_path", str(assets.model), "--max_steps", "2", "--learning_rate", "1e-2"]
    argv += ["--max_train_samples", "16", "--max_eval_samples", "8", "--output_dir", str(output_dir)]
    argv += ["--profile_sequences", "8"]
    metrics = main(argv)
    out = capsys.readouterr().out
    assert "(8 examples)" in out
    config = json.loads((output_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "rotten", "1": "fresh"} and config["correction"] == "centered"
    assert config["correction_strength"] == "learned"

    baseline_dir = output_dir / finetuning.BASELINE_DIR
    baseline_config = json.loads((baseline_dir / "config.json").read_text())
    assert baseline_config["correction"] == "none" and baseline_config["correction_strength"] == "fixed"
    baseline_metrics = json.loads((baseline_dir / "eval_results.json").read_text())
    stock_row = next(line for line in out.splitlines() if line.startswith("stock, same setup"))
    corrected_row = next(line for line in out.splitlines() if line.startswith("centered (learned strengths)"))
    assert (
        f"{baseline_metrics['eval_accuracy']:.4f}" in stock_row and f"{metrics['eval_accuracy']:.4f}" in corrected_row
    )
    assert "learned correction strengths" in out and "centered: layer 0 " in out
    card = (output_dir / "README.md").read_text()
    assert "stock model, same setup" in card and "## Learned correction strengths" in card
    assert (output_dir / "correction_strengths.png").is_file()
    assert finetuning.BASELINE_DIR not in json.loads((output_dir / finetuning.EXPORT_MANIFEST).read_text())["files"]

    original_train, trained = Trainer.train, []

    def recording_train(self, *args, **kwargs):
        trained.append(Path(self.args.output_dir).name)
        return original_train(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train", recording_train)
    assert main(argv)["eval_accuracy"] == metrics["eval_accuracy"]
    assert trained == ["rt"]  # the stock baseline of the same arguments was finished: only the corrected run trains
    assert stock_row in capsys.readouterr().out


def test_digits_vit_from_scratch(tmp_path):
    output_dir = tmp_path / "vit"
    argv = ["--dataset_name", "digits", "--architecture", json.dumps(TINY_DIGITS_VIT), "--correction", "dgn"]
    argv += ["--max_steps", "3", "--per_device_train_batch_size", "8", "--max_eval_samples", "40"]
    argv += ["--output_dir", str(output_dir), "--learning_rate", "1e-3", "--no_baseline"]
    args = parse_arguments(argv)
    config, source = finetuning.resolve_base_config(args)
    data = args.task.load_data(args, config, None)
    pixels = data.train[0]["pixel_values"]
    assert args.task.name == "image-classification" and source is None
    assert pixels.shape == (1, 8, 8) and pixels.min() >= 0 and pixels.max() <= 1 and len(data.evaluation) == 40

    metrics = main(argv)
    assert "eval_accuracy" in metrics
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == "centered_vit" and len(config["id2label"]) == 10 and config["num_hidden_layers"] == 2
    assert (output_dir / "preprocessor_config.json").is_file()
    profile = json.loads((output_dir / "oversmoothing_profile.json").read_text())
    assert profile["num_sequences"] == 40 and len(profile["effective_rank"]) == 3


def test_yaml_then_command_line_overrides(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {"dataset_name": "bbc_news", "max_steps": 7, "learning_rate": 1e-4, "correction": ["centered", "dgn"]}
        )
    )
    args = parse_arguments(["--config", str(config_file), "--max_steps", "2", "--output_dir", str(tmp_path / "o")])
    assert args.training.max_steps == 2  # the command line wins
    assert args.training.learning_rate == 1e-4 and args.correction.correction == ["centered", "dgn"]
    assert args.data.dataset_name == "bbc_news" and args.data.max_train_samples is None  # no embedded default


def test_help_names_config_and_shows_the_defaults_that_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_arguments(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--config CONFIG YAML file of options" in text
    assert "The initial learning rate for the optimizer. (default: 0.0002)" in text  # not TrainingArguments' 5e-05
    assert "learned gates that start at 0 (default: learned)" in text
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({"learning_rate": 0.003, "dataset_name": "bbc_news"}))
    with pytest.raises(SystemExit):
        parse_arguments(["--config", str(config_file), "--help"])
    assert "optimizer. (default: 0.003)" in " ".join(capsys.readouterr().out.split())


def test_unknown_yaml_keys_are_named(tmp_path):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump({"dataset_name": "digits", "learnin_rate": 1.0, "colour": "red"}))
    with pytest.raises(SystemExit, match=r"unknown key\(s\) in .*bad.yaml: colour, learnin_rate"):
        parse_arguments(["--config", str(config_file)])


@pytest.mark.parametrize("config_file", CONFIG_FILES, ids=lambda path: path.name)
def test_every_config_parses(config_file, tmp_path):
    args = parse_arguments(["--config", str(config_file), "--output_dir", str(tmp_path)])
    assert args.training.output_dir == str(tmp_path)
    finetuning.validate_arguments(args)
    if args.model.architecture is not None:  # the from-scratch configurations must build a valid model config
        config, source = finetuning.resolve_base_config(args)
        expected_type = {"text": "centered_bert", "image": "centered_vit"}[args.task.modality]
        assert source is None and config.model_type == expected_type


def test_default_yaml_is_the_embedded_default():
    assert yaml.safe_load((REPO_ROOT / "configs" / "default.yaml").read_text()) == EMBEDDED_DEFAULT
    assert {path.stem for path in CONFIG_FILES} >= {
        "default", "lora", "vit4-digits", "vit8-digits", "vit16-digits", "text-none", "text-centered",
        "text-neutreno", "text-contranorm", "text-dgn", "text-gate-fusion", "text-centered+gate",
    }  # fmt: skip


@pytest.mark.parametrize("config_file", ACCELERATE_FILES, ids=lambda path: path.name)
def test_accelerate_configs_load(config_file):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(config_file))
    if config.fsdp_config:
        wrapped = config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        assert wrapped in ("CenteredBertLayer", "CenteredViTLayer")
        module = "modeling_centered_bert" if "Bert" in wrapped else "modeling_centered_vit"
        assert hasattr(__import__(f"hf_centered.{module}", fromlist=[wrapped]), wrapped)


def test_lora_adapter_and_merged_export(assets, tmp_path):
    from peft import PeftModel

    output_dir = tmp_path / "lora"
    argv = text_argv(assets, output_dir, "--use_lora", "--merge_lora", "--correction", "centered", "dgn")
    main([*argv, "--fusion", "gate", "--learning_rate", "5e-3"])
    adapter_config = json.loads((output_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["query", "value"]
    assert {"dgn", "fusion", "classifier"} <= set(adapter_config["modules_to_save"])

    merged = CenteredBertForSequenceClassification.from_pretrained(output_dir).eval()
    base = CenteredBertForSequenceClassification.from_pretrained(
        assets.model, correction=["centered", "dgn"], fusion="gate", correction_strength="learned", num_labels=2
    )
    adapted = PeftModel.from_pretrained(base, output_dir / "adapter").eval()
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 7, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted(**inputs).logits, atol=1e-5, rtol=1e-4)
    assert (output_dir / "README.md").is_file() and (output_dir / "tokenizer.json").is_file()


class KeepTrainedModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model


def test_lora_adapter_carries_learned_gates_and_dgn_statistics(assets, tmp_path):
    """Every module whose state the training changed travels with the adapter: the learned gates train and are saved,
    and DGN with its running statistics, so that the reloaded adapter is the trained model exactly."""
    from peft import PeftModel

    output_dir, keep = tmp_path / "lora-learned", KeepTrainedModel()
    extra = ["--use_lora", "--correction", "centered", "dgn", "--correction_strength", "learned"]
    main([*text_argv(assets, output_dir, *extra), "--learning_rate", "5e-3"], callbacks=[keep])
    trained = keep.model.eval()

    saved = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    gates = {name: value for name, value in saved.items() if "strength_gate" in name}
    assert len(gates) == 4  # centered and DGN in each of the 2 layers
    assert all((gate != 0).all() for gate in gates.values())
    assert any("dgn" in name and "running_mean" in name for name in saved)

    base = CenteredBertForSequenceClassification.from_pretrained(
        assets.model, correction=["centered", "dgn"], correction_strength="learned", num_labels=2
    )
    reloaded = PeftModel.from_pretrained(base, output_dir / "adapter").eval()
    inputs = {"input_ids": torch.tensor([[2, 5, 6, 7, 3], [2, 8, 9, 3, 0]]), "attention_mask": torch.ones(2, 5).long()}
    inputs["attention_mask"][1, -1] = 0
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, trained(**inputs).logits)
    strengths = reloaded.correction_strengths()
    assert strengths == trained.correction_strengths() and set(strengths) == {"centered", "dgn"}
    assert all(value != 0 for places in strengths.values() for values in places.values() for value in values)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_runs_export_the_gathered_weights(assets, tmp_path, monkeypatch, lora):
    """FSDP/DeepSpeed need GPUs; their export path (save_model on every rank, reload on rank 0) runs here in one
    process and must give the same checkpoint as the direct export."""
    extra = ["--correction", "centered", "dgn", "--fusion", "gate", "--learning_rate", "5e-3"]
    if lora:
        extra += ["--use_lora", "--merge_lora"]
    main(text_argv(assets, tmp_path / "direct", *extra))
    monkeypatch.setattr(finetuning, "is_sharded", lambda trainer: True)
    main(text_argv(assets, tmp_path / "gathered", *extra))
    assert not (tmp_path / "gathered" / finetuning.GATHERED_DIR).exists()
    assert_same_weights(tmp_path / "direct", tmp_path / "gathered", atol=0)
    direct_card = (tmp_path / "direct" / "README.md").read_text()
    assert direct_card == (tmp_path / "gathered" / "README.md").read_text().replace("gathered", "direct")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_processes_match_one_with_the_same_global_batch(assets, tmp_path, launcher):
    single_dir, ddp_dir = tmp_path / "single", tmp_path / "ddp"
    main(text_argv(assets, single_dir, "--per_device_train_batch_size", "4", "--max_steps", "4"))
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
        command += ["--master_port", str(_free_port())]
    else:  # the shipped DDP configuration (2 processes); without GPUs accelerate runs it on CPU with gloo
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command += [str(REPO_ROOT / "configs" / "accelerate" / "ddp.yaml"), "--main_process_port", str(_free_port())]
    command += [str(REPO_ROOT / "finetune.py")]
    command += text_argv(assets, ddp_dir, "--per_device_train_batch_size", "2", "--max_steps", "4")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    single_losses, ddp_losses = logged_losses(single_dir), logged_losses(ddp_dir)
    assert len(single_losses) == len(ddp_losses) == 4
    assert ddp_losses == pytest.approx(single_losses, abs=1e-5)
    # gradients are averaged, not summed, over processes (accepts_loss_kwargs=False)
    assert logged_losses(ddp_dir, "grad_norm") == pytest.approx(logged_losses(single_dir, "grad_norm"), rel=1e-4)
    assert_same_weights(single_dir, ddp_dir, atol=1e-5)


class SimulatedKill(Exception):
    """Raised by a callback right after a checkpoint is written, as if the job were killed there."""


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise SimulatedKill


def kill_after_the_first_checkpoint(assets, tmp_path) -> tuple[Path, Path, tuple[str, ...]]:
    """An uninterrupted 4-step run and the same run killed right after writing checkpoint-2: their folders and the
    step options both used."""
    plain_dir, killed_dir = tmp_path / "plain", tmp_path / "killed"
    steps = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2")
    main(text_argv(assets, plain_dir, *steps))
    with pytest.raises(SimulatedKill):
        main(text_argv(assets, killed_dir, *steps), callbacks=[KillAfterSave(step=2)])
    return plain_dir, killed_dir, steps


def test_resumed_run_equals_the_uninterrupted_run(assets, tmp_path):
    plain_dir, killed_dir, steps = kill_after_the_first_checkpoint(assets, tmp_path)
    assert (killed_dir / "checkpoint-2").is_dir() and not (killed_dir / "model.safetensors").exists()

    main(text_argv(assets, killed_dir, *steps, "--resume_from_checkpoint", str(killed_dir / "checkpoint-2")))
    assert_same_weights(plain_dir, killed_dir, atol=1e-7)
    assert logged_losses(killed_dir) == pytest.approx(logged_losses(plain_dir), abs=1e-7)

    # `last` picks the newest checkpoint of output_dir itself
    relaunched_dir = tmp_path / "relaunched"
    with pytest.raises(SimulatedKill):
        main(text_argv(assets, relaunched_dir, *steps), callbacks=[KillAfterSave(step=2)])
    main(text_argv(assets, relaunched_dir, *steps, "--resume_from_checkpoint", "last"))
    assert_same_weights(plain_dir, relaunched_dir, atol=1e-7)


def test_a_run_removes_only_its_own_checkpoints(assets, tmp_path):
    output_dir = tmp_path / "out"
    users = output_dir / "checkpoint-100"
    users.mkdir(parents=True)
    (users / "notes.txt").write_text("mine")
    os.utime(users, (0, 0))  # the oldest folder: first in line for the Trainer's save_total_limit rotation
    steps = ("--max_steps", "4", "--save_strategy", "steps", "--save_steps", "1", "--save_total_limit", "1")
    with pytest.raises(SimulatedKill):
        main(text_argv(assets, output_dir, *steps, "--overwrite"), callbacks=[KillAfterSave(step=2)])
    assert sorted(path.name for path in output_dir.glob("checkpoint-*")) == ["checkpoint-100", "checkpoint-2"]

    # the resumed run is the same run: it removes the killed run's checkpoints too, and nothing else
    main(text_argv(assets, output_dir, *steps, "--overwrite", "--resume_from_checkpoint", "last"))
    assert [path.name for path in output_dir.glob("checkpoint-*")] == ["checkpoint-100"]
    assert [path.name for path in users.iterdir()] == ["notes.txt"] and (users / "notes.txt").read_text() == "mine"


def test_a_run_never_writes_over_a_complete_checkpoint(assets, tmp_path):
    output_dir = tmp_path / "out"
    steps = ("--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    main(text_argv(assets, output_dir, *steps, "--keep_checkpoints"))
    kept = {path.name: path.read_bytes() for path in (output_dir / "checkpoint-2").iterdir()}
    with pytest.raises(SystemExit, match=r"holds checkpoint-2, which this run may write over"):
        main(text_argv(assets, output_dir, *steps, "--learning_rate", "0.5", "--overwrite"))
    assert {path.name: path.read_bytes() for path in (output_dir / "checkpoint-2").iterdir()} == kept


def test_last_skips_a_half_written_checkpoint(assets, tmp_path):
    plain_dir, killed_dir, steps = kill_after_the_first_checkpoint(assets, tmp_path)
    # killed while writing checkpoint-4: its weights half written, nothing after them
    half_written = killed_dir / "checkpoint-4"
    half_written.mkdir()
    shutil.copy(killed_dir / "checkpoint-2" / "config.json", half_written)
    weights = (killed_dir / "checkpoint-2" / "model.safetensors").read_bytes()
    (half_written / "model.safetensors").write_bytes(weights[: len(weights) // 2])

    main(text_argv(assets, killed_dir, *steps, "--resume_from_checkpoint", "last"))
    assert_same_weights(plain_dir, killed_dir, atol=1e-7)
    assert logged_losses(killed_dir) == pytest.approx(logged_losses(plain_dir), abs=1e-7)


def test_a_failure_after_training_leaves_the_trained_model(assets, tmp_path, monkeypatch):
    def broken_profile(*args, **kwargs):
        raise RuntimeError("profile exploded\nin a second line")

    monkeypatch.setattr(finetuning, "oversmoothing_profile", broken_profile)
    output_dir = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        main(text_argv(assets, output_dir))
    message = str(stopped.value)
    assert "\n" not in message and "profile" in message and "profile exploded" in message
    assert message.endswith(f"the trained model is saved in {output_dir}")
    trained = CenteredBertForSequenceClassification.from_pretrained(output_dir)
    base = BertModel.from_pretrained(assets.model)
    assert trained.config.num_labels == 2
    assert not torch.equal(
        trained.bert.encoder.layer[0].attention.self.query.weight, base.encoder.layer[0].attention.self.query.weight
    )


def test_push_to_hub_uploads_the_export_only(assets, tmp_path, monkeypatch):
    calls = []

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("upload", repo_id, {operation.path_in_repo for operation in operations}))

    def upload_folder(self, **kwargs):
        raise AssertionError(f"the whole folder {kwargs['folder_path']} would be uploaded")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id)))
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    output_dir = tmp_path / "pushed"
    steps = ("--save_strategy", "steps", "--save_steps", "2", "--keep_checkpoints")
    main(text_argv(assets, output_dir, *steps, "--push_to_hub", "--hub_model_id", "org/tiny-centered"))
    assert calls[0] == ("create", "org/tiny-centered")
    uploaded = calls[1][2]
    assert calls[1][1] == "org/tiny-centered" and uploaded == set(
        json.loads((output_dir / EXPORT_MANIFEST).read_text())["files"]
    )
    assert {"config.json", "model.safetensors", "README.md", "tokenizer.json", "oversmoothing_profile.json"} <= uploaded
    assert list(output_dir.glob("checkpoint-*/optimizer.pt")) and (output_dir / "trainer_state.json").is_file()
    assert not any(name.startswith("checkpoint-") or name.endswith((".pt", ".pth", ".bin")) for name in uploaded)
    assert not {"trainer_state.json", finetuning.RUN_RECORD, "all_results.json", EXPORT_MANIFEST} & uploaded
    assert "org/tiny-centered" in (output_dir / "README.md").read_text()


def _write_csv(path: Path, rows: list[tuple[str, object]], header=("sentence", "sentiment")) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_file", r"data file .*nowhere.csv does not exist"),
        ("unreadable_file", r"cannot read the data file .*broken.parquet"),
        ("unknown_dataset", r"unknown dataset 'no_such_dataset_xyz'"),
        ("missing_column", r"column\(s\) \['sentiment'\] not found .*columns are \['sentence', 'label'\]"),
        ("label_out_of_range", r"label value\(s\) \[5\] lie outside 0..1 \(num_labels=2\)"),
        ("unknown_correction", r"unknown correction\(s\) \['centred'\]"),
        ("none_with_a_correction", r"correction=\['none', 'centered'\] combines 'none' with other corrections"),
        ("negative_strength", r"centered_scale=-1.0 is not valid: allowed values are finite numbers >= 0"),
        ("negative_profile_sequences", r"profile_sequences=-1 must be >= 0"),
        ("case_differing_labels", r"class names \['Pos', 'pos'\] differ only in case or spaces"),
        ("names_and_ids", r"labels must be all integer class ids or all class names, got a mix of int, str"),
        ("empty_text", r"1 empty text\(s\) in the train data \(rows \[1\]\)"),
        ("other_validation_columns", r"column\(s\) \['sentiment'\] not found in the validation data; its columns"),
        ("not_utf8", r"data file .*latin1.csv is not UTF-8 text"),
        ("damaged_record", r"finetune_args.json is damaged"),
        ("single_class", r"the training data hold a single class \('pos'\); classification needs at least two"),
        ("too_many_labels", r"num_labels=3 does not match the data, which have 2 classes \(neg, pos\)"),
        ("zero_labels", r"num_labels=0 is not valid: allowed values are integers >= 2 \(the data have 2\)"),
        ("lora_from_scratch", r"--use_lora adapts pretrained weights"),
        ("missing_checkpoint", r"resume_from_checkpoint='last': no complete checkpoint in"),
        ("half_written_checkpoint", r"checkpoint-4' is not a complete checkpoint: trainer_state.json is missing"),
        (
            "truncated_checkpoint",
            r"checkpoint-4' is not a complete checkpoint: model.safetensors has changed size .*\(1 bytes, not 64\)",
        ),
        ("no_eval_samples", r"max_eval_samples=0 must be >= 1"),
        ("empty_evaluation_split", r"the validation data hold no examples"),
        ("foreign_output_dir", r"is not empty and holds no fine-tuning run; pass --overwrite"),
        ("different_run", r"holds a run with a different configuration \(learning_rate\)"),
        ("fsdp_on_cpu", r"FSDP runs on GPUs only: .*on CPU launch with configs/accelerate/ddp.yaml or torchrun"),
        (
            "task_sets_an_invalid_field",
            r"the text-classification task set a configuration that is not valid: is_decoder",
        ),
        ("too_few_to_split", r"the training data hold 1 example\(s\): too few to hold out validation_split_fraction"),
        ("unknown_task", r"unknown task 'sentiment'; choose among text-classification, .*image-classification"),
        ("dataset_of_another_task", r"the built-in dataset 'digits' is for --task image-classification; the built-in"),
        ("task_of_another_modality", r"tiny_bert is a text model; --task image-classification needs an image model"),
    ],
)
def test_bad_input_fails_before_training(assets, tmp_path, monkeypatch, case, message):
    def training_must_not_start(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    output_dir = tmp_path / "out"
    argv = text_argv(assets, output_dir)
    if case == "missing_file":
        argv += ["--train_file", str(tmp_path / "nowhere.csv")]
    elif case == "unreadable_file":
        (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
        argv += [
            "--train_file",
            str(tmp_path / "broken.parquet"),
            "--validation_file",
            str(tmp_path / "broken.parquet"),
        ]
    elif case == "too_few_to_split":
        argv = [arg for arg in argv if arg not in ("--validation_file", str(assets.val))]
        argv += ["--train_file", str(_write_csv(tmp_path / "one.csv", [("good film", "pos")]))]
    elif case == "unknown_task":
        argv += ["--task", "sentiment"]
    elif case == "dataset_of_another_task":
        argv = [arg for arg in argv if arg not in ("--train_file", str(assets.train))]
        argv += ["--dataset_name", "digits", "--task", "text-classification"]
    elif case == "task_of_another_modality":
        argv = [arg for arg in argv if arg not in ("--text_column", "sentence", "--label_column", "sentiment")]
        argv += ["--task", "image-classification"]
    elif case == "unknown_dataset":
        argv = [arg for arg in argv if arg not in ("--train_file", str(assets.train))]
        argv += ["--dataset_name", "no_such_dataset_xyz"]
    elif case == "missing_column":
        bad = _write_csv(tmp_path / "bad.csv", [("good film", 1)], header=("sentence", "label"))
        argv += ["--train_file", str(bad), "--validation_file", str(bad)]
    elif case == "label_out_of_range":
        bad = _write_csv(tmp_path / "bad.csv", [("good film", 1), ("bad film", 0), ("odd", 5)])
        argv += ["--train_file", str(bad), "--validation_file", str(bad), "--num_labels", "2"]
    elif case == "unknown_correction":
        argv += ["--correction", "centred"]
    elif case == "none_with_a_correction":  # with the stock baseline on: it must not train first
        argv += ["--correction", "none", "centered", "--baseline"]
    elif case == "negative_strength":
        argv += ["--centered_scale", "-1", "--baseline"]
    elif case == "lora_from_scratch":
        argv += ["--use_lora", "--architecture", json.dumps({"hidden_size": 16})]
    elif case == "case_differing_labels":
        mixed = _write_csv(tmp_path / "case.csv", [("good film", "pos"), ("great plot", "Pos"), ("bad", "neg")])
        argv += ["--train_file", str(mixed), "--validation_file", str(mixed)]
    elif case == "names_and_ids":
        with open(tmp_path / "mixed.jsonl", "w") as handle:
            for text, label in (("good film", "pos"), ("bad film", 0)):
                handle.write(json.dumps({"sentence": text, "sentiment": label}) + "\n")
        argv += ["--train_file", str(tmp_path / "mixed.jsonl"), "--validation_file", str(tmp_path / "mixed.jsonl")]
    elif case == "empty_text":
        holey = _write_csv(tmp_path / "holey.csv", [("good film", "pos"), ("", "neg"), ("bad", "neg")])
        argv += ["--train_file", str(holey)]
    elif case == "other_validation_columns":
        other = _write_csv(tmp_path / "other.csv", [("good film", "pos")], header=("sentence", "label"))
        argv += ["--validation_file", str(other)]
    elif case == "not_utf8":
        (tmp_path / "latin1.csv").write_bytes(
            "sentence,sentiment\ncaf\u00e9 cr\u00e8me,pos\nbad,neg\n".encode("latin-1")
        )
        argv += ["--train_file", str(tmp_path / "latin1.csv")]
    elif case == "damaged_record":
        output_dir.mkdir()
        (output_dir / finetuning.RUN_RECORD).write_text('{"learning_rate": ')
    elif case == "single_class":
        one_class = _write_csv(tmp_path / "one.csv", [("good film", "pos"), ("great plot", "pos")])
        argv += ["--train_file", str(one_class), "--validation_file", str(one_class)]
    elif case == "too_many_labels":
        argv += ["--num_labels", "3"]
    elif case == "zero_labels":
        argv += ["--num_labels", "0"]
    elif case == "negative_profile_sequences":
        argv += ["--profile_sequences", "-1"]
    elif case == "missing_checkpoint":
        argv += ["--resume_from_checkpoint", "last"]
    elif case in ("half_written_checkpoint", "truncated_checkpoint"):
        checkpoint = tmp_path / "elsewhere" / "checkpoint-4"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_bytes(bytes(64))
        if case == "truncated_checkpoint":  # complete once, then cut short
            (checkpoint / "trainer_state.json").write_text("{}")
            finetuning.mark_checkpoint(checkpoint, run_id="earlier")
            (checkpoint / "model.safetensors").write_bytes(bytes(1))
        argv += ["--resume_from_checkpoint", str(checkpoint)]
    elif case == "no_eval_samples":
        argv += ["--max_eval_samples", "0"]
    elif case == "empty_evaluation_split":
        train = Dataset.from_dict({"sentence": ["good film", "bad film"], "sentiment": ["pos", "neg"]})
        empty = DatasetDict(train=train, validation=train.select([]))
        monkeypatch.setattr(text_classification, "load_data_files", lambda *args: empty)
    elif case == "foreign_output_dir":
        output_dir.mkdir()
        (output_dir / "notes.txt").write_text("someone else's work")
    elif case == "different_run":
        output_dir.mkdir()
        (output_dir / finetuning.RUN_RECORD).write_text(json.dumps(finetuning.run_record(parse_arguments(argv))))
        argv += ["--learning_rate", "0.5"]
    elif case == "fsdp_on_cpu":  # what `accelerate launch --config_file configs/accelerate/fsdp-*.yaml` sets
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    elif case == "task_sets_an_invalid_field":  # found only at the save after training, once
        configure = text_classification.TextClassification.configure

        def configure_a_decoder(self, config, data):
            configure(self, config, data)
            config.is_decoder = True

        monkeypatch.setattr(text_classification.TextClassification, "configure", configure_a_decoder)

    def contents() -> list[str]:
        return sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))

    monkeypatch.setattr(Trainer, "train", training_must_not_start)
    before = contents()
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert contents() == before  # nothing written


# --- other families, through the generic path --------------------------------------------------------------

GENERIC_TEXT_CHECKPOINTS = {
    "roberta": ("RobertaConfig", dict(max_position_embeddings=66, hidden_dropout_prob=0.0)),  # positions after padding
    "llama": ("LlamaConfig", dict(num_key_value_heads=2)),
    "modernbert": ("ModernBertConfig", dict(local_attention=4, global_attn_every_n_layers=2)),
}


def save_tiny_checkpoint(folder: Path, family: str, tokenizer) -> Path:
    """A seeded tiny stock model of `family` with `tokenizer` (its vocabulary and special tokens)."""
    import transformers

    config_name, fields = GENERIC_TEXT_CHECKPOINTS[family]
    sizes = dict(hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    tokens = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id)
    tokens["eos_token_id"] = tokenizer.sep_token_id
    if family == "modernbert":
        tokens.update(cls_token_id=tokenizer.cls_token_id, sep_token_id=tokenizer.sep_token_id)
    fields = {"max_position_embeddings": 64, **fields}
    config = getattr(transformers, config_name)(vocab_size=len(tokenizer.get_vocab()), **sizes, **tokens, **fields)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", GENERIC_TEXT_CHECKPOINTS)
def test_a_checkpoint_of_another_family_fine_tunes_beside_its_stock_baseline(assets, tmp_path, family):
    import transformers

    checkpoint = save_tiny_checkpoint(tmp_path / family, family, BertTokenizer.from_pretrained(assets.model))
    output_dir = tmp_path / "out"
    argv = text_argv(assets, output_dir, "--model_name_or_path", str(checkpoint), "--baseline")
    metrics = main([*argv, "--correction", "centered", "dgn", "--correction_strength", "learned"])
    assert 0 <= metrics["eval_accuracy"] <= 1
    config = json.loads((output_dir / "config.json").read_text())
    assert config["model_type"] == f"corrected_{family}" and config["correction"] == ["centered", "dgn"]
    assert config["auto_map"]["AutoModelForSequenceClassification"].startswith("modeling_generic.")
    baseline = json.loads((output_dir / "stock-baseline" / "config.json").read_text())
    assert baseline["correction"] == "none"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert type(model).__module__ == "hf_centered.modeling_generic"
    gates = [p for name, p in model.named_parameters() if "strength_gate" in name]
    assert gates and any(float(gate.abs().max()) > 0 for gate in gates)  # trained away from 0


def test_a_checkpoint_whose_family_lacks_the_head_fails_in_one_line(assets, tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "llama", "llama", BertTokenizer.from_pretrained(assets.model))
    argv = ["--model_name_or_path", str(checkpoint), "--task", "fill-mask", "--dataset_name", "text_corpus"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main([*argv, "--output_dir", str(tmp_path / "out")])
    assert raised.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"finetune.py: error: {checkpoint} is a 'llama' model, whose family has no head for --task fill-mask; give a "
        "checkpoint of bert, roberta, distilbert, electra, modernbert or an --architecture"
    ]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("checkpoint_class", "config_class", "fields", "head"),
    [
        ("Dinov2Model", "Dinov2Config", dict(mlp_ratio=2), "Dinov2ForImageClassification"),
        # a distilled DeiT, whose Auto class has two heads: fine-tuning trains the default one
        (
            "DeiTForImageClassificationWithTeacher",
            "DeiTConfig",
            dict(intermediate_size=23),
            "DeiTForImageClassification",
        ),
    ],
)
def test_an_image_checkpoint_of_another_family_fine_tunes(tmp_path, checkpoint_class, config_class, fields, head):
    import transformers

    config = getattr(transformers, config_class)(
        image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        **fields,
    )  # fmt: skip
    torch.manual_seed(0)
    getattr(transformers, checkpoint_class)(config).save_pretrained(tmp_path / "checkpoint")
    output_dir = tmp_path / "out"
    argv = ["--model_name_or_path", str(tmp_path / "checkpoint"), "--dataset_name", "digits"]
    argv += ["--correction", "neutreno", "--max_steps", "3", "--per_device_train_batch_size", "8"]
    argv += ["--max_eval_samples", "40", "--no_baseline"]
    metrics = main([*argv, "--output_dir", str(output_dir), "--save_strategy", "no"])
    assert 0 <= metrics["eval_accuracy"] <= 1
    model = transformers.AutoModelForImageClassification.from_pretrained(output_dir)
    assert type(model).__name__ == head and model.config.correction == "neutreno"


@pytest.mark.parametrize("family", ["roberta", "llama"])
def test_an_architecture_of_another_family_trains_from_scratch(assets, tmp_path, family):
    import transformers

    architecture = {"model_type": family, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2}
    architecture.update(intermediate_size=20, vocab_size=32, max_position_embeddings=40)
    output_dir = tmp_path / "out"
    argv = text_argv(
        assets, output_dir, "--architecture", json.dumps(architecture), "--tokenizer_name", str(assets.model)
    )
    start = argv.index("--model_name_or_path")
    del argv[start : start + 2]  # from scratch
    metrics = main([*argv, "--correction", "centered"])
    assert 0 <= metrics["eval_accuracy"] <= 1
    model = transformers.AutoModelForSequenceClassification.from_pretrained(output_dir)
    assert model.config.model_type == f"corrected_{family}" and model.config.num_hidden_layers == 2
    assert model.config.pad_token_id == BertTokenizer.from_pretrained(assets.model).pad_token_id


def test_an_architecture_of_an_unknown_family_fails_in_one_line(assets, tmp_path, capsys):
    argv = text_argv(assets, tmp_path / "out", "--architecture", json.dumps({"model_type": "t5"}))
    with pytest.raises(SystemExit):
        main(argv)
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("finetune.py: error: architecture's model_type='t5' is not valid: allowed are bert, ")
    assert not (tmp_path / "out").exists()
