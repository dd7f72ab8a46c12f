"""``python -m skinflow ablate --config configs/ablation/paper_table.yaml``: the paper's ablation grid, resumable.

An ablation file names a pipeline, seeds and rows; every (row, seed) cell is one pipeline run (parent MLflow run
with child runs per stage, see ``skinflow.pipeline``) in the grid's experiment::

    name: paper-table-tiny-synthetic        # MLflow experiment of the grid (and its tag skinflow.ablation)
    pipeline: ../pipeline/ablation_tiny_synthetic.yaml
    seeds: [0, 1, 2]
    args: []                                # CLI arguments for every stage of every cell
    rows:
      - name: no-stage1-no-dve
        factors: {stage1: "no", dve: "off"} # tags on the cell's parent run: compare --group-by stage1,dve
        skip: [stage1]
      - name: stage1-dve
        factors: {stage1: "yes", dve: "on"}
        args: ["--model.init_args.backbone.dve.enabled=true"]   # every stage (the handoff checks the backbone)
        stage_args: {stage2: ["--trainer.max_steps=60"]}        # one stage only

A cell's seed reaches every stage three ways: ``--seed_everything`` (sampling, dropout), the backbone's
``seed`` (random initialisation of the tiny preset, LoRA and DVE heads) and the data's ``seed`` (shuffling,
augmentation, prompt draws); the split stays the same across seeds. Its parent run is tagged ``skinflow.ablation``,
``skinflow.row``, ``skinflow.seed`` and the row's factors. Re-running the command skips every cell that already
has a FINISHED parent run, so an interrupted grid resumes where it stopped; the unfinished parent of an
interrupted cell (FAILED, or RUNNING after a hard kill) is marked KILLED and the cell runs again. At the end the
grid is summarised by ``skinflow.analysis.compare`` (mean ± std over seeds per row; CSV and bar chart).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from skinflow.errors import UserError
from skinflow.metrics.headline import HEADLINE_METRICS
from skinflow.pipeline import Pipeline, PipelineError, load_pipeline, run_pipeline

ABLATION_KEYS = {"name", "pipeline", "seeds", "args", "rows", "metrics", "tracking_uri", "artifact_location"}
ROW_KEYS = {"name", "factors", "skip", "args", "stage_args"}
GRID_METRICS = (*(f"final/{m}" for m in HEADLINE_METRICS), "final/test/graded_top1_by_fst/worst")


class AblationError(UserError):
    pass


@dataclass
class Row:
    name: str
    factors: dict[str, str] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    args: list[str] = field(default_factory=list)
    stage_args: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Ablation:
    name: str
    pipeline: Pipeline
    seeds: list[int]
    rows: list[Row]
    args: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: list(GRID_METRICS))
    source: Path | None = None

    def cells(self) -> list[tuple[Row, int]]:
        return [(row, seed) for row in self.rows for seed in self.seeds]


def load_ablation(path: str | Path) -> Ablation:
    """Read and check an ablation file; errors name the file and the offending key or row."""
    path = Path(path)
    if not path.is_file():
        raise AblationError(f"ablation file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = set(raw) - ABLATION_KEYS
    if unknown:
        raise AblationError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(ABLATION_KEYS)}")
    for key in ("name", "pipeline", "seeds", "rows"):
        if not raw.get(key):
            raise AblationError(f"{path}: {key!r} is required")
    pipeline = load_pipeline(path.parent / raw["pipeline"])
    pipeline.experiment_name = raw["name"]
    for key in ("tracking_uri", "artifact_location"):
        if key in raw:
            setattr(pipeline, key, raw[key])
    stage_names = {s.name for s in pipeline.stages}
    rows, seen = [], set()
    for i, entry in enumerate(raw["rows"]):
        where = f"{path} rows[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise AblationError(f"{where}: each row needs a 'name'")
        bad = set(entry) - ROW_KEYS
        if bad:
            raise AblationError(f"{where} ({entry['name']}): unknown keys {sorted(bad)}; allowed: {sorted(ROW_KEYS)}")
        if entry["name"] in seen:
            raise AblationError(f"{where}: row name {entry['name']!r} is used twice")
        seen.add(entry["name"])
        row = Row(entry["name"], {str(k): str(v) for k, v in (entry.get("factors") or {}).items()},
                  [str(s) for s in entry.get("skip") or []], [str(a) for a in entry.get("args") or []],
                  {str(k): [str(a) for a in v] for k, v in (entry.get("stage_args") or {}).items()})
        missing = (set(row.skip) | set(row.stage_args)) - stage_names
        if missing:
            raise AblationError(f"{where} ({row.name}): no stage named {sorted(missing)} in {pipeline.source}; "
                                f"stages: {sorted(stage_names)}")
        rows.append(row)
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise AblationError(f"{path}: 'seeds' must be a list of distinct integers, got {seeds!r}")
    return Ablation(raw["name"], pipeline, seeds, rows, [str(a) for a in raw.get("args") or []],
                    list(raw.get("metrics") or GRID_METRICS), path)


def seed_args(seed: int) -> list[str]:
    """CLI arguments that give every stage of a cell its seed (the split is not among them)."""
    return [f"--seed_everything={seed}", f"--model.init_args.backbone.seed={seed}", f"--data.init_args.seed={seed}"]


def cell_tags(ablation: Ablation, row: Row, seed: int) -> dict[str, str]:
    return {"skinflow.ablation": ablation.name, "skinflow.row": row.name, "skinflow.seed": str(seed),
            "skinflow.row_index": str(ablation.rows.index(row)), **row.factors}


def existing_cells(client, experiment_id: str, ablation: str) -> dict[tuple[str, str], list]:
    """Parent runs of the grid so far, by (row, seed)."""
    from skinflow.tracking.store import search_runs

    found: dict[tuple[str, str], list] = {}
    for run in search_runs(client, [experiment_id], f"tags.`skinflow.ablation` = '{ablation}'", output_format="list"):
        key = (run.data.tags.get("skinflow.row", ""), run.data.tags.get("skinflow.seed", ""))
        found.setdefault(key, []).append(run)
    return found


def run_ablation(ablation: Ablation, only_rows: tuple[str, ...] = ()) -> dict:
    """Run the missing cells; returns ``{"ran": [(row, seed, run_id)], "skipped": [...], "seconds": s}``."""
    from skinflow.tracking.store import open_experiment

    unknown = set(only_rows) - {r.name for r in ablation.rows}
    if unknown:
        raise AblationError(f"no row named {sorted(unknown)} in {ablation.source}; rows: {[r.name for r in ablation.rows]}")
    pipeline = ablation.pipeline
    client, experiment_id, _ = open_experiment(ablation.name, pipeline.tracking_uri, pipeline.artifact_location)
    done = existing_cells(client, experiment_id, ablation.name)
    result = {"ran": [], "skipped": [], "seconds": 0.0}
    start = time.perf_counter()
    cells = [(row, seed) for row, seed in ablation.cells() if not only_rows or row.name in only_rows]
    for i, (row, seed) in enumerate(cells, 1):
        runs = done.get((row.name, str(seed)), [])
        finished = [r for r in runs if r.info.status == "FINISHED"]
        label = f"[ablate {i}/{len(cells)}] {row.name} seed {seed}"
        if finished:
            print(f"{label}: done before (run {finished[0].info.run_id}), skipped")
            result["skipped"].append((row.name, seed, finished[0].info.run_id))
            continue
        for stale in runs:  # an interrupted attempt: keep it for the record, out of the comparison
            if stale.info.status != "KILLED":
                client.set_terminated(stale.info.run_id, "KILLED")
                print(f"{label}: earlier attempt {stale.info.run_id} ({stale.info.status}) marked KILLED")
        print(f"{label}: running")
        pipeline.run_name = f"{row.name}/seed{seed}"
        out = run_pipeline(pipeline, tuple(row.skip), row.stage_args, tags=cell_tags(ablation, row, seed),
                           all_args=[*ablation.args, *row.args, *seed_args(seed)])
        result["ran"].append((row.name, seed, out["parent_run_id"]))
    result["seconds"] = time.perf_counter() - start
    return result


def summarize_grid(ablation: Ablation, out: str | Path | None = None, log_to_mlflow: bool = False) -> dict:
    from skinflow.analysis.compare import compare

    return compare(ablation.name, ablation.metrics, ["row"], ablation.pipeline.tracking_uri,
                   filter_string=f"tags.`skinflow.ablation` = '{ablation.name}'",
                   out=out or Path("mlruns") / "compare" / ablation.name, log_to_mlflow=log_to_mlflow)


def ablate_command(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m skinflow ablate", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="ablation YAML (see configs/ablation/)")
    parser.add_argument("--row", action="append", default=[], help="run only this row (repeatable)")
    parser.add_argument("--out", default=None, help="folder for the grid's comparison.csv / .png")
    parser.add_argument("--log-to-mlflow", action="store_true", help="log the grid's comparison to a 'compare' run")
    ns = parser.parse_args(argv)
    try:
        ablation = load_ablation(ns.config)
        result = run_ablation(ablation, tuple(ns.row))
    except (AblationError, PipelineError) as error:
        parser.exit(2, f"ablate: {error}\n")
    print(f"\n[ablate] {len(result['ran'])} cells run, {len(result['skipped'])} skipped as done, "
          f"{result['seconds'] / 60:.1f} min")
    summary = summarize_grid(ablation, ns.out, ns.log_to_mlflow)
    print(summary["text"])
    print(f"\nwrote {summary['csv']} and {summary['png']}")
    result["summary"] = summary
    return result
