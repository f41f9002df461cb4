"""A worker_script's side of the process transport: the script (exec'd through the bootstrap,
which wrote ONLINE) finds its link in the environment the first time it asks."""

from __future__ import annotations

import asyncio
import os
import socket
import warnings

from ... import protocol
from .. import base, watchdog
from . import bootstrap
from . import registry
from .parent_death import install_parent_death_handler
from .worker_end import ChildLink


def _new_script_loop() -> asyncio.AbstractEventLoop:
    if os.environ.get(base.LOOP_ENV) == 'uvloop':
        try:
            import uvloop
        except ImportError:
            warnings.warn(f'{base.LOOP_ENV}=uvloop but uvloop is not installed here: using asyncio',
                          RuntimeWarning, stacklevel=3)
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def link_from_environment() -> base.PrimaryLink:
    """Script mode: the link the primary passed through the environment (built once)."""
    if registry.own_link is None:
        worker_id = int(os.environ[base.WORKER_ID_ENV])
        fd = int(os.environ[base.WORKER_FD_ENV])
        codec = protocol.get_codec(os.environ.get(base.WORKER_CODEC_ENV, 'json'))
        max_frame_size = int(os.environ.get(base.MAX_FRAME_ENV, protocol.DEFAULT_MAX_FRAME_SIZE))
        online_sent = os.environ.get(bootstrap.ONLINE_SENT_ENV) == '1'
        # Grandchildren (subprocesses of the script) are not workers.
        watchdog_fd = os.environ.get(watchdog.WATCHDOG_FD_ENV)
        for name in (base.WORKER_ID_ENV, base.WORKER_FD_ENV, base.WORKER_CODEC_ENV, base.MAX_FRAME_ENV,
                     bootstrap.ONLINE_SENT_ENV, watchdog.WATCHDOG_FD_ENV):
            os.environ.pop(name, None)
        if watchdog_fd is not None:
            os.set_inheritable(int(watchdog_fd), False)
            watchdog.become_worker(int(watchdog_fd))
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        loop = _new_script_loop()
        asyncio.set_event_loop(loop)
        # PR_SET_PDEATHSIG was armed before exec and survives it; its handler does not.
        install_parent_death_handler()
        link = registry.own_link = ChildLink(worker_id, codec, sock, loop, exit_on_finish=False,
                                             max_frame_size=max_frame_size)
        base._current_link.set(link)
        link._start(write_online=not online_sent)
    else:
        base._current_link.set(registry.own_link)
    return registry.own_link
