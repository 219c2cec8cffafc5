"""The dask side of a batch run: a cluster to run on, the model on every worker, one task
per image.

:func:`dask_client` starts a LocalCluster for the run or connects to an existing scheduler
(checked first by :func:`check_scheduler`: a wrong address is one clear error within seconds);
:func:`submit_jobs` sends the model file to each worker once, as a worker plugin that loads it
there (checked as :meth:`ModelPair.load` checks it), and then one task per image, which
carries only file names. Workers must see the input and output folders under the same paths.

Runs may share a cluster: each run's plugin and tasks have names of their own, so that one
run never takes another's model or results, and the plugin is removed when the run ends.
Before any task, :func:`check_versions` asks every worker for its versions of this package,
torch and numpy: a worker with others would fail every image with an error of its own code.
A worker that joins during the run is checked as it joins, by the plugin: when its versions
differ or the model does not load there, it hands each image it is given back at once
(:class:`WorkerUnfitError`), and the run sends the image again to the other workers, never to
it (:meth:`Submission.send`); the worker itself is left running for other runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import re
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from .image_task import error_reason, process_image
from .jobs import BatchOptions, ImageJob, ImageResult

if TYPE_CHECKING:
    from distributed import Client, Future

    from .models import ModelPair

__all__ = [
    "CONNECT_SECONDS",
    "Submission",
    "WorkerLoadError",
    "WorkerUnfitError",
    "WorkerVersionError",
    "check_paths",
    "check_scheduler",
    "check_versions",
    "dask_client",
    "default_workers",
    "submit_jobs",
    "version_problem",
    "wait_for_a_worker",
]

_PLUGIN = "napari-mutualseg-model"


def _plugin_name(run: str) -> str:
    """The name of a run's model on the workers: runs may share a cluster."""
    return f"{_PLUGIN}-{run}"


#: Seconds an existing scheduler has to answer.
CONNECT_SECONDS = 30

#: Seconds a refused connection to a scheduler is tried again.
REFUSED_SECONDS = 10

#: Seconds a cluster has to get its first worker.
WORKER_SECONDS = 120


#: Packages whose versions must agree between this process and the workers: this one
#: exactly (its tasks and plugin are its own code on each side), torch and numpy in their
#: major.minor release (a CUDA and a CPU build of one release agree).
_MATCHED = ("napari-mutualseg", "torch", "numpy")

#: Per worker process: the GPU it holds (its id) and the open lock file that says so to the
#: other processes of its host. Released by the system when the process ends.
_GPU_HELD: dict[str, int] = {}


class WorkerVersionError(ValueError):
    """Workers run other versions of napari-mutualseg, torch or numpy than this process."""


class WorkerLoadError(OSError):
    """A dask worker could not load the model (a full disk, a GPU that fails, a damaged
    copy); an OSError, as what is wrong is the worker's machine."""


def _gpu_ids(torch: Any) -> list[str] | None:
    """A host-wide id of each visible GPU (its UUID), whatever CUDA_VISIBLE_DEVICES orders."""
    try:
        ids = [
            str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())
        ]
    except (AttributeError, RuntimeError):  # a torch without UUIDs, a GPU that fails
        return None
    return ids if all(ids) else None


def _claim_gpu(ids: list[str], folder: str) -> int | None:
    """The index (among ``ids``, in this process's order) of a GPU no other process of this
    host claimed, claimed now; the one this process holds already; None when all are taken.

    The claim is an exclusive ``flock`` on ``<folder>/napari-mutualseg-gpu-<id>.lock``, held
    for the life of the process: a worker that joins a cluster later, or replaces one that
    died, takes a free GPU, where an index given at the start would send it to GPU 0. Trying
    the GPUs in the process's own order lets each worker of dask-cuda (which puts each
    worker's GPU first in its CUDA_VISIBLE_DEVICES) take its own.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the caller falls back to the worker's index
        return None
    for index, gpu in enumerate(ids):
        if gpu in _GPU_HELD:
            return index
    for index, gpu in enumerate(ids):
        path = os.path.join(
            folder, f"napari-mutualseg-gpu-{re.sub(r'[^A-Za-z0-9-]', '_', gpu)}.lock"
        )
        try:
            # without O_CREAT first: a lock file another user made in /tmp may be opened
            # for reading only (fs.protected_regular refuses O_CREAT on it)
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError:
                continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # another process of this host holds that GPU
            os.close(fd)
            continue
        _GPU_HELD[gpu] = fd
        return index
    return None


def _pick_gpu(torch: Any, rank: int | None) -> int:
    """This worker's GPU: a free one of its host (:func:`_claim_gpu`), else its index among
    the host's workers as it joined, else one by its process id (more workers than GPUs)."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    ids = _gpu_ids(torch)
    index = None if ids is None else _claim_gpu(ids, tempfile.gettempdir())
    if index is not None:
        return index
    return (os.getpid() if rank is None else rank) % count


