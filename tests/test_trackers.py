"""`train.report_to`: each tracker gets the rows metrics.jsonl gets, read back with the tracker's own reader
(TensorBoard's EventAccumulator, the W&B offline run file, MLflow's client, trackio's SQLite store)."""

import json
import sqlite3
import struct
from pathlib import Path

import pytest

from helpers import training_files
from posttrain.cli import main as cli
from posttrain.train.log import read_metrics


def wandb_history(path: Path) -> list[dict]:
    """History rows of a W&B offline `.wandb` file: a LevelDB-style log (a 7-byte header, 32 KiB blocks of records
    framed as crc32 / length / type), each record a `wandb_internal_pb2.Record` protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, payloads, partial = 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(payload)
        elif kind in (2, 3):
            partial += payload
        elif kind == 4:
            payloads.append(partial + payload)
            partial = b""
    rows = []
    for payload in payloads:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(payload)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
    return rows


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    import importlib.util

    missing = [
        lib for lib in ("tensorboard", "wandb", "trackio", "mlflow") if importlib.util.find_spec(lib) is None
    ]
    if missing:
        pytest.skip(f"not installed: {missing}")  # found, not imported: trackio reads TRACKIO_DIR on import
    d = training_files(tmp_path_factory.mktemp("trackers"), 8)
    out = d / "run"
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={out}", "train.max_steps=4"]
    trackers = "train.report_to=[jsonl,tensorboard,wandb,trackio,mlflow]"
    assert cli(["sft", *args, "train.batch_size=4", trackers, "train.progress=false"]) == 0
    return out


def want(run_dir, key="loss"):
    return [(r["step"], r[key]) for r in read_metrics(run_dir / "metrics.jsonl") if key in r]


def test_tensorboard_events_hold_the_metrics(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    for key in ("loss", "lr", "grad_norm"):
        got = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in got] == [s for s, _ in want(run_dir, key)]
        assert [v for _, v in got] == pytest.approx([v for _, v in want(run_dir, key)], rel=1e-6)  # float32


def test_wandb_offline_run_holds_the_metrics(run_dir):
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = wandb_history(path)
    assert [(r["_step"], r["loss"]) for r in rows] == want(run_dir)


def test_mlflow_run_holds_the_metrics(run_dir, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = mlflow.tracking.MlflowClient((run_dir / "mlruns").resolve().as_uri())
    history = client.get_metric_history((run_dir / "mlflow_run_id").read_text().strip(), "loss")
    assert sorted((m.step, m.value) for m in history) == want(run_dir)


def test_trackio_store_holds_the_metrics_and_the_config(run_dir):
    con = sqlite3.connect(run_dir / "trackio" / "posttrain.db")
    rows = [
        (step, json.loads(blob)["loss"]) for step, blob in con.execute("select step, metrics from metrics")
    ]
    assert sorted(rows) == want(run_dir)
    (config,) = [json.loads(c) for (c,) in con.execute("select config from configs")]
    assert config["train"]["max_steps"] == 4


def test_a_missing_tracker_library_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    from posttrain.train import trackers

    monkeypatch.setitem(trackers.LIBRARY, "mlflow", "no_such_module_for_posttrain")
    d = training_files(tmp_path, 8)
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={tmp_path / 'run'}"]
    assert cli(["sft", *args, "train.max_steps=2", "train.report_to=[mlflow]"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "pip install 'posttrain[mlflow]'" in err[-1] and not (tmp_path / "run" / "metrics.jsonl").exists()
    assert cli(["sft", *args, "train.report_to=[tensorbord]"]) == 2
    assert "did you mean 'tensorboard'" in capsys.readouterr().err
