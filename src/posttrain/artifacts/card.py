"""`final/README.md`: a model card in the Hugging Face Hub's format, so a directory explains itself.

    write_model_card("runs/sft/final", cfg, "sft", result)

YAML front matter (base_model, library_name, pipeline_tag, tags) and sections: what was trained and how, the data
files with their SHA-256 and record counts, the whole resolved config, the final metrics, and how each outside
loader reads the directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from posttrain.config import to_dict

PIPELINES = {"rm": "text-classification"}
"""Command -> Hub pipeline tag (text-generation otherwise)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def data_rows(source: str | None) -> list[dict[str, Any]]:
    """One row per comma-separated source: path, SHA-256 and record count (Hub datasets: name only)."""
    from posttrain.data.readers import read_records

    rows = []
    for part in (p.strip() for p in str(source or "").split(",")):
        if not part:
            continue
        path = Path(part)
        if path.is_file():
            records = sum(1 for _ in read_records(part))
            rows.append(
                {
                    "source": part,
                    "sha256": file_sha256(path),
                    "bytes": path.stat().st_size,
                    "records": records,
                }
            )
        else:
            rows.append({"source": part, "sha256": None, "bytes": None, "records": None})
    return rows


def _loading(directory: Path, cfg) -> str:
    chain = (directory / "base_adapters.json").exists()
    if (directory / "adapter_config.json").exists():
        text = (
            "A PEFT adapter on `" + str(cfg.model) + "`. posttrain: "
            "`posttrain.artifacts.load_for_inference(base, adapter=dir)` (merges the adapters listed in "
            "`base_adapters.json` first). peft: `PeftModel.from_pretrained(base, dir)`"
        )
        if chain:
            text += (
                " gives this stage's adapter on the raw base only, not the trained policy: this adapter was trained "
                "on a base with the adapters in `base_adapters/` merged in. Export the whole chain as one adapter "
                "with `posttrain merge --adapter DIR --out OUT --peft`, or merge it into the weights with "
                "`posttrain merge --model BASE --adapter DIR --out OUT`."
            )
        return text + ". The tokenizer carries the chat template used in training."
    return (
        "A full Hugging Face model directory: `AutoModelForCausalLM.from_pretrained(dir)` (reward models: "
        "`AutoModelForSequenceClassification`, see `reward_config.json`); the tokenizer carries the chat template "
        "used in training."
    )


def write_model_card(directory: str | Path, cfg, command: str, metrics: dict[str, Any]) -> Path:
    """Write `directory/README.md` (through a temporary file and a rename)."""
    from posttrain import __version__

    directory = Path(directory)
    library = "peft" if (directory / "adapter_config.json").exists() else "transformers"
    front = {
        "base_model": str(cfg.model),
        "library_name": library,
        "pipeline_tag": PIPELINES.get(command, "text-generation"),
        "tags": ["posttrain", command, cfg.peft.method if cfg.peft.method != "none" else "full-fine-tuning"],
    }
    data = data_rows(cfg.data) + data_rows(getattr(cfg, "eval_data", None))
    table = "\n".join(
        f"| `{r['source']}` | {r['records'] if r['records'] is not None else 'hub'} | {r['sha256'] or '-'} |"
        for r in data
    )
    scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
    card = f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {directory.parent.name or directory.name}

Trained with posttrain {__version__} (`posttrain {command}`) from `{cfg.model}`; PEFT method
`{cfg.peft.method}`; starting adapter `{cfg.adapter or "none"}`; chat template `{cfg.template}` (saved with the
tokenizer).

## Data

| source | records | sha256 |
| --- | --- | --- |
{table}

## Loading

{_loading(directory, cfg)}

## Final metrics

```json
{json.dumps(scalars, indent=2)}
```

## Config

```yaml
{yaml.safe_dump(to_dict(cfg), sort_keys=False).strip()}
```
"""
    tmp = directory / ".README.md.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(card)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, directory / "README.md")
    return directory / "README.md"