class WorkerUnfitError(Exception):
    """Raised by an image's task on a worker that joined the run and cannot segment its images
    (the model does not load there, other versions): the image is for another worker.

    Attributes
    ----------
    worker : str
        The worker's address.
    problem : str
        What is wrong with it and what to do, in words.
    """

    def __init__(self, worker: str, problem: str) -> None:
        super().__init__(worker, problem)
        self.worker = worker
        self.problem = problem

    def __str__(self) -> str:
        return self.problem


class _ModelPlugin(WorkerPlugin):
    """Loads the model once on every worker (also on workers that join later).

    Carries the model file's bytes, so that workers need not see the file; on a host with
    GPUs, each worker takes a GPU no other worker of the host holds (:func:`_claim_gpu`, also
    when it joins later), and CPU workers share the host's cores.

    A worker that joins later is checked here, as :func:`check_versions` checked the others
    at the start: when its versions differ or the model does not load on it, ``problem``
    says so, and it hands back each image it is given (:class:`WorkerUnfitError`).
    """

    def __init__(
        self,
        name: str,
        model: bytes,
        device: str,
        shares: dict[str, tuple[int | None, int]],
        versions: dict[str, str | None],
    ) -> None:
        self.name = name  # one per run: runs that share a cluster keep their own model
        self.model = model
        self.device = device
        # worker address -> (index on its host, task threads on its host) at the start
        self.shares = shares
        self.versions = versions  # :data:`_MATCHED` of the process that started the run
        self.pair: ModelPair | None = None
        self.threads: int | None = None  # torch CPU threads per task
        self.problem: str | None = None  # why this worker cannot segment the run's images

    async def setup(self, worker: Any) -> None:
        share = self.shares.get(worker.address)
        late = share is None
        if late:
            # A worker that joined since the start: distributed keeps a plugin whose setup
            # failed on it and sends it images all the same, so what is wrong is kept for
            # them to say.
            if differs := _mismatch(self.versions, _version_probe()(_MATCHED)):
                self.problem = _version_words(worker.address, differs, self.versions)
                return
            # It counts the workers of its host as they are now, itself included (asked
            # only by such a worker: on a cluster of thousands, every worker asking would
            # each fetch all of them).
            try:
                info = await worker.scheduler.identity(n_workers=-1)
                workers = info["workers"]
            except Exception:  # a scheduler that does not say: this worker alone
                workers = {}
            share = _host_share(worker.address, worker.state.nthreads, workers)
        try:
            self._load(worker, *share)
        except Exception as err:  # a full disk, a GPU that fails, a damaged copy
            what = (
                f"The dask worker {worker.address} could not load the model ({error_reason(err)})"
            )
            fix = (
                f"free space in its folder {worker.local_directory} and check its GPU, or stop it"
            )
            if not late:  # the run does not start, in these words rather than the bare error
                raise WorkerLoadError(
                    f"{what}: {fix}; then run again (the finished images are skipped)."
                ) from err
            self.problem = f"{what}: {fix}."
            logging.getLogger(__name__).exception(self.problem)

    def _load(self, worker: Any, rank: int | None, host_threads: int) -> None:
        import torch

        from .models import ModelPair

        device = self.device
        self.threads = None
        # "cuda" without an index is GPU 0 to torch: on a worker it means "a GPU", its own
        if device in ("auto", "cuda") and torch.cuda.is_available():
            device = f"cuda:{_pick_gpu(torch, rank)}"
        elif device in ("auto", "cpu"):
            self.threads = max(1, (os.cpu_count() or 1) // max(1, host_threads))
        # a long-lived worker's folder may be gone (a cleaner of /tmp): made again
        Path(worker.local_directory).mkdir(parents=True, exist_ok=True)
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
    plugin = worker.plugins.get(plugin_name)
    if plugin is None:  # the run stopped before the image started (Submission.stop)
        return ImageResult(job, "not done", worker=worker.address)
    if plugin.problem is not None:
        # at once, rather than a failed image: the run sends it to another worker
        raise WorkerUnfitError(worker.address, plugin.problem)
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
            plugin.pair,
            job,
            options,
            overwrite=overwrite,
            fingerprint=fingerprint,
            # the run's plugin is removed when the run ends, however it ends (done, stopped,
            # Ctrl-C): an image in progress is then left between two planes or blocks,
            # where the task would go on for minutes on a cluster that outlives the run
            stop=lambda: plugin_name not in worker.plugins,
        )
    result.worker = worker.address
    return result


