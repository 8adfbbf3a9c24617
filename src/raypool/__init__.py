"""raypool: run ``multiprocessing``/``concurrent.futures``-style maps on Ray.

``RayMap`` is the engine: a streaming, batched, back-pressured map over Ray tasks with
per-item timeouts, exceptions as values, checkpoints and asyncio variants.
"""

from ._config import MapOptions as MapOptions
from ._engine import MapIterator as MapIterator
from ._engine import MapStatistics as MapStatistics
from ._engine import RayMap as RayMap
from ._engine import RayMapIterator as RayMapIterator
from ._errors import BatchLengthError as BatchLengthError
from ._errors import BrokenPoolError as BrokenPoolError
from ._errors import CheckpointError as CheckpointError
from ._errors import ClusterUnreachableError as ClusterUnreachableError
from ._errors import RayPoolError as RayPoolError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteTraceback as RemoteTraceback
from ._errors import SerializationError as SerializationError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._version import __version__ as __version__

__all__ = [
    "BatchLengthError",
    "BrokenPoolError",
    "CheckpointError",
    "ClusterUnreachableError",
    "MapIterator",
    "MapOptions",
    "MapStatistics",
    "RayMap",
    "RayMapIterator",
    "RayPoolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("raypool."):
        _obj.__module__ = "raypool"
del _name, _obj
