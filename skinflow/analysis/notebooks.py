"""Run the kit's notebooks headless with parameters (tests, and ``python -m skinflow.analysis.notebooks``).

Each notebook has one code cell tagged ``parameters`` (experiment name, store, output folder). ``execute`` inserts
a cell right after it that overrides those names, papermill-style, and runs the notebook with ``nbclient`` in the
given directory. Needs the ``dev`` extra (nbformat, nbclient, ipykernel).

    python -m skinflow.analysis.notebooks notebooks/01-ablation-paper-table.ipynb EXPERIMENT=paper-table-tiny-synthetic
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def execute(path: str | Path, parameters: dict | None = None, cwd: str | Path = ".", timeout: int = 900,
            save_to: str | Path | None = None):
    """Execute a notebook with ``parameters`` injected; returns the executed ``NotebookNode`` (and writes it to
    ``save_to`` if given). A failing cell raises ``nbclient``'s ``CellExecutionError`` naming the cell."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(path), as_version=4)
    tagged = [i for i, cell in enumerate(nb.cells) if "parameters" in cell.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{path}: expected one cell tagged 'parameters', found {len(tagged)}")
    if parameters:
        source = "# injected parameters\n" + "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]}))
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    if save_to is not None:
        nbformat.write(nb, str(save_to))
    return nb


def imported_modules(path: str | Path) -> set[str]:
    """Top-level module names the notebook's code cells import."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    names = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                names.add((node.module or "").split(".")[0])
    return names


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    params = {}
    for item in argv[1:]:
        key, _, value = item.partition("=")
        params[key] = ast.literal_eval(value) if value[:1] in "[{('\"0123456789-" else value
    out = Path(argv[0]).with_suffix(".executed.ipynb")
    execute(argv[0], params, save_to=out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1:])
