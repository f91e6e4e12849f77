"""alad: the Alignment Adapter for compressed language models (README.md).

    python -c "import alad, transformers; print(transformers.AutoConfig.from_pretrained('hf-ner'))"

`import alad` makes transformers' Auto classes know an exported aligned model (model_type
"alad", alad/hf.py) without `trust_remote_code`, and stays light: it imports only the standard
library. The registration runs when transformers loads its auto modules (at once if it already
has): AutoConfig when `transformers.models.auto.configuration_auto` has loaded,
AutoModelForTokenClassification / AutoModelForQuestionAnswering when `...modeling_auto` has.
So `import alad` alone never loads torch (the ONNX predictor, alad/onnx_predict.py, relies on it).
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

# transformers module -> what to register once it has loaded
_AUTO_MODULES = {
    "transformers.models.auto.configuration_auto": "config",
    "transformers.models.auto.modeling_auto": "models",
}


def _register(what: str) -> None:
    # A failure here must not break transformers for the rest of alad (training loads the same
    # auto modules): it is a warning, and only exported models fail to load.
    try:
        if what == "config":
            from alad.hf_config import register_config

            register_config()
        else:
            from alad.hf import register_models

            register_models()
    except Exception as exc:
        import logging

        logging.getLogger("alad").warning(
            "alad's transformers classes are not registered (%s: %s); exported models "
            "(model_type 'alad') will not load through transformers' Auto classes",
            type(exc).__name__,
            exc,
        )


class _RegisteringLoader(importlib.abc.Loader):
    """The module's own loader, which registers alad's classes after executing it."""

    def __init__(self, loader: Any, what: str):
        self.loader, self.what = loader, what

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        _register(self.what)

    def __getattr__(self, name: str) -> Any:  # get_source, get_resource_reader, ...
        return getattr(self.loader, name)


class _AutoModulesFinder(importlib.abc.MetaPathFinder):
    """Finds transformers' auto modules with the other finders and wraps their loaders."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        what = _AUTO_MODULES.get(name)
        if what is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader, what)
                return spec
        return None


def _install() -> None:
    if not any(isinstance(f, _AutoModulesFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoModulesFinder())
    for name, what in _AUTO_MODULES.items():
        if name in sys.modules:  # transformers loaded it before alad
            _register(what)


_install()
