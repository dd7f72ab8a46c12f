"""The kit's MLflow store, without Lightning: a sqlite tracking store under ``./mlruns/``, artifacts under
``./mlruns/artifacts``; clients for read-only commands (which never create a store) and a lock for creating one.

MLflow 3.17's plain file store is in maintenance mode, so the kit uses sqlite
(``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db`` serves it).
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

from skinflow.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACTS = "mlruns/artifacts"
# The experiment's kind in MLflow 3 (model training, not GenAI). MLflow 3.17's UI does not yet choose its layout from
# it (checked in Chromium): the address's ?workflowType=machine_learning does (skinflow.pipeline.ui_link)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
CONNECT_TIMEOUT_ENV = "SKINFLOW_TRACKING_TIMEOUT"  # seconds a tracking server has to answer (default 10)


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD's sha, with ``+dirty`` when the tree has uncommitted changes; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_tracking_uri(tracking_uri: str) -> str:
    """Make a relative ``sqlite:///mlruns/mlflow.db`` absolute (against the current directory).

    MLflow caches one store per URI string; a relative URI would keep pointing at the first directory it was
    opened from when a process changes directory (tests, notebooks), and runs would land in the wrong store.
    """
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(tracking_uri[len("sqlite:///"):]).resolve())
    return tracking_uri


def sqlite_dir(tracking_uri: str) -> Path | None:
    """The folder an ``sqlite:///`` store lives in (created before MLflow opens it)."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).parent
    return None


class StoreError(UserError):
    """A tracking URI that names no store, or a damaged one (read-only commands never create one)."""


def connect_timeout() -> float:
    """``$SKINFLOW_TRACKING_TIMEOUT`` seconds, 10 by default."""
    value = os.environ.get(CONNECT_TIMEOUT_ENV, "10")
    try:
        seconds = float(value)
    except ValueError:
        raise StoreError(f"{CONNECT_TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise StoreError(f"{CONNECT_TIMEOUT_ENV}={value!r} must be positive")
    return seconds


def check_reachable(tracking_uri: str, timeout: float | None = None) -> None:
    """For an http(s) tracking server: one request to its ``/health`` within ``timeout`` seconds, or one clear
    error naming the URI. MLflow's own client retries a dead server for minutes (7 retries, 120 s each) before it
    says anything. Any HTTP answer, even an error status, shows the server is there."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    timeout = connect_timeout() if timeout is None else timeout
    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise StoreError(f"MLflow tracking server {tracking_uri} did not answer within {timeout:g} s ({reason}); start "
                         f"it, or fix the tracking URI (the wait: ${CONNECT_TIMEOUT_ENV} or the logger's connect_timeout)") from None


def store_locations(tracking_uri: str, artifact_location: str, timeout: float | None = None) -> tuple[str, str]:
    """Absolute tracking URI and artifact URI; creates the sqlite store's folder; a tracking server must answer
    within ``timeout`` seconds (``check_reachable``)."""
    check_reachable(tracking_uri, timeout)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    folder = sqlite_dir(tracking_uri)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    if "://" not in artifact_location:
        artifact_location = Path(artifact_location).resolve().as_uri()
    return tracking_uri, artifact_location


def sqlite_file(tracking_uri: str) -> Path | None:
    tracking_uri = resolve_tracking_uri(tracking_uri)
    return Path(tracking_uri[len("sqlite:///"):]) if tracking_uri.startswith("sqlite:///") else None


def refuse_empty_store(path: Path) -> None:
    """A zero-byte sqlite file is not a store: MLflow would silently initialise it as a new one."""
    if path.is_file() and path.stat().st_size == 0:
        raise StoreError(f"{path} is an empty file, not an MLflow store; remove it or point --tracking-uri at the store")


def existing_client(tracking_uri: str):
    """An ``MlflowClient`` for a store that exists, ``None`` for an sqlite file that does not (nothing is created).

    A zero-byte sqlite file is not a store (MLflow would silently initialise it): :class:`StoreError`."""
    from mlflow import MlflowClient

    path = sqlite_file(tracking_uri)
    if path is None:
        check_reachable(tracking_uri)
        return MlflowClient(resolve_tracking_uri(tracking_uri))
    if not path.is_file():
        return None
    refuse_empty_store(path)
    with store_lock(tracking_uri), readable_store(tracking_uri):  # opening may upgrade the schema: locked
        client = MlflowClient(resolve_tracking_uri(tracking_uri))
        client.search_experiments(max_results=1)
    return client


def client_for_existing(tracking_uri: str):
    """A client for read-only commands: one clear error when the URI names no store."""
    client = existing_client(tracking_uri)
    if client is None:
        raise StoreError(f"no MLflow store at {resolve_tracking_uri(tracking_uri)} (the file does not exist); "
                         "check --tracking-uri, or run from the folder that holds mlruns/")
    return client


@contextmanager
def store_lock(tracking_uri: str):
    """An exclusive lock beside an sqlite store while it is created or an experiment is added: two first runs on
    a fresh store otherwise race on MLflow's schema creation (``table ... already exists``)."""
    path = sqlite_file(tracking_uri)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def readable_store(tracking_uri: str):
    """A store that cannot be opened (a damaged or foreign sqlite file, a read-only or full disk): one
    :class:`StoreError` naming the file instead of MLflow's and SQLAlchemy's nested tracebacks."""
    try:
        yield
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001  sqlalchemy, sqlite3 and MLflow raise many kinds
        name = type(err).__name__
        if name not in ("OperationalError", "DatabaseError", "MlflowException", "PermissionError", "OSError"):
            raise
        reason = str(getattr(err, "orig", None) or err).splitlines()[0][:200]
        where = sqlite_file(tracking_uri) or tracking_uri
        raise StoreError(f"MLflow store {where} cannot be used ({name}: {reason}); a damaged file can be moved "
                         "aside, a read-only or full disk freed, or point the tracking URI elsewhere") from None


def ensure_experiment(tracking_uri: str, experiment_name: str, artifact_location: str) -> str:
    """The id of ``experiment_name``, creating the store and the experiment under :func:`store_lock`."""
    from mlflow import MlflowClient

    path = sqlite_file(tracking_uri)
    if path is not None:
        refuse_empty_store(path)
    with store_lock(tracking_uri), readable_store(tracking_uri):
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)  # creates or upgrades the schema, locked
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # an older kit's experiment; a kind set by hand is kept
                client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            return experiment.experiment_id
        return client.create_experiment(experiment_name, artifact_location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})


def open_experiment(experiment_name: str, tracking_uri: str = DEFAULT_TRACKING_URI, artifact_location: str = DEFAULT_ARTIFACTS):
    """``(client, experiment_id, tracking_uri)`` for the kit's store, creating the experiment if needed."""
    from mlflow import MlflowClient

    tracking_uri, artifact_location = store_locations(tracking_uri, artifact_location)
    experiment_id = ensure_experiment(tracking_uri, experiment_name, artifact_location)
    return MlflowClient(tracking_uri), experiment_id, tracking_uri


def search_runs(client, experiment_ids: list[str], filter_string: str = "", output_format: str = "pandas"):
    """``mlflow.search_runs`` (every page; a DataFrame with ``run_id``, ``status``, ``tags.*``, ``params.*``,
    ``metrics.*`` columns, or a list of runs) against ``client``'s store rather than the process-wide one."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        return mlflow.search_runs(experiment_ids, filter_string, output_format=output_format)
    finally:
        mlflow.set_tracking_uri(previous)
