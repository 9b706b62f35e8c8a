"""Bad input to `hf-centered export`, `hf-centered diagnose` and `finetune.py`: one line naming the problem and what
is allowed, exit code 2, no traceback, nothing written, and nothing loaded or trained first."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_finetune import assets, text_argv  # noqa: F401 (assets is a fixture)
from transformers import GPT2Config, Trainer

from hf_centered import cli
from hf_centered.finetuning import main as finetune_main

REPO_ROOT = Path(__file__).resolve().parent.parent
POSITIONS = 64  # max_position_embeddings of the tiny BERT of `assets`


def contents(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def make_read_only(folder: Path, monkeypatch) -> None:
    """`folder`, read-only; as root, whom a folder's mode does not stop, `os.access` reports it read-only."""
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        access = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda path, mode, **kwargs: (Path(path) != folder or not mode & os.W_OK) and access(path, mode),
        )


def bad_model(tmp_path: Path, assets, kind: str) -> str:  # noqa: F811
    """A path that is no usable model, of the given kind."""
    if kind == "missing":
        return str(tmp_path / "nowhere" / "model")
    if kind == "file":
        (tmp_path / "model.bin").write_bytes(b"weights?")
        return str(tmp_path / "model.bin")
    folder = tmp_path / kind
    folder.mkdir()
    if kind == "not_json":
        (folder / "config.json").write_text('{"model_type": "bert", ')
    elif kind == "no_model_type":
        (folder / "config.json").write_text('{"hidden_size": 32}')
    elif kind == "no_tokenizer":  # the weights and configuration of a model, saved without its tokenizer
        for name in ("config.json", "model.safetensors"):
            shutil.copy(assets.model / name, folder / name)
    return str(folder)


MODEL_PATH_CASES = [
    ("missing", r"nowhere/model does not exist \(and is no Hub model id\)"),
    ("file", r"model.bin is a file; give a model folder \(holding config.json\) or a Hub model id"),
    ("no_config", r"no_config holds no config.json, so it is no saved model"),
    ("not_json", r"not_json/config.json is not a JSON configuration \(Expecting"),
    ("no_model_type", r"no_model_type/config.json is not a usable configuration: .*model_type"),
    ("no_tokenizer", r"no_tokenizer has no tokenizer saved with it \(its vocabulary would be only the special tokens"),
]


def assert_cli_failed(capfd, code: int, command: str, message: str, tmp_path: Path, before: list[str]) -> None:
    """Exit code 2, a single stderr line `hf-centered <command>: error: ...` matching `message`, nothing written."""
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"hf-centered {command}: error: ") and re.search(message, line), line
    assert contents(tmp_path) == before


@pytest.mark.parametrize("command", ["export", "diagnose"])
@pytest.mark.parametrize(("kind", "message"), MODEL_PATH_CASES, ids=[case for case, _ in MODEL_PATH_CASES])
def test_a_path_that_is_no_usable_model(assets, tmp_path, capfd, command, kind, message):  # noqa: F811
    model, out, texts = bad_model(tmp_path, assets, kind), str(tmp_path / "out"), tmp_path / "texts.txt"
    texts.write_text("good film\nbad plot\n")
    before = contents(tmp_path)
    argv = (
        ["export", model, out] if command == "export" else ["diagnose", model, "--text-file", str(texts), "--out", out]
    )
    assert_cli_failed(capfd, cli.main(argv), command, message, tmp_path, before)


EXPORT_CASES = [
    ("not_bert_or_vit", r"is a 'gpt2' checkpoint; export takes BERT and ViT checkpoints \(model_type bert, "),
    ("out_is_a_file", r"OUT .*out is a file; give a folder"),
    ("out_under_a_file", r"OUT .*out/export cannot be created: .*out is a file"),
    ("out_read_only", r"OUT .*locked/out cannot be written: .*locked is read-only"),
    ("out_not_empty", r"OUT .*out is not empty; choose another folder or pass --overwrite"),
    ("task_of_the_other_family", r"task 'image-classification' does not exist for a 'bert' checkpoint; allowed are"),
    ("zero_labels", r"--num-labels 0 is not valid: allowed are integers >= 1"),
    ("negative_strength", r"centered_scale=-1.0 is not valid: allowed values are finite numbers >= 0"),
]


@pytest.mark.parametrize(("case", "message"), EXPORT_CASES, ids=[case for case, _ in EXPORT_CASES])
def test_export_bad_input(assets, tmp_path, capfd, monkeypatch, case, message):  # noqa: F811
    model, out, extra = str(assets.model), tmp_path / "out", []
    if case == "not_bert_or_vit":  # a configuration alone: nothing past it may load
        GPT2Config(n_embd=16, n_layer=1, n_head=2).save_pretrained(tmp_path / "gpt2")
        model = str(tmp_path / "gpt2")
    elif case == "out_is_a_file":
        out.write_text("mine")
    elif case == "out_under_a_file":
        out.write_text("mine")
        out = out / "export"
    elif case == "out_read_only":
        make_read_only(tmp_path / "locked", monkeypatch)
        out = tmp_path / "locked" / "out"
    elif case == "out_not_empty":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "task_of_the_other_family":
        extra = ["--task", "image-classification"]
    elif case == "zero_labels":
        extra = ["--task", "sequence-classification", "--num-labels", "0"]
    elif case == "negative_strength":
        extra = ["--correction", "centered", "--centered-scale", "-1"]
    before = contents(tmp_path)
    code = cli.main(["export", model, str(out), *extra])
    assert_cli_failed(capfd, code, "export", message, tmp_path, before)


