"""A rolling reload's steps decided without a loop or a transport (R132-R135): RollingReload is
given plain callables, so each rule is a sequence of calls and the record of what it asked for."""

from __future__ import annotations

from isocluster.handle import WorkerHandle
from isocluster.reload import RollingReload


class _NoSender:
    def send(self, message, to=None):  # pragma: no cover - never sent to
        raise AssertionError('not sent')


def ready_worker(worker_id: int) -> WorkerHandle:
    handle = WorkerHandle(_NoSender(), worker_id)
    handle.life.move('online')
    handle.life.move('ready')
    return handle


class Host:
    """Records what the reload asks for; forks ready-to-be workers with ids from 100."""

    def __init__(self, *, fork_fails: bool = False) -> None:
        self.log: list[tuple] = []
        self.later_calls: list[tuple] = []
        self.next_id = 100
        self.fork_fails = fork_fails
        self.is_active = True

    def fork_one(self):
        if self.fork_fails:
            self.log.append(('fork', None))
            return None
        handle = WorkerHandle(_NoSender(), self.next_id)
        self.next_id += 1
        self.log.append(('fork', handle.id))
        return handle

    def retire(self, handle):
        handle.life.retired = True
        self.log.append(('retire', handle.id))

    def inherit(self, old, new):
        self.log.append(('inherit', old.id, new.id))

    def later(self, function, *args):
        self.later_calls.append((function, args))

    def complete(self, count, aborted):
        self.log.append(('reload_complete', count, aborted))

    def run_later(self):
        calls, self.later_calls = self.later_calls, []
        for function, args in calls:
            function(*args)

    def reload(self) -> RollingReload:
        return RollingReload(fork_one=self.fork_one, retire=self.retire, inherit=self.inherit,
                             active=lambda: self.is_active, later=self.later, reload_complete=self.complete)


def become_ready(handle: WorkerHandle) -> None:
    handle.life.move('online')
    handle.life.move('ready')


def exit_worker(handle: WorkerHandle) -> None:
    handle.life.move('disconnected')
    handle.life.move('dead')


def test_r132_each_new_worker_is_ready_before_its_old_one_is_retired():
    host = Host()
    reload = host.reload()
    old1, old2 = ready_worker(1), ready_worker(2)
    reload.start([old1, old2])
    assert host.log == [('fork', 100), ('inherit', 1, 100)]  # one step at a time
    new1 = reload.current.new
    become_ready(new1)
    reload.worker_ready(new1)
    assert host.log[-1] == ('retire', 1) and reload.leaving() is None
    exit_worker(old1)
    reload.worker_exited(old1)  # the step is done: the next one starts
    assert host.log[-2:] == [('fork', 101), ('inherit', 2, 101)]
    new2 = reload.current.new
    become_ready(new2)
    reload.worker_ready(new2)
    exit_worker(old2)
    reload.worker_exited(old2)
    host.run_later()
    assert host.log[-2:] == [('retire', 2), ('reload_complete', 2, False)]
    assert reload.current is None


def test_r133_an_old_worker_that_left_early_completes_its_step_when_the_new_one_is_ready():
    host = Host()
    reload = host.reload()
    old = ready_worker(1)
    reload.start([old])
    assert reload.leaving() is old  # its exit is not replaced: the step's new worker takes its place
    exit_worker(old)
    reload.worker_exited(old)
    new = reload.current.new
    become_ready(new)
    reload.worker_ready(new)
    host.run_later()  # next_step: nothing left
    host.run_later()
    assert ('retire', 1) not in host.log and host.log[-1] == ('reload_complete', 1, False)


def test_r133_a_prevented_fork_abandons_the_reload():
    host = Host(fork_fails=True)
    reload = host.reload()
    reload.start([ready_worker(1), ready_worker(2)])
    host.run_later()
    assert host.log == [('fork', None), ('reload_complete', 0, True)] and reload.current is None


def test_r135_stop_worker_replace_is_one_unannounced_step_that_a_reload_joins():
    host = Host()
    reload = host.reload()
    old1, old2 = ready_worker(1), ready_worker(2)
    reload.replace_one(old1)
    assert not reload.announced and host.log == [('fork', 100), ('inherit', 1, 100)]
    reload.start([old1, old2])  # the reload joins the running step: old1 is not replaced twice
    assert reload.announced and reload.current.olds == [old2]


def test_leaving_or_retired_workers_are_skipped():
    host = Host()
    reload = host.reload()
    gone, retired, staying = ready_worker(1), ready_worker(2), ready_worker(3)
    gone.life.move('disconnected')
    retired.life.retired = True
    reload.start([gone, retired, staying])
    assert host.log == [('fork', 100), ('inherit', 3, 100)]


def test_nothing_starts_while_the_primary_is_not_active():
    host = Host()
    host.is_active = False
    reload = host.reload()
    reload.start([ready_worker(1)])
    assert host.log == [] and reload.announced
