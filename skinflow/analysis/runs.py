"""Back from the MLflow store to models: rebuild a finished stage from its run, and look inside it.

- ``cell_runs``: the child runs (one per stage) of an ablation cell's parent run.
- ``stage_from_run``: the stage module and DataModule of a child run, from its logged ``config.yaml``, with the
  weights it handed over (param ``handoff_checkpoint``).
- ``record_dve_gains``: while active, every FDLinear layer records the per-image group gains beta it computes.
- ``first_images``: the first N images of a split, collated for the stage (and the raw items, for overlays).
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from skinflow.analysis.compare import client_for, experiment_id
from skinflow.tracking.store import DEFAULT_TRACKING_URI


def cell_runs(experiment: str, row: str, seed: int, tracking_uri: str = DEFAULT_TRACKING_URI) -> dict[str, str]:
    """``{stage name: child run id}`` of the FINISHED parent run of (row, seed) in an ablation grid."""
    client = client_for(tracking_uri)
    exp = experiment_id(client, experiment)
    parents = [r for r in client.search_runs([exp], f"tags.`skinflow.row` = '{row}' and tags.`skinflow.seed` = '{seed}'")
               if r.info.status == "FINISHED"]
    if not parents:
        raise LookupError(f"no finished run of row {row!r} seed {seed} in experiment {experiment!r}")
    return child_runs(client, exp, parents[0].info.run_id)


def child_runs(client, experiment_id_: str, parent_id: str) -> dict[str, str]:
    """``{stage name: child run id}`` of a pipeline parent run."""
    children = client.search_runs([experiment_id_], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {c.info.run_name: c.info.run_id for c in children}


def has_dve(stage) -> bool:
    from skinflow.models.fdlinear import FDLinear

    return any(isinstance(m, FDLinear) for m in stage.model.modules())


def encoder_models(runs, dve_row: str, plain_row: str, seed: int, stage: str,
                   tracking_uri: str = DEFAULT_TRACKING_URI, say=print) -> tuple[dict, object]:
    """``({"DVE": stage, "no DVE": stage}, datamodule)`` for notebook 03: the two grid cells' ``stage`` models; on
    the demo's runs (``runs.demo``, no DVE row) the newest demo run's model alone, under the name that fits it, said
    in one line. The DataModule is the first model's (both cells of a grid share the data)."""
    from skinflow.analysis.sources import MAKE_GRID, NotebookError, row_runs

    client = client_for(tracking_uri)
    exp = experiment_id(client, runs.experiment)
    if runs.demo:
        parents = list(runs.frame.sort_values("start_time", ascending=False)["run_id"])
        chosen = {}
        parent, run_name = parents[0], runs.frame.set_index("run_id").loc[parents[0], "tags.skinflow.row"]
        children = child_runs(client, exp, parent)
        if stage not in children:
            raise NotebookError(f"the demo run {run_name!r} ({parent[:8]}) has no {stage!r} stage; set STAGE in the "
                                f"first cell to one of {sorted(children)}")
        model, datamodule = stage_from_run(children[stage], tracking_uri)
        chosen["DVE" if has_dve(model) else "no DVE"] = model
        missing = "no DVE" if "DVE" in chosen else "DVE"
        say(f"The demo run {run_name!r} has only a model {'with' if 'DVE' in chosen else 'without'} the DVE ({stage}); "
            f"the {missing!r} side is left out (the grid has both: `{MAKE_GRID}`).")
        return chosen, datamodule
    models, datamodule = {}, None
    for name, row in (("DVE", dve_row), ("no DVE", plain_row)):
        if not row_runs(runs, row, seed):
            raise NotebookError(f"no finished run of row {row!r} seed {seed} in {runs.experiment!r}; set DVE_ROW, "
                                f"PLAIN_ROW and SEED in the first cell to rows of the grid: "
                                f"{sorted(runs.frame['tags.skinflow.row'].astype(str).unique())}")
        children = cell_runs(runs.experiment, row, seed, tracking_uri)
        if stage not in children:
            raise NotebookError(f"row {row!r} has no {stage!r} stage; set STAGE in the first cell to one of {sorted(children)}")
        models[name], data = stage_from_run(children[stage], tracking_uri)
        datamodule = datamodule or data
    return models, datamodule


def stage_from_run(run_id: str, tracking_uri: str = DEFAULT_TRACKING_URI):
    """``(stage, datamodule)`` of a pipeline child run: its resolved config, its handed-over weights, no logger.
    Relative data paths in the config resolve against the current directory, as when the run was made."""
    from skinflow.launcher import lightning_cli
    from skinflow.pipeline import bare_argv

    client = client_for(tracking_uri)
    params = client.get_run(run_id).data.params
    if "handoff_checkpoint" not in params:
        raise LookupError(f"run {run_id} has no handoff_checkpoint param (not a finished pipeline stage)")
    with tempfile.TemporaryDirectory() as folder:
        config = client.download_artifacts(run_id, "config.yaml", folder)
        with bare_argv():
            cli = lightning_cli(["--config", config, f"--model.init_args.init_from={params['handoff_checkpoint']}",
                                 "--trainer.logger=false", "--trainer.callbacks=[]"], run=False)
    stage, datamodule = cli.model, cli.datamodule
    datamodule.processor = stage.processor
    datamodule.setup("test")
    stage.eval()
    return stage, datamodule


def first_images(datamodule, split: str = "test", n: int = 8) -> tuple[list[dict], dict]:
    """The first ``n`` items of a split (image arrays and targets) and their collated batch."""
    dataset = datamodule.splits[split]
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    return items, datamodule.collator(split)(items)


@contextmanager
def record_dve_gains(model: torch.nn.Module):
    """Yields ``{layer name: [beta (images, K), ...]}`` filled by every forward of the FDLinear layers inside."""
    from skinflow.models.fdlinear import FDLinear

    records: dict[str, list[torch.Tensor]] = {}
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, FDLinear)]

    def recorder(name, original):
        def gains(descriptors):
            out = original(descriptors)
            records.setdefault(name, []).append(out[0].detach().cpu())
            return out
        return gains

    for name, module in layers:
        module.gains = recorder(name, module.gains)  # instance attribute shadows the method
    try:
        yield records
    finally:
        for _, module in layers:
            del module.gains


@torch.no_grad()
def dve_gains(stage, batch: dict) -> dict[str, torch.Tensor]:
    """``{layer: beta (B, K)}`` of the batch's images: the DVE's frequency-group gains (1 = the base weight)."""
    with record_dve_gains(stage.model) as records:
        stage.encode_images(stage.model, batch["pixel_values"].to(stage.device), batch["image_grid_thw"].to(stage.device))
    if not records:
        raise ValueError("this model has no FDLinear layers (the DVE is off)")
    return {name: torch.cat(chunks) for name, chunks in records.items()}


def short_layer_name(name: str) -> str:
    """``model.visual.blocks.3.mlp.up_proj`` -> ``block 3 up_proj``.

    >>> short_layer_name("model.base_model.model.model.visual.blocks.3.mlp.up_proj")
    'block 3 up_proj'
    """
    parts = name.split(".")
    if "blocks" in parts:
        i = parts.index("blocks")
        return f"block {parts[i + 1]} {parts[-1]}"
    return Path(name).name
