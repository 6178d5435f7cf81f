"""Imported first by the job fork server that a worker starts from its main thread (isolation.warm_up),
before worker.preload: the server is tied to the worker. It otherwise notices a worker that is gone only
from its main loop, after preload's imports, so a worker stopped (or killed) while they ran left it
importing on for seconds, minutes on a loaded host. The kernel signals it instead the moment the thread
that started it ends (PR_SET_PDEATHSIG follows the thread, hence only a server the main thread starts);
a job's process, forked from it, already exits with it (isolation._exit_with_parent)."""

import signal

from worker.rank_guard import die_with_parent

die_with_parent(signal.SIGTERM)