def _host_share(address: str, nthreads: int, workers: dict[str, Any]) -> tuple[int | None, int]:
    """A worker's index among the workers of its host (None when the scheduler does not
    know it) and the task threads of that host, from the scheduler's ``workers``."""
    me = workers.get(address)
    if me is None:
        return None, nthreads
    mates = sorted(a for a, info in workers.items() if info.get("host") == me.get("host"))
    return mates.index(address), sum(workers[a].get("nthreads", 1) for a in mates)


def _host_shares(client: Any) -> dict[str, tuple[int | None, int]]:
    """:func:`_host_share` of every worker of the cluster now."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {a: _host_share(a, info.get("nthreads", 1), workers) for a, info in workers.items()}


def _version_probe() -> Callable[[tuple[str, ...]], dict[str, str | None]]:
    """A function that gives the installed versions of the packages it is given (None for
    one not installed), made here so that it travels to a worker by value: a worker without
    this package, or with another version of it, runs it all the same."""

    def probe(names: tuple[str, ...]) -> dict[str, str | None]:
        from importlib import metadata

        found: dict[str, str | None] = {}
        for name in names:
            try:
                found[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                found[name] = None
        return found

    return probe


def _release(version: str) -> tuple[str, ...]:
    """``major.minor`` of a version (``2.5.1+cu121`` -> ``("2", "5")``)."""
    return tuple(version.split("+")[0].split(".")[:2])


def _mismatch(here: dict[str, str | None], there: dict[str, str | None]) -> list[str]:
    """What differs between this process's versions and a worker's, in words."""
    differs = []
    for name in _MATCHED:
        mine, theirs = here.get(name), there.get(name)
        if theirs is None:
            differs.append(f"no {name}")
        elif mine is not None and (
            theirs != mine if name == "napari-mutualseg" else _release(theirs) != _release(mine)
        ):
            differs.append(f"{name} {theirs} (here {mine})")
    return differs


def version_problem(client: Client) -> str | None:
    """Why the cluster's workers cannot run this process's tasks, or None when they can.

    Every worker must have this package at the version of this process, and torch and numpy
    of the same major.minor release: a task or the model plugin of another version fails
    on every image with an error of its own code (``TypeError: _on_worker() got an
    unexpected keyword argument``).

    Parameters
    ----------
    client : distributed.Client
        The cluster's client.

    Returns
    -------
    str or None
        One line naming the first worker that differs, how many do, and what to install.
    """
    here = _version_probe()(_MATCHED)
    answers = client.run(_version_probe(), _MATCHED, on_error="return")
    bad: dict[str, list[str]] = {}
    for address, found in sorted(answers.items()):
        if isinstance(found, BaseException) or not isinstance(found, dict):
            bad[address] = [f"no answer to a version check ({type(found).__name__})"]
        elif differs := _mismatch(here, found):
            bad[address] = differs
    if not bad:
        return None
    first = next(iter(bad))
    return _version_words(first, bad[first], here, more=len(bad) - 1)


def _version_words(
    address: str, differs: list[str], here: dict[str, str | None], more: int = 0
) -> str:
    """:func:`version_problem`'s sentence: a worker, how many ``more`` differ, what to do."""
    others = f" (and {more} more of the workers)" if more else ""
    pins = " ".join(
        f"{n}=={v}" if n == "napari-mutualseg" else f'"{n}=={".".join(_release(v))}.*"'
        for n, v in here.items()
        if v is not None
    )
    return (
        f"The dask worker {address}{others} has {', '.join(differs)}: install the versions of "
        f"this machine on every worker (pip install {pins}) and start the workers again."
    )


