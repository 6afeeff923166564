"""biodali: DALI readers and operators for biological data.

Importing this package loads the biodali DALI plugin; its operators then live under
``nvidia.dali.fn.biodali.*`` (e.g. ``fn.biodali.readers.anndata``).
"""
from __future__ import annotations

import json
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["library_path", "load_plugin"]

_HERE = Path(__file__).resolve().parent
_LIB = _HERE / "libbiodali.so"
_REBUILD_HINT = "rebuild the plugin: `make build` (or `python setup.py build_plugin` in the source tree)"
_loaded = False


def library_path() -> Path:
    return _LIB


def load_plugin() -> None:
    """Loads libbiodali.so into DALI once; raises ImportError with a rebuild hint on mismatch."""
    global _loaded
    if _loaded:
        return
    import nvidia.dali as dali
    from nvidia.dali import plugin_manager

    if not _LIB.exists():
        raise ImportError(f"biodali: {_LIB} is missing; {_REBUILD_HINT}")
    info_file = _HERE / "_build_info.json"
    built_for = json.loads(info_file.read_text()).get("dali_version") if info_file.exists() else None
    if built_for != dali.__version__:
        raise ImportError(
            f"biodali: the plugin {_LIB} was built for DALI {built_for or 'unknown'}, but DALI "
            f"{dali.__version__} is installed; a DALI plugin only loads in the DALI release it was "
            f"built against: {_REBUILD_HINT}")
    try:
        plugin_manager.load_library(str(_LIB))
    except RuntimeError as exc:
        raise ImportError(f"biodali: cannot load {_LIB} ({exc}); {_REBUILD_HINT}") from exc
    _loaded = True


load_plugin()
