"""The wheel on its own: built from this checkout, installed into a fresh venv with its runtime dependencies only
(no peft, trl, matplotlib, pyarrow, bitsandbytes), it runs one SFT, one eval and the quick demo's data stage, and
the optional parts say which extra they need. Slow (a venv and torch): about a minute and a half."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import training_files

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, env=None, cwd=None, timeout=900):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    try:
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "-q",
                "-w",
                str(root),
                str(ROOT),
            ]
        )
    except AssertionError as e:
        pytest.skip(f"cannot build the wheel here: {str(e)[-300:]}")
    wheel = next(root.glob("posttrain-*.whl"))
    env_dir = root / "venv"
    run([sys.executable, "-m", "venv", str(env_dir)])
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q"]
    try:
        run([*pip, "torch==2.13.0"])  # the CPU wheel on disk, not a CUDA build
        run([*pip, str(wheel)])
    except AssertionError as e:
        pytest.skip(f"cannot install the runtime dependencies here (no package index?): {str(e)[-300:]}")
    return env_dir


def test_the_wheel_with_runtime_dependencies_only(venv, tmp_path):
    py = str(venv / "bin" / "python")
    cli = str(venv / "bin" / "posttrain")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "POSTTRAIN_PROGRESS_EVERY_S": "0"}
    env.pop("PYTHONPATH")
    listed = run([py, "-m", "pip", "list", "--format=json"], env=env).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert "posttrain" in names and not names & {
        "peft",
        "trl",
        "matplotlib",
        "pyarrow",
        "bitsandbytes",
        "datasets",
    }
    where = run([py, "-c", "import posttrain; print(posttrain.__file__)"], env=env, cwd=tmp_path).stdout
    assert str(venv) in where  # the installed package, not this checkout

    d = training_files(tmp_path / "files", 8)
    out = tmp_path / "sft"
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={out}", "train.max_steps=2"]
    run([cli, "sft", *args, "train.batch_size=4"], env=env, cwd=tmp_path)
    assert (out / "final" / "model.safetensors").is_file()
    run(
        [cli, "recipes", "cp", "sft_lora", str(tmp_path / "recipe.yaml")], env=env, cwd=tmp_path
    )  # in the wheel
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={tmp_path / 'lora'}"]
    run(
        [cli, "sft", "--config", str(tmp_path / "recipe.yaml"), *args, "train.max_steps=2"],
        env=env,
        cwd=tmp_path,
    )
    assert (tmp_path / "lora" / "final" / "adapter_config.json").is_file()
    assert "model.quantization" in run([cli, "sft", "--help"], env=env, cwd=tmp_path).stdout

    ev = tmp_path / "eval"
    run(
        [cli, "eval", f"model={out / 'final'}", f"likelihood.data={d / 'sft.jsonl'}", f"output_dir={ev}"],
        env=env,
        cwd=tmp_path,
    )
    assert (ev / "report.json").is_file() and (ev / "report.md").is_file()

    code = (
        "from pathlib import Path; from posttrain.demo.pipeline import Pipeline; from posttrain.demo.settings import"
        f" settings; r = Pipeline(Path({str(tmp_path / 'demo')!r}), settings(quick=True)).run(stages=('base', 'data'));"
        " print(r['stages'])"
    )
    stages = run([py, "-c", code], env=env, cwd=tmp_path).stdout
    assert "'data': {'status': 'ok'" in stages, stages
    assert (tmp_path / "demo" / "data" / "sft.jsonl").is_file()

    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"PAR1")
    proc = subprocess.run(
        [cli, "sft", f"model={d / 'model'}", f"data={parquet}", f"output_dir={tmp_path / 'p'}"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "posttrain[data]" in err[-1] and "Traceback" not in proc.stderr, (
        proc.stderr
    )
