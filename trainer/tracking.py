"""metrics.jsonl and wandb: the same records go to both, from the main process only."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records after `last_step` (a resumed run re-logs the steps after its checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def _clean(value: Any) -> Any:
    """Non-finite floats as the strings "NaN", "Infinity", "-Infinity" (JSON has no such numbers; null would read as
    "not measured"); `float(s)` turns them back into floats."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


class MetricsLogger:
    """Appends one JSON object per call to metrics.jsonl and mirrors scalars to wandb."""

    def __init__(self, output_dir: Path, wandb_cfg, run_name: str, config: dict[str, Any], resume_step: int):
        self.path = output_dir / "metrics.jsonl"
        truncate_metrics(self.path, resume_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._wandb = None
        if wandb_cfg.mode != "disabled":
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=wandb_cfg.project,
                entity=wandb_cfg.entity,
                name=run_name,
                mode=wandb_cfg.mode,
                dir=str(output_dir),
                config=config,
                id=_wandb_id(output_dir),
                resume="allow",
            )

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record), sort_keys=False) + "\n")
        self._file.flush()
        if self._wandb is not None:  # wandb takes NaN and infinities as floats
            flat = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            for group in ("data_seen", "samples"):
                for name, n in (record.get(group) or {}).items():
                    flat[f"{group}/{name}"] = n
            self._wandb.log(flat, step=record["step"])

    def log_eval(self, step: int, results: dict[str, Any]) -> None:
        if self._wandb is not None:
            flat = {f"eval/{k}": v for k, v in _flatten(results).items() if isinstance(v, (int, float))}
            self._wandb.log(flat, step=step)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            self._wandb.finish()


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}/{k}" if prefix else k
        if isinstance(v, dict):
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _wandb_id(output_dir: Path) -> str:
    """A stable run id per output dir, so a resumed run continues the same wandb run."""
    f = output_dir / "wandb_id.txt"
    if f.is_file():
        return f.read_text().strip()
    import uuid

    run_id = uuid.uuid4().hex[:12]
    f.write_text(run_id + "\n")
    return run_id
