"""The report command: one self-contained HTML page whose numbers are the store's."""

import html
import re
from pathlib import Path

import pytest

from skinflow.cli import main


def test_report_of_a_pipeline_run(ablation_grid, tmp_path, capsys):
    """On one cell of the session's ablation grid: a pipeline parent run with warmup, Stage I and Stage II."""
    from mlflow import MlflowClient

    uri = ablation_grid["uri"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("grid-test").experiment_id
    parent = client.search_runs([exp], "tags.`skinflow.row` = 'stage1-dve' and tags.`skinflow.seed` = '0' "
                                       "and attributes.status = 'FINISHED'")[0]
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    result = {"parent_run_id": parent.info.run_id, "children": {c.info.run_name: c.info.run_id for c in children}}
    assert set(result["children"]) == {"warmup", "stage1", "stage2"}
    out = tmp_path / "report.html"
    capsys.readouterr()
    main(["report", "--run-id", result["parent_run_id"], "--tracking-uri", uri, "--out", str(out), "--log-to-mlflow"])
    assert "Downloading artifacts" not in capsys.readouterr().err  # no progress bar per artifact
    page = out.read_text()
    # the table: each stage's test metrics, as stored, and the start rows of stages evaluated first
    for stage, run_id in result["children"].items():
        metrics = client.get_run(run_id).data.metrics
        if "test/graded_top1" in metrics:
            row = re.search(rf"<tr><th>{stage}</th>(.*?)</tr>", page).group(1)
            assert f"<td>{metrics['test/graded_top1']:.4f}</td>" in row and f"<td>{metrics['test/top1_exact']:.4f}</td>" in row
    assert "<tr><th>stage2 (start)</th>" in page
    # each stage's claim row, start -> end, with the store's numbers (Stage I: validation caption reward)
    stage1 = client.get_run(result["children"]["stage1"]).data.metrics
    claim = re.search(r"<tr><th>stage1</th><td[^>]*>[^<]*</td><td[^>]*>val/reward/caption_fields</td>(.*?)</tr>", page).group(1)
    start, end = stage1.get("start/val/reward/caption_fields"), stage1["val/reward/caption_fields"]
    assert f"<td>{end:.4f}</td>" in claim and (start is None or f"<td>{end - start:+.4f}</td>" in claim)
    stage2 = client.get_run(result["children"]["stage2"]).data.metrics
    claim = re.search(r"<tr><th>stage2</th><td[^>]*>[^<]*</td><td[^>]*>test/graded_top6</td>(.*?)</tr>", page).group(1)
    assert claim.startswith(f"<td>{stage2['start/test/graded_top6']:.4f}</td><td>{stage2['test/graded_top6']:.4f}</td>")
    # the confusion matrix counts every test image of the last tested stage once, and recall is per label
    from skinflow.analysis.report import prediction_table

    rows = prediction_table(client, client.get_run(result["children"]["stage2"]))
    confusion = re.search(r"<table class=confusion>(.*?)</table>", page).group(1)
    assert rows and sum(int(v) for v in re.findall(r"<td>(\d+)</td>", confusion)) == len(rows)
    assert f"<p>{len(rows)} test images;" in page
    # skin-type bars from the same rows: image counts, and means equal to the stage's logged per-type metric
    fst = re.search(r"<table class=fst>(.*?)</table>", page).group(1)
    cells = re.findall(r"<tr><th>(\d)</th><td>(\d+)</td><td>([\d.]+)</td><td>([\d.]+)</td><td>([\d.]+)</td></tr>", fst)
    assert cells and sum(int(n) for _, n, *_ in cells) == sum(1 for r in rows if int(r["fitzpatrick"]) in range(1, 7))
    for t, _, mean, low, high in cells:
        assert float(mean) == pytest.approx(stage2[f"test/graded_top1_by_fst/fst_{t}"], abs=1e-4)
        assert float(low) <= float(mean) <= float(high)
    recall = re.search(r"<table class=recall>(.*?)</table>", page).group(1)
    assert sum(int(n) for n in re.findall(r"</th><td>(\d+)</td><td>", recall)) == len(rows)
    # figures are embedded: curves per stage, skin types, and the attention overlays the callback logged
    images = re.findall(r"<img alt='([^']*)' src='data:image/png;base64,[A-Za-z0-9+/=]+'>", page)
    assert {f"curves {s}" for s in result["children"]} <= set(images) and "skin types" in images
    overlays = [i for i in images if i.startswith("attention/")]
    assert overlays and all(i.endswith(".png") for i in overlays)
    # a panel for every reward term a stage logged (not only the total), each named under its figure
    for stage, run_id in result["children"].items():
        terms = {k for k in client.get_run(run_id).data.metrics if re.fullmatch(r"reward/\w+", k) and not k.endswith("_std")}
        if terms:
            panels = re.search(rf"<p class='meta curves'>{stage}: (.*?)</p>", page).group(1).split(", ")
            assert len(terms) > 1 and terms <= set(panels) and "reward/total" in panels
    # excerpts: the last rollout table of Stage II and the last validation samples of Stage I, as logged, escaped
    from skinflow.analysis.report import EXCERPT_CHARS, last_table

    for stage, folder, contains in (("stage2", "rollouts", ""), ("stage1", "samples", "val_epoch")):
        path, logged = last_table(client, client.get_run(result["children"][stage]), folder, contains)
        assert logged and path in page, (stage, folder)
        section = page[page.index("<h2>What the model wrote</h2>"):]
        section = section[section.index(f"<h3>{stage}</h3>"):]
        excerpt = section[section.index(f"{path}: "):]
        excerpt = excerpt[:excerpt.index("</table>")]
        assert html.escape(logged[0]["completion"][:EXCERPT_CHARS]) in excerpt
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing outside the page
    assert "report.html" in {a.path for a in client.list_artifacts(result["parent_run_id"])}
    with pytest.raises(SystemExit):
        main(["report", "--run-id", "0123abc", "--tracking-uri", uri, "--out", str(tmp_path / "x.html")])
    assert "no run '0123abc'" in capsys.readouterr().err


def test_the_excerpt_is_the_last_matching_table_of_its_folder_not_the_first(tmp_path):
    import json
    from types import SimpleNamespace as N

    from skinflow.analysis.report import last_table

    tables = {"rollouts/step000004.json": "early", "rollouts/step000020.json": "late", "samples/start/val_epoch009.json": "start",
              "samples/val_epoch001.json": "val", "samples/test_epoch002.json": "test"}

    class Client:
        def list_artifacts(self, run_id, folder):
            below = {p[len(folder) + 1:].split("/")[0] for p in tables if p.startswith(folder + "/")}
            return [N(path=f"{folder}/{name}", is_dir=not name.endswith(".json")) for name in sorted(below)]

        def download_artifacts(self, run_id, path, folder):
            out = Path(folder) / "t.json"
            out.write_text(json.dumps({"columns": ["completion"], "data": [[tables[path]]]}))
            return str(out)

    stage = N(info=N(run_id="r"))
    assert last_table(Client(), stage, "rollouts") == ("rollouts/step000020.json", [{"completion": "late"}])
    assert last_table(Client(), stage, "samples", "val_epoch") == ("samples/val_epoch001.json", [{"completion": "val"}])
    assert last_table(Client(), stage, "captions") == ("", [])
