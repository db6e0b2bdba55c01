"""The task API: an HTTP way in for one image at a time, running the same pipeline as the command line.

``python -m am.api`` serves it; in code::

    store = TaskStore(Path("api-data"))
    runner = TaskRunner(store, PipelineCommand(settings), concurrency=1, environ=os.environ)
    app = create_app(store, runner, max_bytes=DEFAULT_MAX_BYTES)    # an ASGI app for uvicorn
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.api.app import create_app
    from am.api.runner import PipelineCommand, TaskRunner
    from am.api.tasks import Task, TaskStore
    from am.api.uploads import DEFAULT_MAX_BYTES

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "create_app": "am.api.app",
    "PipelineCommand": "am.api.runner",
    "TaskRunner": "am.api.runner",
    "Task": "am.api.tasks",
    "TaskStore": "am.api.tasks",
    "DEFAULT_MAX_BYTES": "am.api.uploads",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["DEFAULT_MAX_BYTES", "PipelineCommand", "Task", "TaskRunner", "TaskStore", "create_app"]