DIAGNOSE_CASES = [
    ("out_is_a_file", r"--out .*out is a file; give a folder"),
    ("out_read_only", r"--out .*locked/out cannot be written: .*locked is read-only"),
    ("max_length_above_positions", rf"--max-length {POSITIONS + 1} is more than model .* takes: allowed are 1 to "),
    ("max_length_zero", r"--max-length must be >= 1, got 0"),
    ("not_utf8", r"--text-file .*latin1.txt is not UTF-8 text \(byte 0xe9 at offset 3\); save it as UTF-8"),
    ("one_word_lines", r"no input has two tokens to compare .* without its special tokens; leave out --exclude-spe"),
]


@pytest.mark.parametrize(("case", "message"), DIAGNOSE_CASES, ids=[case for case, _ in DIAGNOSE_CASES])
def test_diagnose_bad_input(assets, tmp_path, capfd, monkeypatch, case, message):  # noqa: F811
    texts, out, extra = tmp_path / "texts.txt", tmp_path / "out", []
    texts.write_text("good film\nthe plot is dull\n")
    if case == "out_is_a_file":
        out.write_text("mine")
    elif case == "out_read_only":
        make_read_only(tmp_path / "locked", monkeypatch)
        out = tmp_path / "locked" / "out"
    elif case == "max_length_above_positions":
        extra = ["--max-length", str(POSITIONS + 1)]
    elif case == "max_length_zero":
        extra = ["--max-length", "0"]
    elif case == "not_utf8":
        texts = tmp_path / "latin1.txt"
        texts.write_bytes("caf\u00e9 film\ngood\n".encode("latin-1"))
    elif case == "one_word_lines":
        texts.write_text("good\nbad\nfilm\n")
        extra = ["--exclude-special-tokens"]
    before = contents(tmp_path)
    code = cli.main(["diagnose", str(assets.model), "--text-file", str(texts), "--out", str(out), *extra])
    assert_cli_failed(capfd, code, "diagnose", message, tmp_path, before)


def test_diagnose_default_length_fits_a_short_model(assets, tmp_path, capfd):  # noqa: F811
    """Without --max-length, texts are cut to the model's positions when it has fewer than the default 128."""
    (tmp_path / "texts.txt").write_text(" ".join(["good film"] * 100) + "\nbad plot\n")
    out = tmp_path / "out"
    assert cli.main(["diagnose", str(assets.model), "--text-file", str(tmp_path / "texts.txt"), "--out", str(out)]) == 0
    (profile,) = json.loads((out / "profile.json").read_text()).values()
    assert profile["num_sequences"] == 2 and profile["num_layers"] == 2


ARCHITECTURE_CASES = [
    ("malformed_json", "{hidden_size: 16", r"architecture must be a JSON object .*: Expecting property name"),
    ("not_a_mapping", "[16, 2]", r"architecture must be a mapping of configuration fields, got list"),
    ("unknown_field", {"hiden_size": 16}, r"unknown field\(s\) in architecture: hiden_size \(did you mean hidden_size"),
    (
        "image_field",
        {"image_size": 8},
        r"unknown field\(s\) in architecture: image_size; allowed are the fields of Cen",
    ),
    ("wrong_type", {"hidden_size": "big"}, r"architecture is not valid: .*'hidden_size' expected int, got str"),
    ("no_layers", {"num_hidden_layers": 0}, r"num_hidden_layers=0 is not valid: allowed values are integers >= 1"),
    ("heads", {"hidden_size": 30}, r"does not build a model: ValueError: The hidden size \(30\) is not a multiple"),
    ("negative_vocab", {"vocab_size": -3}, r"does not build a model: RuntimeError: .*negative dimension -3"),
    ("activation", {"hidden_act": "nope"}, r"does not build a model: KeyError: 'nope'"),
    (
        "token_ids_beyond_the_vocabulary",  # ModernBERT's defaults name its own tokenizer's ids
        {"model_type": "modernbert", "vocab_size": 100},
        r"architecture's pad_token_id=50283 lies outside its vocab_size=100: set pad_token_id \(and the family's",
    ),
    ("correction", {"correction": "centered"}, r"sets correction, which are options of their own: pass --correction"),
    ("labels", {"num_labels": 3}, r"sets num_labels, which are options of their own: pass --num_labels"),
    ("label_names", {"id2label": {"0": "a"}}, r"sets id2label, which the run decides \(the labels come from the data"),
    ("yaml_list", None, r"architecture in .*bad.yaml takes one value, got the list \[16, 2\]"),
    ("yaml_unknown_field", None, r"unknown field\(s\) in architecture: hiden_size \(did you mean hidden_size"),
]
OPTION_CASES = [
    ("unknown_option", ["--unknown_option", "1"], r"unknown option\(s\) --unknown_option; `finetune.py --help`"),
    ("misspelt_option", ["--learnin_rate", "1"], r"unknown option\(s\) --learnin_rate \(did you mean --learning_rate"),
    ("no_train_samples", ["--max_train_samples", "0"], r"max_train_samples=0 must be >= 1"),
    ("zero_labels", ["--num_labels", "0"], r"num_labels=0 is not valid: allowed values are integers >= 2"),
    ("negative_labels", ["--num_labels", "-1"], r"num_labels=-1 is not valid: allowed values are integers >= 2"),
]


