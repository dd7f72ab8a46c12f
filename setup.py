"""Only what pyproject.toml cannot say: ship ``skinflow-lightning.pth`` to site-packages (``python -m lightning``,
see ``_skinflow_lightning_hook.py``), for regular and editable installs alike."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH = Path(__file__).parent / "skinflow-lightning.pth"


class BuildWithPth(build_py):
    """Regular installs: the .pth sits at the wheel's root, which pip unpacks into site-packages."""

    def run(self):
        super().run()
        self.copy_file(str(PTH), str(Path(self.build_lib) / PTH.name))

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib) / PTH.name)]


class EditableWithPth(editable_wheel):
    """Editable installs (PEP 660): the editable wheel holds only setuptools' own .pth and finder, so the hook's
    .pth is added to the unpacked wheel before it is zipped (setuptools 68-80 build it in _run_build_commands)."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        result = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        shutil.copy(PTH, Path(unpacked_wheel) / PTH.name)
        return result


setup(cmdclass={"build_py": BuildWithPth, "editable_wheel": EditableWithPth})
