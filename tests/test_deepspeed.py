"""The README's DeepSpeed command: configs/accelerate/deepspeed-zero2.yaml runs finetune.py under ZeRO-2.

Opt-in: deepspeed is not a dependency, so this runs only where it is installed (`pip install deepspeed`). Without GPUs
DeepSpeed runs on its CPU accelerator with gloo; its first run there compiles a shared-memory communication kernel
(minutes; cached in ~/.cache/torch_extensions for later runs).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
from test_finetune import REPO_ROOT, _free_port, assert_same_weights, assets, logged_losses, text_argv

from hf_centered.finetuning import main

__all__ = ["assets"]  # the fixture, shared with test_finetune

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install deepspeed)"
)


def test_zero2_with_two_processes_matches_one_with_the_same_global_batch(assets, tmp_path):
    """The documented LoRA run (adapters merged at the end; NeuTRENO instead of configs/lora.yaml's DGN, whose batch
    statistics differ between one batch and two halves), 2 steps: the losses and the exported merged model of 2
    ZeRO-2 processes equal one process's."""
    lora = ("--use_lora", "--merge_lora", "--correction", "centered", "neutreno", "--fusion", "gate")
    steps = ("--max_steps", "2", "--learning_rate", "5e-3")
    single_dir, zero_dir = tmp_path / "single", tmp_path / "zero2"
    main(text_argv(assets, single_dir, *lora, *steps, "--per_device_train_batch_size", "4"))

    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(REPO_ROOT / "configs" / "accelerate" / "deepspeed-zero2.yaml"), "--main_process_port"]
    command += [str(_free_port()), str(REPO_ROOT / "finetune.py")]
    command += text_argv(assets, zero_dir, *lora, *steps, "--per_device_train_batch_size", "2")
    command += ["--save_strategy", "steps", "--save_steps", "2", "--keep_checkpoints"]
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # DeepSpeed wrote the checkpoint: each process's share of the optimizer states (not plain data parallelism)
    shards = sorted(path.name for path in (zero_dir / "checkpoint-2" / "global_step2").glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in (0, 1)]

    single_losses, zero_losses = logged_losses(single_dir), logged_losses(zero_dir)
    assert len(single_losses) == len(zero_losses) == 2
    assert zero_losses == pytest.approx(single_losses, abs=1e-5)
    assert_same_weights(single_dir, zero_dir, atol=1e-5)
