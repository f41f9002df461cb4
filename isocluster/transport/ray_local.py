"""Ray on this machine only: a local instance or a multi-node test cluster on 127.0.0.1.

By default Ray binds and connects on the machine's primary interface address (and reports
usage statistics over the network). The tests, specs, benchmarks and examples of this
project start every Ray process through this module instead, so each one (GCS, raylets,
object stores, actor processes and the driver) listens and connects on 127.0.0.1 only,
and uses little memory on a small shared machine:

    from isocluster.transport import ray_local
    ray_local.start_local(paths=[my_checkout])       # ray.init() on loopback; True if it started it
    cluster = ray_local.start_cluster({'node_a': 1, 'node_b': 1}, paths=[my_checkout])
    ...                                              # a head + one node per custom resource
    ray_local.stop_cluster(cluster)

`ray_listeners()` lists the listening TCP sockets of this process and its descendants (the
Ray processes it started), for a test to check that none is on another address.

`prepare_environment()` must run before `ray` is first imported in this process: Ray reads
`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` once, at import. Every function here calls it.
"""

from __future__ import annotations

import os
import secrets
import sys
from typing import Any, Iterable, Mapping

from . import procfs

LOOPBACK = '127.0.0.1'
OBJECT_STORE_BYTES = 80 * 1024 * 1024  # Ray's minimum is 75 MiB
# Ray's node address is 127.0.0.1 when this is 0 (its "single machine" mode), and no usage
# report leaves the machine.
ENVIRONMENT = {'RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER': '0', 'RAY_USAGE_STATS_ENABLED': '0'}


def prepare_environment() -> None:
    os.environ.update(ENVIRONMENT)
    # Ray's token authentication reads ~/.ray/auth_token, which every Ray of this machine's user
    # shares (and a new one may replace): a token of our own, inherited by the Ray processes we
    # start and by their workers, keeps our clusters apart from the others.
    if not os.environ.get('RAY_AUTH_TOKEN'):
        os.environ.update(RAY_AUTH_MODE='token', RAY_AUTH_TOKEN=secrets.token_hex(32))
    constants = sys.modules.get('ray._private.ray_constants')
    if constants is not None and getattr(constants, 'ENABLE_RAY_CLUSTER', False):
        # Too late: this Ray would put its GCS on the machine's network address.
        raise RuntimeError(
            'ray was imported before isocluster.transport.ray_local.prepare_environment(): call it (or '
            'set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) before the first `import ray` to keep Ray on 127.0.0.1'
        )


def _runtime_env(paths: Iterable[str]) -> dict[str, Any]:
    # The actors import worker targets by name: the given folders, then the caller's own path.
    inherited = [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]
    return {'env_vars': {'PYTHONPATH': os.pathsep.join([*map(str, paths), *inherited]), **ENVIRONMENT}}


def init_kwargs(paths: Iterable[str] = (), **overrides: Any) -> dict[str, Any]:
    """`ray.init` options of a driver on loopback (a local instance unless `address=` is given);
    prepares the environment, so call it before `ray` is imported."""
    prepare_environment()
    kwargs: dict[str, Any] = {
        '_node_ip_address': LOOPBACK,
        'include_dashboard': False,
        'log_to_driver': False,
        'runtime_env': _runtime_env(paths),
    }
    if 'address' not in overrides:
        # 'local': a new instance, always. Without it ray.init() joins the cluster named by
        # RAY_ADDRESS or /tmp/ray/ray_current_cluster (which any Ray of this machine may write).
        kwargs.update(address='local', num_cpus=2, object_store_memory=OBJECT_STORE_BYTES)
    kwargs.update(overrides)
    return kwargs


def start_local(paths: Iterable[str] = (), **overrides: Any) -> bool:
    """Start a local Ray instance on loopback unless Ray is initialised already; True if this
    call started it (the caller then owns `ray.shutdown()`)."""
    prepare_environment()
    import ray

    if ray.is_initialized():
        return False
    ray.init(**init_kwargs(paths, **overrides))
    return True


def node_kwargs(**overrides: Any) -> dict[str, Any]:
    """Options of one `ray.cluster_utils.Cluster` node on loopback."""
    kwargs: dict[str, Any] = {
        'node_ip_address': LOOPBACK,
        'num_cpus': 1,
        'object_store_memory': OBJECT_STORE_BYTES,
        'include_dashboard': False,
    }
    kwargs.update(overrides)
    return kwargs


def start_cluster(nodes: Mapping[str, Mapping[str, float]], paths: Iterable[str] = (), *,
                  head_resources: Mapping[str, float] | None = None, cpus: float = 1) -> Any:
    """A Ray test cluster on this machine: a head (where the driver, i.e. the primary, runs)
    and one worker node per entry of `nodes` (name -> its custom resources), so a worker's
    placement is chosen, and observed, through resources. The driver is connected to it;
    `cluster.head_node`, and `cluster.worker_nodes` hold the `Node`s (`node_id`)."""
    prepare_environment()
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True,
                      head_node_args=node_kwargs(num_cpus=cpus, resources=dict(head_resources or {})))
    try:
        for resources in nodes.values():
            add_node(cluster, resources, cpus=cpus)
        ray.init(**init_kwargs(paths, address=cluster.address))
    except BaseException:
        cluster.shutdown()
        raise
    return cluster


def add_node(cluster: Any, resources: Mapping[str, float], *, cpus: float = 1) -> Any:
    """One more loopback node offering `resources`; returns its `Node`."""
    return cluster.add_node(**node_kwargs(num_cpus=cpus, resources=dict(resources)))


def stop_cluster(cluster: Any) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


# -- what listens ----------------------------------------------------------------------------


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as stat:
                fields = stat.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found



def _address(hex_address: str) -> str:
    if len(hex_address) == 8:  # IPv4, little-endian
        return '.'.join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))
    words = [hex_address[i:i + 8] for i in range(0, 32, 8)]
    raw = b''.join(bytes.fromhex(word)[::-1] for word in words)
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def _listening() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state in this network namespace."""
    found = {}
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == '0A':
                        host, port = fields[1].split(':')
                        found[fields[9]] = (_address(host), int(port, 16))
        except OSError:
            continue
    return found


def ray_listeners(root: int | None = None) -> list[tuple[int, str, str, int]]:
    """(pid, command, address, port) of every listening TCP socket of `root` (default: this
    process) and its descendants, which include every Ray process it started."""
    listening = _listening()
    result = []
    for pid in sorted(_descendants(os.getpid() if root is None else root)):
        for inode in procfs.socket_inodes(pid):
            if inode in listening:
                try:
                    with open(f'/proc/{pid}/cmdline', 'rb') as cmdline:
                        command = cmdline.read().replace(b'\0', b' ').decode(errors='replace').strip()
                except OSError:
                    command = '?'
                result.append((pid, command[:200], *listening[inode]))
    return result


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, 'ipv4_mapped', None)
    return (mapped or ip).is_loopback


def ray_for_tests() -> Any:
    """For a test module that needs Ray: `ray`, imported after `prepare_environment()`.
    Skips the module when ray is not installed, and under pytest-xdist (`make test`): the Ray
    suite runs in `make test-ray`, one Ray instance at a time on a small machine."""
    import pytest

    if os.environ.get('PYTEST_XDIST_WORKER'):
        pytest.skip('the Ray suite runs in `make test-ray` (one Ray instance at a time), not under xdist',
                    allow_module_level=True)
    prepare_environment()
    return pytest.importorskip('ray')
