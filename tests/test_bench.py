"""bench/: the reference-style baselines compute what ours compute, and `bench/run.py --quick` runs end to end."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import bert_config, vit_config, vit_inputs

import hf_centered
from hf_centered import CenteredBertModel, CenteredViTModel

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
_spec = importlib.util.spec_from_file_location("bench_run", BENCH_DIR / "run.py")  # bench/ is scripts, not a package
bench_run = importlib.util.module_from_spec(_spec)
sys.modules["bench_run"] = bench_run  # its dataclasses look their module up there
_spec.loader.exec_module(bench_run)
to_reference_style = bench_run.to_reference_style


def move_gates_off_zero(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "strength_gate" in name:
                parameter.normal_(std=0.01, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("method", ["none", *bench_run.METHODS])
@pytest.mark.parametrize("architecture", ["bert", "vit"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_reference_style_twin_computes_the_same_function(method, architecture, training):
    kwargs = bench_run.correction_kwargs(method)
    if architecture == "bert":
        model = CenteredBertModel(bert_config(**kwargs))
        inputs = {"input_ids": torch.randint(1, 99, (3, 11), generator=torch.Generator().manual_seed(0))}
    else:
        model, inputs = CenteredViTModel(vit_config(**kwargs)), vit_inputs()
    move_gates_off_zero(model)  # else a learned correction would be the identity in both
    twin = to_reference_style(copy.deepcopy(model))
    assert twin.config._attn_implementation == "eager"
    if method in bench_run.METHODS and not method.startswith("fusion:"):
        assert not any(type(module).__module__.startswith("hf_centered.correction") for module in twin.modules())
    if method.startswith("fusion:"):
        assert any(type(module).__name__ == "ReferenceFusion" for module in twin.modules())
    model.train(training)
    twin.train(training)
    with torch.no_grad():
        torch.testing.assert_close(twin(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_quick_run_writes_json_and_markdown(tmp_path):
    markdown = tmp_path / "PERFORMANCE.md"
    markdown.write_text(f"# Performance\n\nAnalysis.\n\n{bench_run.REPORT_BEGIN}\nold\n{bench_run.REPORT_END}\nTail.\n")
    outputs = ["--json", str(tmp_path / "results.json"), "--markdown", str(markdown)]
    argv = ["--quick", "--rounds", "2", "--warmup", "0", "--no-memory", "--methods", "none", "centered", *outputs]
    results = bench_run.main(argv)
    assert [case["case"]["mode"] for case in results["cases"]] == list(bench_run.MODES)
    for case in results["cases"]:
        assert [timing["method"] for timing in case["timing"]] == ["none", "centered"]
        for timing in case["timing"]:
            ratio = timing["result"]["ours_over_stock"]
            assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    assert json.loads((tmp_path / "results.json").read_text())["machine"]["torch"] == torch.__version__
    report = markdown.read_text()
    assert "## minilm, 128 tokens × 8, forward+backward" in report and "| centered |" in report
    assert report.startswith("# Performance\n\nAnalysis.\n") and report.endswith("Tail.\n") and "old" not in report
    assert "| method | case | goal | measured | met |" in report  # the goals, checked on the figures

    again = tmp_path / "again.md"
    bench_run.main(["--report-from", str(tmp_path / "results.json"), "--markdown", str(again)])
    assert again.read_text().strip() == report.split("Analysis.\n\n", 1)[1].removesuffix("Tail.\n").strip()


def test_peak_memory_is_measured_in_fresh_processes():
    args = bench_run.parse_args(["--quick"])
    memory = bench_run.measure_memory(bench_run.Case("minilm", 128, 2, "forward+backward"), "contranorm", args)
    assert memory["stock_bytes"] > 1e6  # activations and gradients of a 6-layer model: megabytes at least
    assert 0.5 < memory["ours_over_stock"] < 2 and memory["reference_over_stock"] > 0


def test_resume_keeps_measured_cases(tmp_path, monkeypatch):
    results_file = tmp_path / "results.json"
    argv = ["--quick", "--warmup", "0", "--no-memory", "--methods", "none", "--json", str(results_file)]
    first = bench_run.main([*argv, "--rounds", "1"])

    def must_not_measure(*args, **kwargs):
        raise AssertionError("a case already in the results file was measured again")

    monkeypatch.setattr(bench_run, "time_case", must_not_measure)
    assert bench_run.main([*argv, "--rounds", "1", "--resume"])["cases"] == first["cases"]
    with pytest.raises(SystemExit, match="other rounds"):
        bench_run.main([*argv, "--rounds", "2", "--resume"])


def test_resume_goes_on_inside_a_stopped_case_and_keeps_the_report_order(tmp_path, monkeypatch):
    results_file = tmp_path / "results.json"
    argv = ["--quick", "--no-memory", "--methods", "centered", "none", "--json", str(results_file)]
    ratio = {"median": 1.0, "min": 1.0, "max": 1.0}
    canned = dict.fromkeys(("stock_seconds", "ours_over_stock", "reference_over_stock", "ours_over_reference"), ratio)
    measured = []

    def fake_time_case(case, method, args):
        if (case.mode, method) == ("forward", "none") and "resumed" not in measured:
            raise KeyboardInterrupt  # stopped during the first case's second method
        measured.append((case.mode, method))
        return canned

    monkeypatch.setattr(bench_run, "time_case", fake_time_case)
    with pytest.raises(KeyboardInterrupt):
        bench_run.main(argv)
    saved = json.loads(results_file.read_text())["cases"]
    assert [(case["case"]["mode"], [t["method"] for t in case["timing"]]) for case in saved] == [
        ("forward", ["centered"])
    ]

    measured.append("resumed")
    results = bench_run.main([*argv, "--resume"])
    assert measured == [
        ("forward", "centered"), "resumed", ("forward", "none"), ("forward+backward", "centered"),
        ("forward+backward", "none"),
    ]  # fmt: skip
    # Reported in the canonical order (stock first), not in the order measured.
    assert [[t["method"] for t in case["timing"]] for case in results["cases"]] == [["none", "centered"]] * 2
    assert json.loads(results_file.read_text())["cases"] == results["cases"]


def test_report_orders_cases_by_model_then_length_then_mode():
    def case(model, seq_len, mode):
        return {"case": {"model": model, "seq_len": seq_len, "batch_size": 1, "mode": mode}, "timing": [], "memory": {}}

    shuffled = [
        case("vit-small", 197, "forward"), case("base", 128, "forward+backward"), case("minilm", 2048, "forward"),
        case("base", 128, "forward"), case("minilm", 128, "forward"),
    ]  # fmt: skip
    ordered = bench_run.report_order({"cases": shuffled})["cases"]
    assert [(c["case"]["model"], c["case"]["seq_len"], c["case"]["mode"]) for c in ordered] == [
        ("minilm", 128, "forward"), ("minilm", 2048, "forward"), ("base", 128, "forward"),
        ("base", 128, "forward+backward"), ("vit-small", 197, "forward"),
    ]  # fmt: skip


_compile_spec = importlib.util.spec_from_file_location("bench_run_compile", BENCH_DIR / "run_compile.py")
bench_compile = importlib.util.module_from_spec(_compile_spec)
_compile_spec.loader.exec_module(bench_compile)


@pytest.mark.parametrize("method", ["none", *bench_run.METHODS, "learned:all+fusion:gate"])
def test_compiled_gradients_match_eager(method):
    """Every method traces under torch.compile (AOT autograd without inductor, to stay fast) with eager gradients;
    learned strengths with their gates away from 0 (at 0 the corrections' own terms would not show)."""
    torch._dynamo.reset()
    if method == "learned:all+fusion:gate":
        corrections = bench_run.CORRECTION_METHODS
        kwargs = {"correction": corrections, "correction_strength": "learned", "fusion": "gate"}
    else:
        kwargs = bench_run.correction_kwargs(method)
    model = CenteredBertModel(bert_config(**kwargs)).train()
    move_gates_off_zero(model)
    inputs = {"input_ids": torch.randint(1, 99, (3, 11), generator=torch.Generator().manual_seed(0))}
    compiled = torch.compile(copy.deepcopy(model), backend="aot_eager")
    bench_compile.check_compiled_matches_eager(model, compiled, inputs, "forward+backward")


def test_compiled_check_catches_a_different_model():
    model = CenteredBertModel(bert_config(correction="centered")).eval()
    other = copy.deepcopy(model)
    with torch.no_grad():
        query = other.encoder.layer[0].attention.self.query.weight
        query.add_(0.1 * torch.randn(query.shape, generator=torch.Generator().manual_seed(1)))
    inputs = {"input_ids": torch.randint(1, 99, (3, 11), generator=torch.Generator().manual_seed(0))}
    with pytest.raises(AssertionError):
        bench_compile.check_compiled_matches_eager(model, other, inputs, "forward")
    with pytest.raises(AssertionError):
        bench_compile.check_compiled_matches_eager(model.train(), other.train(), inputs, "forward+backward")


def test_compile_quick_run_writes_its_section(tmp_path):
    markdown = tmp_path / "PERFORMANCE.md"
    begin, end = bench_compile.REPORT_BEGIN, bench_compile.REPORT_END
    markdown.write_text(
        f"# Performance\n\n{begin}\nold\n{end}\n\n{bench_run.REPORT_BEGIN}\nkept\n{bench_run.REPORT_END}\n"
    )
    argv = [
        "--quick",
        "--methods",
        "centered",
        "--rounds",
        "1",
        "--min-sample-seconds",
        "0",
        "--markdown",
        str(markdown),
    ]
    results = bench_compile.main(argv)
    (entry,) = results["cases"]
    assert entry["method"] == "centered" and entry["case"]["mode"] == "forward"
    assert entry["result"]["compiled_over_stock"]["median"] > 0
    report = markdown.read_text()
    assert "| minilm 128×8 forward | centered |" in report and "old" not in report and "\nkept\n" in report


def test_compile_resume_measures_only_the_missing_methods_in_order(tmp_path, monkeypatch):
    results_file = tmp_path / "compile.json"
    common = ["--rounds", "2", "--json", str(results_file)]
    ratio = {"median": 1.0, "min": 1.0, "max": 1.0}
    measured = []

    def fake_time_compiled(case, method, rounds, min_sample_seconds):
        measured.append((case.mode, method))
        return {"compiled_over_stock": ratio, "ours_eager_over_stock": ratio}

    monkeypatch.setattr(bench_compile, "time_compiled", fake_time_compiled)
    bench_compile.main(["--methods", "centered", *common])
    results = bench_compile.main(["--methods", "centered", "none", *common, "--resume"])
    assert measured == [
        ("forward", "centered"), ("forward+backward", "centered"), ("forward", "none"), ("forward+backward", "none"),
    ]  # fmt: skip
    assert [(entry["case"]["mode"], entry["method"]) for entry in results["cases"]] == [
        ("forward", "none"), ("forward", "centered"), ("forward+backward", "none"), ("forward+backward", "centered"),
    ]  # fmt: skip
    assert json.loads(results_file.read_text()) == results
    with pytest.raises(SystemExit, match="other settings"):
        bench_compile.main(["--methods", "none", *common, "--rounds", "3", "--resume"])


def test_sparse_prediction_bench_compares_the_two_heads():
    spec = importlib.util.spec_from_file_location("bench_sparse", BENCH_DIR / "bench_sparse_prediction.py")
    bench_sparse = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_sparse)
    result = bench_sparse.compare((1, 64, 12, 4), steps=1, repeats=2)
    assert result["dense_s"] > 0 and result["sparse_s"] > 0
    assert result["ratio_min"] <= result["ratio"] <= result["ratio_max"]


def test_generic_bench_finds_no_attention_sized_tensor_of_the_corrections():
    spec = importlib.util.spec_from_file_location("bench_generic", BENCH_DIR / "bench_generic.py")
    bench_generic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_generic)
    bench_generic.SIZES.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
    stock = bench_generic.stock_model("llama", 16)
    batch = bench_generic.batch_of("llama", 16)
    ours = hf_centered.correct(copy.deepcopy(stock), correction=["centered", "contranorm"]).train()
    result = bench_generic.compare(stock, ours, batch, rounds=2, steps=1, num_tokens=16)
    assert result["square"] == 1.0 and result["saved"] > 1.0  # ContraNorm keeps tensors of (tokens × width) only
    assert result["time_min"] <= result["time"] <= result["time_max"]
