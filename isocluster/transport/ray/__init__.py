"""The Ray transport: each worker is a Ray actor, so the same cluster code runs across hosts.

    from isocluster import ClusterPrimary
    from isocluster.transport.ray import RayTransport

    primary = ClusterPrimary(worker_target=my_app.worker_main,      # module-level, importable
                             transport=RayTransport())              # local Ray (ray.init())
    # or RayTransport(address='ray://head:10001') / RayTransport('auto') for an existing cluster,
    # and RayTransport(worker_options={'num_cpus': 1, 'resources': {'gpu_box': 1}}) for placement.

`ray` is imported only when a `RayTransport` is built (`pip install 'isocluster[ray]'`);
`import isocluster` never imports it. Ray is initialised on the first `start_worker` unless
the application already called `ray.init()`; a transport that initialised Ray shuts it down
in `close()`.

Primary side
    The primary runs on an asyncio loop of the driver (`loop`: the running loop when the
    transport is first used inside one, else a new loop that `primary.run()` drives). Each
    worker is one async actor (`_WorkerActor`, `max_restarts=0`). Frames are encoded with
    `protocol.encode_frame` (the same framing, codec and maximum frame size as the process
    transport; user messages arrive as bytes already encoded by the core) and travel in
    batches:
      primary -> worker: `actor.deliver(blob, eof)`, at most one call in flight per link;
          the frames written meanwhile form the next batch. `deliver` returns once the
          worker's loop has dispatched the batch, so a slow worker pushes back
          (`pending_writes()` / `drain()`).
      worker -> primary: a long poll, `actor.pull()`, one call in flight per link, returns
          every frame written since the last one (plus EOF and the exit status). The
          frames count as queued on the worker's side until its loop hears they were
          pulled, so a slow primary pushes back too (and `max_queued_bytes` holds there).
    One call in flight per direction is what keeps per-link FIFO order (Ray does not order
    the tasks of an async actor). Results come back on Ray's threads and are handed to
    the loop with `call_soon_threadsafe`, so the listener is only ever called from the loop.

Worker side
    The actor hosts the worker runtime: a thread of its own with a new event loop (set as
    current, not running), the `_RayPrimaryLink` bound in `base._current_link` for that
    thread's context (and for every callback the transport schedules on it), ONLINE written
    first, then `worker_target()` (awaited when it is a coroutine function), then the loop
    runs until the worker ends -- as in the process transport's fork mode. Ray's own actor
    loop (which serves `deliver`/`pull`) stays responsive even when the worker's loop is
    blocked, so the kill timer and `kill()` always work.

How a worker ends, and what the primary sees (`link_closed`, then `link_exit(code, signal)`)
    | cause                                                        | code | signal          |
    | `PrimaryLink.finish()` (ClusterWorker destroyed), R102 end   | 0    | None            |
    | the kill timer fires (even with a blocked worker loop)       | 0    | None            |
    | `SystemExit(n)` escaping the worker's code                   | n    | None            |
    | an exception escaping into the worker's loop (traceback on   | 1    | None            |
    |   the actor's stderr, which Ray forwards to the driver)      |      |                 |
    | the actor's `__init__` failed (target not importable, ...)   | 1    | None            |
    | `link.kill(sig)` / `handle.kill(sig)` (any signal)           | None | sig             |
    | anything else Ray reports as actor death: `ray.kill` by     | None | SIGKILL         |
    |   other code, the actor process exiting or killed, node loss |      |                 |
    Once the runtime has reported an exit status the primary `ray.kill`s the actor and reports
    `link_exit` only when Ray confirms that it is dead (the process transport's "reaped").

Deviations from the seam contract and from the process transport (SPEC §6), all Ray's
    - `kill(signal)` is `ray.kill` whatever the signal: the worker cannot catch or ignore
      SIGTERM, and there is no graceful stage (the core's shutdown_timeout still sends
      DISCONNECT first). The exit reports the requested signal.
    - Ray does not report an actor process's exit code or signal: deaths the runtime did
      not see coming (`os._exit(n)` in the worker, OOM, node loss) are reported as SIGKILL.
    - A fatal exception or `SystemExit` ends the worker at once from the primary's point of
      view (exit reported, the worker's writes refused, no task cleanup) and the actor is
      killed right after; frames the worker wrote before it are still delivered (R116
      allows either).
    - R118: when the driver (the primary) dies, Ray kills its actors outright (fate
      sharing of non-detached actors), so the worker's code sees no `primary_disconnect`.
    - No shared listening sockets: `bind()` and `send_socket()` raise `NotSupportedError`,
      and so does `await worker.listen(...)` in a worker (its LISTEN frame never leaves the
      worker). Use `ProcessTransport` for servers that share a port.
    - No worker_script (script mode) and no `worker_stdio` file objects or fds: a Ray worker
      may live on another host. `worker_silent=True` and the words 'devnull' / 'pipe'
      discard the actor process's stdout/stderr; 'inherit' (default) leaves them to Ray,
      which forwards them to the driver (`ray.init(log_to_driver=...)`).
    - `ClusterWorker.worker_id` is known in the worker's loop thread (and the tasks and
      callbacks started from it), not in other threads the worker's code starts.
    - `worker_target` (and a non-built-in codec) must be picklable and importable on the
      cluster's nodes (a module-level function of an installed module, or ship it with
      `ray.init(runtime_env=...)` / `worker_options={'runtime_env': ...}`).

Modules
    | module | what it decides |
    | `transport` | `RayTransport`: connecting to Ray, starting a worker's actor, its options |
    | `link` | the primary's end: batches to the actor, the long poll back, how an actor's death reads |
    | `actor` | the worker's actor: the shared worker runtime on a thread, the outbox the primary pulls |
"""

from __future__ import annotations

from .link import RayWorkerLink
from .transport import RayTransport

__all__ = ['RayTransport', 'RayWorkerLink']
