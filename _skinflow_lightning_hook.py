"""``python -m lightning fit|validate|test|predict --config <yaml>`` runs skinflow's CLI (``skinflow.entry``).

Lightning ships no ``lightning/__main__.py`` (it went with Lightning App in 2024). The kit's install puts
``skinflow-lightning.pth`` in site-packages; at interpreter start it imports this module, which appends a finder
to the *end* of ``sys.meta_path`` answering only for ``lightning.__main__``. The regular path finder runs first:
if Lightning ever ships its own ``__main__``, that one is found and this finder is never asked. Lightning's files
are not touched. The import costs microseconds (nothing is imported until ``python -m lightning`` runs).
"""

import sys

TARGET = "lightning.__main__"
SOURCE = "from skinflow.entry import lightning_main\nlightning_main()\n"


class LightningMainFinder:
    """A meta-path finder and loader for ``lightning.__main__`` only."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, cls(), origin="skinflow (via _skinflow_lightning_hook)")

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)

    def get_code(self, fullname):  # runpy (``python -m``) asks for the code object
        return compile(SOURCE, "<skinflow: python -m lightning>", "exec")

    def is_package(self, fullname):
        return False


def install() -> None:
    if not any(isinstance(f, LightningMainFinder) or f is LightningMainFinder for f in sys.meta_path):
        sys.meta_path.append(LightningMainFinder)


install()
