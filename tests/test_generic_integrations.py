"""Real clients of the generic path: Trainer, PEFT LoRA and FSDP2 on one encoder (RoBERTa, sequence classification)
and one decoder (Llama with grouped-query attention, causal LM), each corrected with centered attention, NeuTRENO and
DGN at learned strengths.

The FSDP2 tests read what one `torchrun` run (2 CPU processes, gloo) measured for both families, as
tests/test_fsdp.py does, so that the launch is paid once. Run as a script, this file is that worker.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import transformers
from conftest import STRONG
from peft import LoraConfig, PeftModel, get_peft_model
from test_fsdp import REPO_ROOT, WORLD_SIZE, _free_port, compared_with_sharded
from test_modeling_generic import family_config
from torch import nn
from transformers import Trainer, TrainingArguments

import hf_centered
from hf_centered.corrections import CORRECTIONS

FAMILIES = ("roberta", "llama")
METHODS = ["centered", "neutreno", "dgn"]
AUTO_CLASSES = {
    "roberta": transformers.AutoModelForSequenceClassification,
    "llama": transformers.AutoModelForCausalLM,
}
NO_DROPOUT = {
    "roberta": dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3),
    "llama": dict(attention_dropout=0.0),
}
LORA = {
    "roberta": dict(task_type="SEQ_CLS", target_modules=["query", "key", "value"]),
    "llama": dict(task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
}
LAYERS = {"roberta": "roberta.encoder.layer", "llama": "model.layers"}
NUM_LAYERS = 3  # test_modeling_generic's tiny configurations
# One gate module per layer for centered attention and DGN; NeuTRENO acts from layer 1 on (layer 0 gives V⁰).
NUM_GATES = {"centered": NUM_LAYERS, "neutreno": NUM_LAYERS - 1, "dgn": NUM_LAYERS}
BATCH_SIZE = 4


def corrected_model(family: str, seed: int = 6) -> nn.Module:
    """The family's tiny stock model (the same weights for any `seed`), corrected in place; `seed` draws DGN's new
    parameters."""
    torch.manual_seed(0)
    model = AUTO_CLASSES[family].from_config(family_config(family, **NO_DROPOUT[family]))
    torch.manual_seed(seed)
    return hf_centered.correct(model, correction=METHODS, correction_strength="learned", **STRONG)


def batch(family: str) -> dict[str, torch.Tensor]:
    """Four sequences of 7 tokens with 0, 2, 3 and 5 padding tokens (RoBERTa on the right, Llama on the left, as
    each is used), with labels."""
    input_ids = torch.randint(3, 90, (BATCH_SIZE, 7), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([7, 5, 4, 2])
    attention_mask = (torch.arange(7)[None, :] < lengths[:, None]).long()
    if family == "llama":
        attention_mask = attention_mask.flip(-1)
    input_ids = input_ids * attention_mask  # the padding token is 0
    # RoBERTa: a class per sequence; Llama: the next tokens (the model shifts them), none at the padding.
    labels = torch.tensor([0, 2, 1, 2]) if family == "roberta" else input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def output_of(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits at the real tokens (RoBERTa: per sequence)."""
    logits = model(**{name: value for name, value in inputs.items() if name != "labels"}).logits
    return logits if logits.dim() == 2 else logits[inputs["attention_mask"].bool()]


def strength_gates(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: parameter for name, parameter in model.named_parameters() if name.endswith("strength_gate")}


def gates_per_correction(names: Iterable[str]) -> dict[str, int]:
    """How many of the parameter `names` are the strength gates of each correction."""
    gates = [name for name in names if name.endswith("strength_gate")]
    return {method: sum(f".{method}." in name for name in gates) for method in METHODS}


# --- Trainer ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_trainer_moves_the_gates_and_its_saved_folder_loads_as_the_corrected_model(tmp_path, family):
    model = corrected_model(family)
    inputs = batch(family)
    dataset = [{name: value[row] for name, value in inputs.items()} for row in range(BATCH_SIZE)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset)
    trainer.train()

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), losses
    gates = strength_gates(model)
    assert gates_per_correction(gates) == NUM_GATES
    # Every gate received gradients (an untrained one stays exactly 0), and each correction's moved by about an Adam
    # step (lr 1e-3) at least; on a batch of 2 their signs may flip between steps, so some end near 0.
    assert all(bool((gate != 0).all()) for gate in gates.values())
    for method in METHODS:
        largest = max(gate.abs().max().item() for name, gate in gates.items() if f".{method}." in name)
        assert largest > 5e-4, f"{method}: the gates stayed within {largest} of 0"

    trainer.save_model(str(tmp_path / "saved"))
    loaded = AUTO_CLASSES[family].from_pretrained(tmp_path / "saved").eval()
    assert type(loaded) is type(model)
    assert loaded.config.correction == METHODS and loaded.config.correction_strength == "learned"
    model.eval()
    with torch.no_grad():
        assert torch.equal(output_of(loaded, inputs), output_of(model, inputs))


