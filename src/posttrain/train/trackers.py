"""Experiment trackers beside `metrics.jsonl`: `train.report_to=[jsonl, tensorboard, wandb, trackio, mlflow]`.

    trackers = Trackers(out, ["tensorboard", "wandb"], config, resume_step=0)
    trackers.log({"loss": 1.2, "lr": 3e-4}, step=10)     # numbers only; the same row metrics.jsonl gets
    trackers.close()

`metrics.jsonl` is always written (resume cuts it back to the checkpoint and the demo and tests read it); the others
get every logged row's numeric values at the same step, through the real libraries (optional extras):

| name | where | library |
| --- | --- | --- |
| tensorboard | OUTPUT/tensorboard (event files; a resumed run purges the steps after its checkpoint) | tensorboard |
| wandb | OUTPUT/wandb; offline unless WANDB_MODE says otherwise (`wandb sync` uploads later) | wandb |
| trackio | the trackio project `train.tracker_project`, in TRACKIO_DIR (OUTPUT/trackio unless set) | trackio |
| mlflow | MLFLOW_TRACKING_URI, default OUTPUT/mlruns (a local file store) | mlflow |

A tracker whose library is missing is one error line naming the extra, before training starts.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
import uuid
from pathlib import Path
from typing import Any

from posttrain.errors import UserError

TRACKERS = ("jsonl", "tensorboard", "wandb", "trackio", "mlflow")
LIBRARY = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}


def _require(name: str):
    try:
        return importlib.import_module(LIBRARY[name])
    except ImportError:
        raise UserError(
            f"train.report_to={name} needs the {LIBRARY[name]} package: pip install 'posttrain[{name}]'"
        ) from None


def numbers(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric values of a metrics row (strings, lists, NaN left out)."""
    out = {}
    for k, v in row.items():
        if hasattr(v, "item"):
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and k != "step":
            out[k] = float(v)
    return out


class Trackers:
    def __init__(
        self,
        out: Path,
        names: list[str],
        config: dict[str, Any] | None = None,
        resume_step: int = 0,
        project: str = "posttrain",
    ) -> None:
        self.out, self.config, self.project = Path(out), config or {}, project
        self.name = self.out.name
        self.sinks = []
        for name in dict.fromkeys(names):
            if name == "jsonl":
                continue
            if name not in TRACKERS:
                raise UserError(f"train.report_to: unknown tracker {name!r} (one of {', '.join(TRACKERS)})")
            if name == "trackio" and "trackio" not in sys.modules:  # trackio reads it once, when imported
                os.environ.setdefault("TRACKIO_DIR", str(self.out / "trackio"))
            _require(name)
            self.sinks.append(getattr(self, f"_open_{name}")(resume_step))

    # ---- one (log, close) pair per library
    def _open_tensorboard(self, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(
            str(self.out / "tensorboard"), purge_step=resume_step + 1 if resume_step else None
        )

        def log(values, step):
            for k, v in values.items():
                writer.add_scalar(k, v, step)
            writer.flush()

        return log, writer.close

    def _open_wandb(self, resume_step: int):
        import wandb

        ident_file = self.out / "wandb_id"
        ident = ident_file.read_text().strip() if ident_file.is_file() else uuid.uuid4().hex[:8]
        ident_file.parent.mkdir(parents=True, exist_ok=True)
        ident_file.write_text(ident)
        run = wandb.init(
            project=self.project,
            name=self.name,
            id=ident,
            resume="allow",
            dir=str(self.out),
            mode=os.environ.get("WANDB_MODE", "offline"),
            config=self.config,
            settings=wandb.Settings(silent=True, console="off"),
        )

        def log(values, step):
            run.log(values, step=step)

        return log, run.finish

    def _open_trackio(self, resume_step: int):
        import trackio

        with contextlib.redirect_stdout(sys.stderr):  # trackio prints; stdout is the command's result line
            run = trackio.init(project=self.project, name=self.name, config=self.config, resume="allow")

        def log(values, step):
            run.log(values, step=step)

        def close():
            with contextlib.redirect_stdout(sys.stderr):
                trackio.finish()

        return log, close

    def _open_mlflow(self, resume_step: int):
        import mlflow

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store, which mlflow keeps working behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (self.out / "mlruns").resolve().as_uri()
        client = mlflow.tracking.MlflowClient(uri)
        exp = client.get_experiment_by_name(self.project)
        exp_id = exp.experiment_id if exp else client.create_experiment(self.project)
        ident_file = self.out / "mlflow_run_id"
        if ident_file.is_file():
            run_id = ident_file.read_text().strip()
        else:
            run_id = client.create_run(exp_id, run_name=self.name).info.run_id
            ident_file.parent.mkdir(parents=True, exist_ok=True)
            ident_file.write_text(run_id)
        self.mlflow_uri, self.mlflow_run = uri, run_id

        def log(values, step):
            for k, v in values.items():
                client.log_metric(run_id, k, v, step=step)

        return log, lambda: client.set_terminated(run_id)

    # ---- the loop's side
    def log(self, row: dict[str, Any], step: int) -> None:
        values = numbers(row)
        if values:
            for log, _ in self.sinks:
                log(values, step)

    def close(self) -> None:
        for _, close in self.sinks:
            close()
        self.sinks = []
