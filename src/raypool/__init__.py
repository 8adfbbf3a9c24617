"""raypool: run ``multiprocessing``/``concurrent.futures``-style maps on Ray.

``RayPool`` (also ``Pool`` and ``ProcessPoolExecutor``) has the interfaces of
``multiprocessing.Pool`` and ``concurrent.futures.Executor``: change the import line and
existing code runs on Ray. ``RayMap`` is the engine under it: a streaming, batched,
back-pressured map over Ray tasks with per-item timeouts, exceptions as values, checkpoints
and asyncio variants.
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
from ._errors import EnvironmentSetupError as EnvironmentSetupError
from ._errors import ForkedProcessError as ForkedProcessError
from ._errors import NotShareableError as NotShareableError
from ._errors import PoolClosedError as PoolClosedError
from ._errors import RayPoolError as RayPoolError
from ._errors import RemoteError as RemoteError
from ._errors import RemoteTraceback as RemoteTraceback
from ._errors import ResultPicklingError as ResultPicklingError
from ._errors import ResultTooLargeError as ResultTooLargeError
from ._errors import ResultUnpicklingError as ResultUnpicklingError
from ._errors import SerializationError as SerializationError
from ._errors import TaskCancelledError as TaskCancelledError
from ._errors import TaskTimeoutError as TaskTimeoutError
from ._errors import WorkerCrashedError as WorkerCrashedError
from ._errors import WorkerUnpicklingError as WorkerUnpicklingError
from ._pool import AsyncResult as AsyncResult
from ._pool import IMapIterator as IMapIterator
from ._pool import MapResult as MapResult
from ._pool import Pool as Pool
from ._pool import PoolState as PoolState
from ._pool import ProcessPoolExecutor as ProcessPoolExecutor
from ._pool import RayPool as RayPool
from ._version import __version__ as __version__

__all__ = [
    "AsyncResult",
    "BatchLengthError",
    "BrokenPoolError",
    "CheckpointError",
    "ClusterUnreachableError",
    "EnvironmentSetupError",
    "ForkedProcessError",
    "IMapIterator",
    "MapIterator",
    "MapOptions",
    "MapResult",
    "MapStatistics",
    "NotShareableError",
    "Pool",
    "PoolClosedError",
    "PoolState",
    "ProcessPoolExecutor",
    "RayMap",
    "RayMapIterator",
    "RayPool",
    "RayPoolError",
    "RemoteError",
    "RemoteTraceback",
    "ResultPicklingError",
    "ResultTooLargeError",
    "ResultUnpicklingError",
    "SerializationError",
    "TaskCancelledError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerUnpicklingError",
    "__version__",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("raypool."):
        _obj.__module__ = "raypool"
del _name, _obj