def check_versions(client: Client) -> None:
    """Refuse a cluster whose workers run other versions (:func:`version_problem`).

    Raises
    ------
    WorkerVersionError
        A ValueError saying which worker differs, in what, and what to install.
    """
    problem = version_problem(client)
    if problem is not None:
        raise WorkerVersionError(problem)


def default_workers() -> int:
    """Local workers for a run: one per GPU; on CPUs one per two cores (at least one)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return max(1, (os.cpu_count() or 1) // 2)


def _ignore_stop_signals() -> None:
    """Run on each local worker: Ctrl-C in a terminal reaches the whole process group, and
    so does SIGTERM from a batch system (SLURM at the time limit or on scancel). This process
    stops the workers itself once the run has stopped in order; killed by the signal first,
    they would leave it talking to workers that are gone (dask's CommClosedError in the
    log). A worker still exits when this process dies (distributed's ``AsyncProcess``
    watches its parent). A signal while they start, before this runs, kills them: the start
    fails, which :class:`~napari_mutualseg.batch.BatchRun` takes for the stop it is."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


class _StopSignals(WorkerPlugin):
    """:func:`_ignore_stop_signals` on each local worker, also on one its nanny starts again
    (the worker ran out of memory, or was killed): run once at the start, a worker started
    again was killed by the next Ctrl-C or SIGTERM, and the stop ended in dask's errors."""

    name = "napari-mutualseg-stop-signals"

    def setup(self, worker: Any) -> None:
        _ignore_stop_signals()


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


