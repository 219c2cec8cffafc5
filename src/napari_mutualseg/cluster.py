"""The dask side of a batch run: a cluster to run on, the model on every worker, one task
per image.

:func:`dask_client` starts a LocalCluster for the run or connects to an existing scheduler
(checked first by :func:`check_scheduler`: a wrong address is one clear error within seconds);
:func:`submit_jobs` sends the model file to each worker once, as a worker plugin that loads it
there (checked as :meth:`ModelPair.load` checks it), and then one task per image, which
carries only file names. Workers must see the input and output folders under the same paths.

Runs may share a cluster: each run's plugin and tasks have names of their own, so that one
run never takes another's model or results, and the plugin is removed when the run ends.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from .image_task import process_image
from .jobs import BatchOptions, ImageJob, ImageResult

if TYPE_CHECKING:
    from distributed import Client, Future

    from .models import ModelPair

__all__ = ["CONNECT_SECONDS", "check_scheduler", "dask_client", "default_workers", "submit_jobs"]

_PLUGIN = "napari-mutualseg-model"

#: Seconds an existing scheduler has to answer.
CONNECT_SECONDS = 30

#: Seconds a refused connection to a scheduler is tried again.
REFUSED_SECONDS = 10

#: Seconds a cluster has to get its first worker.
WORKER_SECONDS = 120


class _ModelPlugin(WorkerPlugin):
    """Loads the model once on every worker (also on workers that join later).

    Carries the model file's bytes, so that workers need not see the file; on a worker with
    GPUs, each worker of a host takes its own GPU, and CPU workers share the host's cores.
    """

    def __init__(
        self, name: str, model: bytes, device: str, ranks: dict[str, tuple[int, int]]
    ) -> None:
        self.name = name  # one per run: runs that share a cluster keep their own model
        self.model = model
        self.device = device
        self.ranks = ranks  # worker address -> (index on its host, task threads on its host)
        self.pair: ModelPair | None = None
        self.threads: int | None = None  # torch CPU threads per task

    def setup(self, worker: Any) -> None:
        import torch

        from .models import ModelPair

        rank, host_threads = self.ranks.get(worker.address, (0, worker.state.nthreads))
        device = self.device
        self.threads = None
        if device == "auto" and torch.cuda.is_available():
            device = f"cuda:{rank % torch.cuda.device_count()}"
        elif device in ("auto", "cpu"):
            self.threads = max(1, (os.cpu_count() or 1) // max(1, host_threads))
        with tempfile.TemporaryDirectory(dir=worker.local_directory) as folder:
            path = Path(folder) / "model.pt"
            path.write_bytes(self.model)
            self.pair = ModelPair.load(path, device=device)

    def teardown(self, worker: Any) -> None:
        self.pair = None


def _on_worker(
    job: ImageJob, options: BatchOptions, overwrite: bool, fingerprint: str, plugin_name: str
) -> ImageResult:
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    if plugin.threads is not None:
        import torch

        # Per calling thread (OpenMP), and dask starts workers with OMP_NUM_THREADS=1: set
        # in the thread that runs the task, the cores of the host shared among its workers.
        torch.set_num_threads(plugin.threads)
    # A lazy image (OME-Zarr, a large TIFF) is a dask array. Computed with the worker's own
    # client, each read would become tasks of the cluster, and the task waiting for them
    # would leave its thread, letting the worker start its next image: every image of the
    # run in progress at once, with the memory of all of them and none finished before the
    # last. Read in this thread, one image at a time per worker thread.
    with dask.config.set(scheduler="synchronous"):
        result = process_image(
            plugin.pair, job, options, overwrite=overwrite, fingerprint=fingerprint
        )
    result.worker = worker.address
    return result


def _ranks(client: Any) -> dict[str, tuple[int, int]]:
    """Each worker's index among the workers of its host, and the task threads of that host."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    by_host: dict[str, list[str]] = {}
    for address, info in sorted(workers.items()):
        by_host.setdefault(info["host"], []).append(address)
    ranks = {}
    for addresses in by_host.values():
        threads = sum(workers[a]["nthreads"] for a in addresses)
        ranks.update({a: (i, threads) for i, a in enumerate(addresses)})
    return ranks


def default_workers() -> int:
    """Local workers for a run: one per GPU; on CPUs one per two cores (at least one)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 2)


def _ignore_sigint() -> None:
    """Run on each local worker: Ctrl-C in a terminal reaches the whole process group, and
    this process stops the workers itself, so they need not print its KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _not_a_scheduler(address: str, what: str) -> ConnectionError:
    return ConnectionError(
        f"{address} {what}: give the address of a dask scheduler (`dask scheduler` prints it, "
        "port 8786 by default; not the dashboard's 8787)."
    )