# --- PEFT LoRA ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_trains_the_adapter_and_the_corrections_which_act_merge_and_reload(tmp_path, family):
    model = corrected_model(family)
    modules_to_save = hf_centered.peft_modules_to_save(model)
    assert modules_to_save == ["centered", "dgn", "neutreno"]
    adapted = get_peft_model(model, LoraConfig(r=4, modules_to_save=modules_to_save, **LORA[family]))
    trainable = {name for name, parameter in adapted.named_parameters() if parameter.requires_grad}
    assert trainable and all(".lora_" in name or ".modules_to_save." in name for name in trainable)
    assert gates_per_correction(trainable) == NUM_GATES

    inputs = batch(family)
    before = {name: parameter.detach().clone() for name, parameter in adapted.named_parameters()}
    optimizer = torch.optim.AdamW([adapted.get_parameter(name) for name in sorted(trainable)], lr=1e-2, weight_decay=0)
    adapted.train()
    for _ in range(3):
        loss = adapted(**inputs).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {name for name, parameter in adapted.named_parameters() if not torch.equal(parameter, before[name])}
    assert changed == trainable

    adapted.eval()
    with torch.no_grad():
        expected = output_of(adapted, inputs)
        adapted.save_pretrained(tmp_path / "adapter")
        # The corrections still act under LoRA: with every strength 0, the adapted model is the stock model with the
        # merged LoRA weights (checked below), and differs from the trained one.
        strengths = {CORRECTIONS[method].strength_field: 0.0 for method in METHODS}
        model.config.update(strengths)
        without_corrections = output_of(adapted, inputs)
        model.config.update({field: STRONG[field] for field in strengths})
        torch.testing.assert_close(output_of(adapted, inputs), expected, atol=0, rtol=0)
        merged = adapted.merge_and_unload()
        torch.testing.assert_close(output_of(merged, inputs), expected, atol=1e-5, rtol=0)

        torch.manual_seed(0)
        stock = AUTO_CLASSES[family].from_config(family_config(family, **NO_DROPOUT[family])).eval()
        loaded = stock.load_state_dict(merged.state_dict(), strict=False)
        assert loaded.missing_keys == [] and loaded.unexpected_keys, loaded
        torch.testing.assert_close(output_of(stock, inputs), without_corrections, atol=1e-5, rtol=0)
    assert (without_corrections - expected).abs().max() > 1e-3

    fresh = corrected_model(family, seed=7).eval()  # other DGN parameters, gates at 0: the adapter must bring them
    with torch.no_grad():
        assert (output_of(fresh, inputs) - expected).abs().max() > 1e-3
        reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
        torch.testing.assert_close(output_of(reloaded, inputs), expected, atol=1e-6, rtol=0)


# --- FSDP2 ------------------------------------------------------------------------------------------------------


def _sharded_run(family: str, rank: int) -> dict:
    """One family: the loss and gradients of `fully_shard` per layer then on the root, each process on half the
    batch, against one process that runs both halves."""

    def model_with_moved_gates() -> nn.Module:
        model = corrected_model(family)
        torch.manual_seed(1)
        with torch.no_grad():  # learned gates start at 0: move them so that the corrections act
            for gate in strength_gates(model).values():
                gate.copy_(0.01 * torch.randn(gate.shape))
        return model.train()

    inputs = batch(family)
    halves = [
        {name: value[start : start + BATCH_SIZE // WORLD_SIZE] for name, value in inputs.items()}
        for start in range(0, BATCH_SIZE, BATCH_SIZE // WORLD_SIZE)
    ]
    # DGN normalises with the statistics of the batch a process sees, as BatchNorm does under data parallelism: the
    # one-process reference accumulates the processes' halves instead of running the whole batch at once.
    single = model_with_moved_gates()
    single_loss = 0.0
    for half in halves:
        loss = single(**half).loss / WORLD_SIZE
        loss.backward()
        single_loss += loss.item()
    single_gradients = {name: p.grad for name, p in single.named_parameters() if p.grad is not None}

    sharded = model_with_moved_gates()
    return compared_with_sharded(
        sharded, sharded.get_submodule(LAYERS[family]), halves[rank], single_loss, single_gradients
    )


def _worker(output: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.set_num_threads(1)
    results = {}
    for family in FAMILIES:
        try:
            results[family] = _sharded_run(family, rank)
        except Exception as error:  # reported per family, so one failing family leaves the other's results
            results[family] = {"error": "".join(traceback.format_exception_only(error)).strip()}
            traceback.print_exc()
    if rank == 0:
        Path(output).write_text(json.dumps(results, indent=1))
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("fsdp") / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE)]
    command += ["--master_port", str(_free_port()), __file__, str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.parametrize("family", FAMILIES)
def test_fully_sharded_layers_give_the_loss_and_gradients_of_one_process(sharded_results, family):
    result = sharded_results[family]
    assert "error" not in result, result.get("error")
    single_loss, sharded_loss = result["loss"]
    assert sharded_loss == pytest.approx(single_loss, abs=1e-5)
    assert result["missing"] == []
    assert gates_per_correction(result["gradients"]) == NUM_GATES
    for name, (difference, largest) in result["gradients"].items():
        assert difference <= 1e-5, f"{name}: gradient differs by {difference}"
        if name.endswith("strength_gate"):  # the corrections act, and train, in the sharded layers
            assert largest > 1e-6, f"{name}: no gradient"


if __name__ == "__main__":
    _worker(sys.argv[1])
