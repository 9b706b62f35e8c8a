"""FSDP2 with every layer sharded on its own (what configs/accelerate/fsdp-*.yaml set up): every correction and fusion,
BERT and ViT, gives the loss and the gathered gradients of one process on the same global batch.

One `torchrun` run (2 CPU processes, gloo) goes through every case and writes what it measured to a JSON file that the
parametrised tests read, so the launch is paid once. Run as a script, this file is that worker.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
from conftest import CORRECTIONS, FUSIONS, bert_config, bert_inputs, vit_config, vit_inputs

from hf_centered import CenteredBertForSequenceClassification, CenteredViTForImageClassification

REPO_ROOT = Path(__file__).parents[1]
WORLD_SIZE = 2
BATCH_SIZE = 4  # 2 rows per process, padded differently (BERT lengths 7, 4, 2, 2)
LABELS = torch.tensor([0, 2, 1, 2])


def _case(architecture: str, methods: list[str], fusion: str = "none", strength: str = "fixed", **options) -> dict:
    name = f"{architecture}-{'+'.join(methods)}-{fusion}-{strength}"
    if options:
        name += "-" + "-".join(f"{key}={value}" for key, value in options.items())
    return dict(name=name, architecture=architecture, methods=methods, fusion=fusion, strength=strength, **options)


CASES = [
    *(_case(arch, [method]) for arch in ("bert", "vit") for method in ["none", *CORRECTIONS]),
    *(_case(arch, ["none"], fusion) for arch in ("bert", "vit") for fusion in FUSIONS if fusion != "none"),
    *(_case(arch, CORRECTIONS, "gate", "learned") for arch in ("bert", "vit")),
    *(
        _case(arch, CORRECTIONS, "max", checkpointing=kind)
        for arch in ("bert", "vit")
        for kind in ("plain", "reentrant")
    ),
]


def _model_and_inputs(case: dict) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The case's model, the same on every process (same seed), and its global batch."""
    torch.manual_seed(0)
    if case["architecture"] == "bert":
        config, model_class, inputs = bert_config, CenteredBertForSequenceClassification, bert_inputs(BATCH_SIZE)
    else:
        config, model_class, inputs = vit_config, CenteredViTForImageClassification, vit_inputs(BATCH_SIZE)
    model = model_class(config(correction=case["methods"], fusion=case["fusion"], correction_strength=case["strength"]))
    with torch.no_grad():  # learned strengths start at 0: move them so that the corrections act
        for name, parameter in model.named_parameters():
            if "strength_gate" in name:
                parameter.copy_(0.1 * torch.randn(parameter.shape))
    if "checkpointing" in case:
        model.gradient_checkpointing_enable({"use_reentrant": case["checkpointing"] == "reentrant"})
    return model.train(), inputs


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.bert.encoder.layer if hasattr(model, "bert") else model.vit.layers


def _loss_and_gradients(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]], labels: list[torch.Tensor]):
    """Mean loss and gradients over `batches` of equal size, in one process."""
    losses = []
    for batch, batch_labels in zip(batches, labels, strict=True):
        loss = model(**batch, labels=batch_labels).loss / len(batches)
        loss.backward()
        losses.append(loss.item())
    return sum(losses), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def _run_case(case: dict, rank: int) -> dict:
    model, inputs = _model_and_inputs(case)
    rows = [slice(r * BATCH_SIZE // WORLD_SIZE, (r + 1) * BATCH_SIZE // WORLD_SIZE) for r in range(WORLD_SIZE)]
    # DGN normalises with the statistics of the batch a process sees, as BatchNorm does under data parallelism: its
    # one-process reference accumulates the processes' batches instead of running the global batch at once.
    if "dgn" in case["methods"]:
        batches = [{key: value[part] for key, value in inputs.items()} for part in rows]
        labels = [LABELS[part] for part in rows]
    else:
        batches, labels = [inputs], [LABELS]
    sharded, _ = _model_and_inputs(case)
    single_loss, single_gradients = _loss_and_gradients(model, batches, labels)

    own = rows[rank]
    own_inputs = {**{key: value[own] for key, value in inputs.items()}, "labels": LABELS[own]}
    return compared_with_sharded(sharded, _layers(sharded), own_inputs, single_loss, single_gradients)


def compared_with_sharded(
    sharded: torch.nn.Module,
    layers: torch.nn.ModuleList,
    own_inputs: dict[str, torch.Tensor],
    single_loss: float,
    single_gradients: dict[str, torch.Tensor],
) -> dict:
    """`fully_shard` on every layer then on the root, one forward and backward of this process's `own_inputs`; the
    mean loss over the processes and each gradient (gathered) against the one-process reference, JSON-safe."""
    from torch.distributed.fsdp import fully_shard

    for layer in layers:
        fully_shard(layer)
    fully_shard(sharded)
    loss = sharded(**own_inputs).loss
    loss.backward()
    sharded_loss = loss.detach().clone()
    torch.distributed.all_reduce(sharded_loss)
    gradients = {name: p.grad.full_tensor() for name, p in sharded.named_parameters() if p.grad is not None}
    return {
        "loss": [single_loss, sharded_loss.item() / WORLD_SIZE],
        "gradients": {
            name: [(gradients[name] - gradient).abs().max().item(), gradient.abs().max().item()]
            for name, gradient in single_gradients.items()
            if name in gradients
        },
        "missing": sorted(set(single_gradients) ^ set(gradients)),
    }


def _worker(output: str) -> None:
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        try:
            results[case["name"]] = _run_case(case, rank)
        except Exception as error:  # reported per case, so one failing method leaves the others' results
            results[case["name"]] = {"error": "".join(traceback.format_exception_only(error)).strip()}
            traceback.print_exc()
    if rank == 0:
        Path(output).write_text(json.dumps(results, indent=1))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("fsdp") / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD_SIZE)]
    command += ["--master_port", str(_free_port()), __file__, str(output)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_fully_sharded_layers_give_the_losses_and_gradients_of_one_process(results, case):
    result = results[case["name"]]
    assert "error" not in result, result.get("error")
    single_loss, sharded_loss = result["loss"]
    assert sharded_loss == pytest.approx(single_loss, abs=1e-6)
    assert result["missing"] == []
    assert len(result["gradients"]) > 0
    for name, (difference, scale) in result["gradients"].items():
        assert difference <= 1e-6 + 1e-5 * scale, f"{name}: gradient differs by {difference} (largest {scale})"


if __name__ == "__main__":
    _worker(sys.argv[1])