def _reach(host: str, port: int, timeout: float) -> None:
    """Open and close a connection; a refused one is tried again for :data:`REFUSED_SECONDS`
    (a scheduler started at the same moment may not listen yet)."""
    deadline = time.monotonic() + REFUSED_SECONDS
    while True:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            return
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def check_scheduler(address: str, timeout: float = CONNECT_SECONDS) -> None:
    """Refuse an address where no dask scheduler answers, within ``timeout`` seconds.

    A port where nothing listens is refused after :data:`REFUSED_SECONDS`, a host that does
    not answer after ``timeout``; a service that is not a dask scheduler (its dashboard, a web
    server, a worker) within ``timeout`` too, where a dask client alone may wait for ever or
    take the service's answer for the length of a message of exabytes.

    Parameters
    ----------
    address : str
        ``tcp://host:8786`` (or another address dask takes).
    timeout : float
        Seconds to wait for the scheduler's answer.

    Raises
    ------
    ValueError
        When ``address`` is not an address.
    ConnectionError, TimeoutError
        Saying what answered (or did not) and what to give instead.
    """
    from distributed.comm import parse_address, parse_host_port
    from distributed.core import rpc
    from distributed.security import Security

    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except ValueError as err:
        raise ValueError(
            f"{address!r} is not a dask scheduler address ({err}); give it as "
            "tcp://host:port, e.g. tcp://10.0.0.5:8786."
        ) from None
    if scheme in ("tcp", "tls"):
        try:
            _reach(host, port, timeout)
        except ConnectionRefusedError:
            raise ConnectionError(
                f"Nothing listens at {address} (connection refused for {REFUSED_SECONDS} s): "
                "start the scheduler there (dask scheduler), or check the host and port."
            ) from None
        except TimeoutError:
            raise TimeoutError(
                f"No answer from {host} within {timeout:g} s for {address}: check the address, "
                "and that the network or a firewall lets this machine reach it."
            ) from None
        except OSError as err:  # an unknown host, no route
            raise ConnectionError(
                f"Cannot reach {address} ({err.strerror or err}): check the address."
            ) from None

    async def identity() -> dict:
        args = Security().get_connection_args("client")  # TLS settings from dask's config
        async with rpc(address, connection_args=args) as scheduler:
            return await asyncio.wait_for(scheduler.identity(), timeout)

    # in a thread of its own: the caller may be running an event loop (Jupyter)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            answer = pool.submit(asyncio.run, identity()).result()
        except TimeoutError:
            raise _not_a_scheduler(address, f"gave no dask answer within {timeout:g} s") from None
        except Exception:  # a service that speaks another protocol
            raise _not_a_scheduler(address, "does not answer as a dask scheduler") from None
    kind = answer.get("type") if isinstance(answer, dict) else None
    if kind != "Scheduler":
        raise _not_a_scheduler(address, f"is a dask {kind or 'service'}, not the scheduler")


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[tuple[Client, str]]:
    """A dask client for a run, closed (with the cluster it started) when the block ends.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``), checked with
        :func:`check_scheduler`. Without it a LocalCluster is started: ``workers`` processes
        of one thread each, which leave Ctrl-C to this process.
    workers : int
        Worker processes of the LocalCluster.

    Yields
    ------
    tuple of (distributed.Client, str)
        The client, and where the tasks run, in words (``"on 4 local dask workers"``).
    """
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    cluster = None
    if scheduler is not None:
        check_scheduler(scheduler)
        client = Client(scheduler, timeout=f"{CONNECT_SECONDS}s")
        where = f"on the dask cluster at {scheduler}"
    else:
        try:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                # its HTTP server on a free port: 8787, its default, is often taken (another
                # cluster, a notebook's), which it would say in a warning
                scheduler_kwargs={"dashboard_address": ":0"},
                silence_logs=logging.ERROR,
            )
        except RuntimeError as err:
            # each worker process starts by importing the main script again, which without
            # the guard starts the run (and a cluster) again in every worker
            raise RuntimeError(
                f"The local dask workers did not start ({str(err).rstrip('.')}). In a Python "
                'script, run the batch under `if __name__ == "__main__":`, or pass workers=0 '
                "to run it in this process."
            ) from None
        client = Client(cluster)
        client.run(_ignore_sigint)
        where = f"on {workers} local dask worker{'s' if workers > 1 else ''}"
    try:
        yield client, where
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def submit_jobs(
    client: Client,
    jobs: Sequence[ImageJob],
    options: BatchOptions,
    *,
    overwrite: bool,
    model: bytes,
    device: str,
    fingerprint: str,
) -> Iterator[list[Future]]:
    """Load the model on every worker, then start one task per image; when the block ends,
    cancel what is left and remove the model from the workers.

    Parameters
    ----------
    client : distributed.Client
        The cluster to run on; it must get a worker within :data:`WORKER_SECONDS`.
    jobs : sequence of ImageJob
        The images.
    options : BatchOptions
        How to read and segment them.
    overwrite : bool
        Replace existing outputs.
    model : bytes
        The model file's content.
    device : str
        ``"auto"`` (each worker of a host its own GPU, else CPU workers sharing the cores),
        or e.g. ``"cpu"``.
    fingerprint : str
        The model's :meth:`~napari_mutualseg.models.ModelPair.fingerprint`, recorded with
        each image's results.

    Yields
    ------
    list of distributed.Future
        One per job, in order; each gives the image's :class:`ImageResult`.

    Raises
    ------
    TimeoutError
        When no worker joins the cluster in time.
    """
    try:
        client.wait_for_workers(1, timeout=WORKER_SECONDS)
    except TimeoutError:
        address = client.scheduler.address
        raise TimeoutError(
            f"No dask worker joined the scheduler at {address} within {WORKER_SECONDS} s: "
            f"start workers (dask worker {address}) or scale the cluster, then run again."
        ) from None
    run = uuid.uuid4().hex[:12]  # tasks and plugin of this run, whatever else the cluster runs
    name = f"{_PLUGIN}-{run}"
    client.register_plugin(_ModelPlugin(name, model, device, _ranks(client)))
    futures: list[Future] = []
    try:
        futures = client.map(
            _on_worker,
            jobs,
            options=options,
            overwrite=overwrite,
            fingerprint=fingerprint,
            plugin_name=name,
            pure=False,
            key=[f"segment-{j.name}-{run}-{i}" for i, j in enumerate(jobs)],
        )
        yield futures
    finally:
        client.cancel(futures)
        with contextlib.suppress(Exception):  # the cluster may be gone: nothing to remove
            client.unregister_worker_plugin(name)