def finetune_fails(argv: list[str], message: str, tmp_path: Path, capfd, monkeypatch) -> None:
    """`finetune.py argv` stops with exit code 2 and its one error line last on stderr; nothing trained or written."""

    def training_must_not_start(*args, **kwargs):
        raise AssertionError("training started despite bad input")

    monkeypatch.setattr(Trainer, "train", training_must_not_start)
    before = contents(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        finetune_main(argv)
    err = capfd.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err
    # Data-dependent checks run after the data load, whose progress bars come first.
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err
    assert errors[0].startswith("finetune.py: error: ") and re.search(message, errors[0]), errors[0]
    assert contents(tmp_path) == before  # nothing written


@pytest.mark.parametrize(
    ("case", "architecture", "message"), ARCHITECTURE_CASES, ids=[c[0] for c in ARCHITECTURE_CASES]
)
def test_finetune_bad_architecture(assets, tmp_path, capfd, monkeypatch, case, architecture, message):  # noqa: F811
    argv = text_argv(assets, tmp_path / "out", "--tokenizer_name", str(assets.model))
    argv.remove("--model_name_or_path")
    argv.remove(str(assets.model))
    if case.startswith("yaml"):
        block = [16, 2] if case == "yaml_list" else {"hiden_size": 16}
        (tmp_path / "bad.yaml").write_text(json.dumps({"architecture": block}))  # JSON is YAML
        argv = ["--config", str(tmp_path / "bad.yaml"), *argv]
    else:
        argv += ["--architecture", architecture if isinstance(architecture, str) else json.dumps(architecture)]
    finetune_fails(argv, message, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize(("case", "extra", "message"), OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_finetune_bad_option(assets, tmp_path, capfd, monkeypatch, case, extra, message):  # noqa: F811
    finetune_fails(text_argv(assets, tmp_path / "out", *extra), message, tmp_path, capfd, monkeypatch)


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "hf_centered.cli", "export", "nowhere/model/folder", "out"],
        [sys.executable, "finetune.py", "--unknown_option", "1"],
    ],
    ids=["hf-centered", "finetune.py"],
)
def test_the_process_exits_with_2_and_one_line(tmp_path, command):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    command = [str(REPO_ROOT / part) if part == "finetune.py" else part for part in command]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert ": error: " in line and ("does not exist" in line or "unknown option(s) --unknown_option" in line), line
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_the_demo_library_function_prints_nothing(capsys):
    """`compare_corrections` returns its rows; only the command (`hf-centered demo`) prints the table."""
    from hf_centered.demo import compare_corrections, format_comparison

    rows = compare_corrections(num_sentences=4)
    assert capsys.readouterr().out == ""
    assert [row["correction"] for row in rows] == ["none", "centered", "neutreno", "contranorm", "dgn"]
    assert rows[0]["embedding_agreement"] == pytest.approx(1.0, abs=1e-6)
    table = format_comparison(rows, num_sentences=4).splitlines()
    assert table[0].startswith("all-MiniLM-L6-v2 (packaged) on 4 Rotten Tomatoes snippets")
    assert table[3].split()[0] == "none" and float(table[3].split()[1]) == pytest.approx(
        rows[0]["cosine_similarity"], abs=5e-4
    )


def test_every_head_has_an_export_task():
    from hf_centered import modeling_centered_bert, modeling_centered_vit

    heads = {
        cls.__name__
        for modeling in (modeling_centered_bert, modeling_centered_vit)
        for cls in modeling.AUTO_MODEL_CLASSES.values()
    }
    assert heads == {name for classes in cli.TASKS.values() for name in classes if name is not None}


@pytest.mark.parametrize(
    ("task", "family"),
    [(task, family) for task, classes in cli.TASKS.items() for family, name in enumerate(classes) if name is not None],
)
def test_export_converts_a_stock_checkpoint_into_every_head(assets, tmp_path, task, family):  # noqa: F811
    from transformers import ViTConfig, ViTModel

    if family == 0:
        source = str(assets.model)
    else:
        source = str(tmp_path / "vit")
        tiny = ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=1,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=17,
        )
        ViTModel(tiny).save_pretrained(source)
    out = tmp_path / "out"
    assert cli.main(["export", source, str(out), "--task", task, "--correction", "centered"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [cli.TASKS[task][family]] and config["correction"] == "centered"