def check_paths(
    client: Client,
    paths: Sequence[str | os.PathLike],
    writable: Sequence[str | os.PathLike] = (),
) -> None:
    """Refuse a cluster whose workers do not see ``paths`` (absolute: the first input image
    and the output folder) where this process sees them, or cannot write in the folders
    ``writable``: every image would fail there ('Image file not found', 'read-only disk').

    Raises
    ------
    FileNotFoundError, PermissionError
        Naming the first worker and path, and what the workers need.
    """
    checks = [(os.path.exists, (p,), "does not see") for p in map(os.fspath, paths)]
    checks += [(os.access, (p, os.W_OK), "cannot write in") for p in map(os.fspath, writable)]
    for function, args, what in checks:
        answers = client.run(function, *args, on_error="return")
        failing = sorted(a for a, ok in answers.items() if ok is not True)
        if not failing:
            continue
        more = f" (and {len(failing) - 1} more of the workers)" if len(failing) > 1 else ""
        where = f"The dask worker {failing[0]}{more} {what} {args[0]}"
        if function is os.access:
            raise PermissionError(
                f"{where}: the workers must be able to write the results there (a folder "
                "that the user the workers run as may write, on a disk mounted writable)."
            )
        raise FileNotFoundError(
            f"{where}: the workers must see the input and output folders under the same paths "
            "as this machine (a shared file system, mounted at the same place)."
        )


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[tuple[Client, str]]:
    """A dask client for a run, closed (with the cluster it started) when the block ends.

    Parameters
    ----------
    scheduler : str, optional
        Address of an existing scheduler (``tcp://host:8786``), checked with
        :func:`check_scheduler`. Without it a LocalCluster is started: ``workers`` processes
        of one thread each, which leave Ctrl-C and SIGTERM to this process.
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
    # not the process's default scheduler: napari draws lazy layers with dask in the main
    # thread while a folder is segmented, and their reads would go to the run's workers
    # (remote ones without the files)
    own = {"set_as_default": False}
    if scheduler is not None:
        check_scheduler(scheduler)
        client = Client(scheduler, timeout=f"{CONNECT_SECONDS}s", **own)
        where = f"on the dask cluster at {scheduler}"
    else:
        try:
            # the scheduler sends a worker its next image only when it has a thread free:
            # with one queued behind it, a worker killed by its image (out of memory) takes
            # the next one along, failed after as many deaths as the image that kills it
            with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
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
        client = Client(cluster, **own)
        client.register_plugin(_StopSignals())
        where = f"on {workers} local dask worker{'s' if workers > 1 else ''}"
    try:
        yield client, where
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


#: Seconds between two looks at a stop while waiting for a cluster's first worker.
_STOP_LOOK_SECONDS = 0.5


def wait_for_a_worker(client: Client, stop: Callable[[], bool] | None = None) -> bool:
    """Wait until the cluster has a worker, at most :data:`WORKER_SECONDS` (a batch
    system's queue may hold the workers' jobs for a while).

    Parameters
    ----------
    client : distributed.Client
        The cluster's client.
    stop : callable, optional
        Asked as the wait goes on: a run stopped then (Ctrl-C) stops waiting at once, rather
        than when the time is up.

    Returns
    -------
    bool
        True once a worker is there; False when ``stop()`` came true first.

    Raises
    ------
    TimeoutError
        When no worker joins in time, saying what to do.
    """
    deadline = time.monotonic() + WORKER_SECONDS
    while True:
        left = deadline - time.monotonic()
        try:
            client.wait_for_workers(1, timeout=max(0.01, min(_STOP_LOOK_SECONDS, left)))
            return True
        except TimeoutError:
            if stop is not None and stop():
                return False
            if left <= _STOP_LOOK_SECONDS:
                break
    address = client.scheduler.address
    raise TimeoutError(
        f"No dask worker joined the scheduler at {address} within {WORKER_SECONDS} s: "
        f"start workers (dask worker {address}) or scale the cluster, then run again."
    )


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
    visible: Sequence[str | os.PathLike] = (),
    writable: Sequence[str | os.PathLike] = (),
) -> Iterator[Submission]:
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
    visible, writable : sequence of path-like
        Absolute paths every worker must see, and folders every worker must be able to
        write in (:func:`check_paths`): the first image and the output folder.

    Yields
    ------
    Submission
        Its ``futures``: one per job sent, in order (the others, ``held``, are sent by the
        caller with :meth:`Submission.send`); each gives the image's :class:`ImageResult`
        or raises :class:`WorkerUnfitError`.

    Raises
    ------
    TimeoutError
        When no worker joins the cluster in time.
    WorkerVersionError
        When workers run other versions of this package, torch or numpy
        (:func:`check_versions`).
    WorkerLoadError
        When the model does not load on a worker (an OSError naming the worker, the load's
        error and what to do).
    FileNotFoundError, PermissionError
        When a worker does not see a path of ``visible`` or cannot write in ``writable``.
    """
    wait_for_a_worker(client)
    check_versions(client)  # before the plugin: another version's setup fails in its own way
    check_paths(client, visible, writable)
    run = uuid.uuid4().hex[:12]  # tasks and plugin of this run, whatever else the cluster runs
    name = _plugin_name(run)
    versions = _version_probe()(_MATCHED)  # for the workers that join later to compare
    submission = Submission(
        client,
        functools.partial(
            _on_worker,
            options=options,
            overwrite=overwrite,
            fingerprint=fingerprint,
            plugin_name=name,
        ),
        run,
    )
    try:
        # in the block: the scheduler keeps a plugin that failed on a worker, and would load
        # it on every worker that joins the cluster later
        client.register_plugin(_ModelPlugin(name, model, device, _host_shares(client), versions))
        submission.start(jobs)
        yield submission
    finally:
        client.cancel(submission.futures + submission.later)
        submission.remove_model()


