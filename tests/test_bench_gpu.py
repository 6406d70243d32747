"""The GPU benchmark suite (`posttrain bench gpu`, bench/gpu.sh) runs end to end on a CPU with a tiny shape: every
side in its own process, the setup passed through the environment, model FLOPs and the ceiling share in each row."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.bench import gpu, workload

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["rollout", "sft-lora"])
def test_suite_runs_on_cpu_with_a_tiny_shape(tmp_path, name):
    """rollout's anchor is transformers' generate(); sft-lora's is TRL (the [bench] extra), skipped without it."""
    if name == "sft-lora":
        pytest.importorskip("trl")
    cmd = [sys.executable, "-m", "posttrain", "bench", "gpu", "--shapes", "tiny", "--device", "cpu"]
    cmd += ["--dtype", "fp32", "--scale", "0.02", "--workloads", name, "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    assert [(r["shape"], r["workload"]) for r in rows] == [("tiny", name)]
    for r in rows:
        for side in (r["posttrain"], r["anchor"]):
            assert side["setup"] == {"shape": "tiny", "device": "cpu", "dtype": "fp32", "scale": 0.02}
            assert side["flops_per_s"] > 0 and 0 < side["ceiling_share"] < 2
            assert "mfu" not in side and "cuda_max_allocated_mib" not in side  # CPU: no peak claimed, no CUDA
    if name == "sft-lora":
        assert rows[0]["posttrain"]["tokens"] == sum(len(ids) for ids, _ in workload.sft_rows(10))
    else:
        assert rows[0]["posttrain"]["new_tokens"] == rows[0]["anchor"]["new_tokens"] == 4 * 128
    md = (tmp_path / "gpu.md").read_text().splitlines()
    assert md[0].startswith("| shape | workload |") and len(md) == 3 and f"| tiny | {name} |" in md[2]


def test_a_failing_side_is_reported_on_stderr_and_the_exit_code(tmp_path, monkeypatch, capsys):
    from posttrain.bench import sides

    def broken(name, env=None, timeout=None):
        raise RuntimeError("posttrain bench rollout --json --anchor failed (1):\nTraceback ...")

    monkeypatch.setattr(sides, "compare", broken)
    assert gpu.main(["--shapes", "tiny", "--workloads", "rollout", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "[bench gpu] tiny rollout: failed: posttrain bench rollout --json --anchor failed (1):" in err


def test_rollout_sides_follow_the_setup(monkeypatch):
    """Both rollout sides on the tiny shape at 2% of the data (4 prompts, 128 new tokens each), in this process."""
    from posttrain.bench import rl

    monkeypatch.setenv("POSTTRAIN_BENCH_SHAPE", "tiny")
    monkeypatch.setenv("POSTTRAIN_BENCH_SCALE", "0.02")
    for side in (rl.rollout_ours(), rl.rollout_anchor()):
        assert side["new_tokens"] == 4 * 128 and side["setup"]["shape"] == "tiny"


def test_table_shows_mfu_and_cuda_memory_when_measured():
    side = {"tokens_per_s": 200.0, "mfu": 0.412, "cuda_max_allocated_mib": 5120.0}
    row = {"shape": "1b", "workload": "sft-lora", "metric": "tokens_per_s", "anchor_name": "anchor"}
    row |= {"posttrain": side, "anchor": {**side, "tokens_per_s": 100.0, "mfu": 0.206}}
    line = gpu.table([row]).splitlines()[-1]
    assert (
        line
        == "| 1b | sft-lora | tokens_per_s | 200.0 | anchor | 100.0 | 2.00x | 41.2% / 20.6% | 5,120 / 5,120 |"
    )


def test_setup_comes_from_the_environment_and_bad_values_are_refused(monkeypatch):
    assert workload.setup() == workload.Setup()
    monkeypatch.setenv("POSTTRAIN_BENCH_SHAPE", "1b")
    monkeypatch.setenv("POSTTRAIN_BENCH_SCALE", "0.5")
    assert workload.setup() == workload.Setup(shape="1b", scale=0.5)
    assert workload.bench_config().hidden_size == 2048
    assert len(workload.sft_rows()) == 256 and len(workload.rl_prompts()) == 32
    monkeypatch.setenv("POSTTRAIN_BENCH_SHAPE", "7b")
    with pytest.raises(ValueError, match="shape"):
        workload.setup()


def test_gpu_script_refuses_a_machine_without_cuda(tmp_path):
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr
