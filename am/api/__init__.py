"""The task API: an HTTP way in for one image at a time, running the same pipeline as the command line.

``python -m am.api`` serves it; in code::

    store = TaskStore(Path("api-data"))
    runner = TaskRunner(store, PipelineCommand(settings), concurrency=1, environ=os.environ)
    app = create_app(store, runner, max_bytes=DEFAULT_MAX_BYTES)    # an ASGI app for uvicorn
"""

from am.api.app import create_app
from am.api.runner import PipelineCommand, TaskRunner
from am.api.tasks import Task, TaskStore
from am.api.uploads import DEFAULT_MAX_BYTES

__all__ = ["DEFAULT_MAX_BYTES", "PipelineCommand", "Task", "TaskRunner", "TaskStore", "create_app"]