class Submission:
    """The tasks of a run (:func:`submit_jobs`): one per image sent at the start, in
    ``futures``; the images held back at the start, in ``held``; the tasks of images sent
    later (held back, or handed back by a worker), in ``later``.

    Each gives the image's :class:`ImageResult`, or raises :class:`WorkerUnfitError` when the
    worker it went to cannot segment the run's images; :meth:`send` then sends the image to
    the others.
    """

    def __init__(self, client: Client, task: Callable[[ImageJob], ImageResult], run: str) -> None:
        self.client = client
        self.task = task
        self.run = run
        self.plugin: str | None = _plugin_name(run)  # the run's model on the workers, if there
        self.futures: list[Future] = []
        self.held: list[ImageJob] = []
        self.later: list[Future] = []

    def start(self, jobs: Sequence[ImageJob]) -> None:
        """One task per image, on any worker: the scheduler hands a worker its next image
        as a thread of it comes free, workers that join later included.

        The scheduler holds back only the tasks of a large group, named after the start of
        their keys: the run's id comes first, so that the image names that follow (a plate
        named by condition: ``DAPI-1.tif``, ``GFP-1.tif``) make no small groups of their own,
        which would be sent to the workers at once. A run of at most twice the cluster's
        threads is such a small group all the same: its first images, one per thread, are
        sent, and the others kept in ``held`` (the last of ``jobs``), for the caller to
        :meth:`send` as threads come free; sent at once, they would wait in the workers'
        queues, and an image that kills its worker (out of memory) would take those queued
        behind it along, each failed after as many deaths as it.
        """
        threads = self.threads()
        sent = jobs[:threads] if len(jobs) <= 2 * threads else jobs
        self.held = list(jobs[len(sent) :])
        self.futures = self.client.map(
            self.task,
            sent,
            pure=False,
            key=[f"segment-{self.run}-{i}-{j.name}" for i, j in enumerate(sent)],
        )

    def threads(self, avoid: Collection[str] = ()) -> int:
        """Task threads of the cluster's workers now, but those of ``avoid``."""
        return sum(n for a, n in self.client.nthreads().items() if a not in avoid)

    def send(self, job: ImageJob, avoid: Collection[str] = ()) -> Future | None:
        """Send ``job`` now (held back at the start, or handed back by a worker that cannot
        segment it), to the workers of the cluster now but those of ``avoid`` (which cannot
        segment the run's images); None when there are no others.

        The workers of ``avoid`` are left running for other runs on the cluster. The
        restriction is loose: should every worker named here leave (a job's walltime) and
        only new ones join, the image goes to one of those rather than wait for ever; one of
        ``avoid`` that gets it then hands it back again.
        """
        where: dict[str, Any] = {}
        if avoid:  # every worker's address: asked only once some are left out
            workers = [
                a for a in self.client.scheduler_info(n_workers=-1)["workers"] if a not in avoid
            ]
            if not workers:
                return None
            where = {"workers": workers, "allow_other_workers": True}
        future = self.client.submit(
            self.task,
            job,
            pure=False,
            key=f"segment-{self.run}-later{len(self.later)}-{job.name}",
            **where,
        )
        self.later.append(future)
        return future

    def stop(self, keys: Collection[str]) -> list[Future]:
        """Stop the run: the images in progress stop between two planes or blocks (an image
        of one plane or block finishes), those not started are not.

        Parameters
        ----------
        keys : collection of str
            The keys of the tasks whose results the caller has not taken yet.

        Returns
        -------
        list of Future
            Those of ``keys`` finished or in progress: each gives its image's result (done,
            or not done when stopped in it) as it ends. The others are cancelled.
        """
        self.remove_model()
        # asked after the removal: a task that starts later finds no model and is not done
        try:
            running = {key for keys in self.client.processing().values() for key in keys}
        except OSError:  # the scheduler is gone: so are its tasks
            running = set()
        futures = [f for f in self.futures + self.later if f.key in keys]
        kept = [f for f in futures if f.done() or f.key in running]
        self.client.cancel([f for f in futures if f not in kept])
        return kept

    def remove_model(self) -> None:
        """Remove the run's model from the workers (once: the scheduler logs an error for a
        model it does not have); an image in progress then stops between two planes or
        blocks."""
        if self.plugin is None:
            return
        with contextlib.suppress(Exception):  # the cluster may be gone: nothing to remove
            self.client.unregister_worker_plugin(self.plugin)
        self.plugin = None
