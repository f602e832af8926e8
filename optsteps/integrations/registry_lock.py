"""Registry state that heals: one writer at a time, the database created once, runs a crash left finished.

- ``registry_lock``: an exclusive ``fcntl.flock`` on ``<db>.lock`` beside a sqlite database (``.optsteps/registry-
  <hash>.lock`` in the project for other tracking URIs: one lock per server, credentials left out of the hash),
  held around a whole registration. Waiting longer than ``mlflow.lock_timeout_s`` is one ``error:`` line naming
  the lock file and its holder. The lock dies with its process (a killed register frees it). Re-entrant per thread.
- ``ensure_database``: a sqlite registry that does not exist is created (MLflow's migration) in a temp file in the
  same folder and renamed into place under the lock, so two first registers never both migrate and a crash during
  the migration leaves no half-made database; one a crash of an older version left half-migrated (no
  ``alembic_version``, ``_alembic_tmp_*`` tables) is moved aside when it holds no runs (else one line).
- ``heal_runs``: under the lock, schedule and summary runs left RUNNING by a killed writer (this host, a dead
  process or this one) are marked FAILED; ``open_run`` then reuses the newest crashed run of a content key rather
  than create a second one, so a rerun after a crash ends with the runs, versions, tags and aliases of a clean run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

from optsteps.errors import OptstepsError
from optsteps.io.atomic import file_mode, machine_error
from optsteps.io.paths import redact

STATE_DIR = ".optsteps"  # the project's state folder (git-ignored): locks for non-file tracking URIs
WRITER_TAG = "optsteps_writer"  # host:pid of the process that opened a run (orphan detection)
ATTEMPTS_TAG = "optsteps_attempts"  # how often a crashed run was reopened (at most MAX_ATTEMPTS)
MAX_ATTEMPTS = 3
_held = threading.local()


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other URIs and ``:memory:``)."""
    m = re.match(r"^sqlite:///([^?]+)", tracking_uri or "")
    if not m or m.group(1) == ":memory:":
        return None
    return Path(m.group(1))


def lock_path(tracking_uri: str, root=".") -> Path | None:
    """``<db>.lock`` beside a sqlite database; ``<root>/.optsteps/registry-<hash>.lock`` for a server (or another
    store); None for an in-memory database."""
    if tracking_uri.startswith("sqlite:///"):
        db = sqlite_file(tracking_uri)
        return None if db is None else db.with_name(db.name + ".lock")
    digest = hashlib.sha256(redact(tracking_uri.rstrip("/")).encode()).hexdigest()[:16]
    return Path(root).resolve() / STATE_DIR / f"registry-{digest}.lock"


def writer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _holder(fd) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return f"held by {text}" if text else "held by another process"


@contextlib.contextmanager
def registry_lock(tracking_uri: str, timeout_s: float, root="."):
    """Hold the registry's lock file (``lock_path``) for the block; yields its path (None: nothing to lock)."""
    path = lock_path(tracking_uri, root)
    held = getattr(_held, "paths", None)
    if held is None:
        held = _held.paths = set()
    if path is None or str(path) in held:
        yield path
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
    except OSError as e:
        raise machine_error(e, path) or OptstepsError(
            f"cannot open the registry lock file {path} ({e.strerror or e}); check that its folder exists and is "
            "writable (mlflow.tracking_uri or --tracking-uri)."
        ) from None
    try:
        import fcntl

        deadline, told = time.monotonic() + timeout_s, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise OptstepsError(
                    f"the registry lock file {path} is {_holder(fd)} for more than {timeout_s:g} s (another "
                    "register writes this registry); wait for it to finish and rerun, or raise "
                    "mlflow.lock_timeout_s (a killed writer frees the lock itself: never delete the file by hand)."
                )
            if not told:
                print(f"waiting for the registry lock {path} ({_holder(fd)})", file=sys.stderr, flush=True)
                told = True
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{writer()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        held.add(str(path))
        try:
            yield path
        finally:
            held.discard(str(path))
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---- the database, created once --------------------------------------------------------------------------


def _broken(db: Path) -> tuple[bool, int]:
    """(whether the sqlite file is a half-made MLflow database, how many runs and registered models it holds)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
            held = 0
            for t in ("runs", "registered_models"):
                if t in tables:
                    held += con.execute(f"select count(*) from {t}").fetchone()[0]  # noqa: S608 - fixed names
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise OptstepsError(
            f"{db} is not a readable sqlite database ({e}); point mlflow.tracking_uri (or --tracking-uri) at the "
            "registry's database, or move this file away to start a new registry."
        ) from None
    half = "alembic_version" not in tables or any(t.startswith("_alembic_tmp_") for t in tables)
    return half, held


def ensure_database(tracking_uri: str, artifact_location: str | None) -> bool:
    """Create the sqlite database of ``tracking_uri`` if it does not exist (call under ``registry_lock``): MLflow's
    migration runs on a temp file that is renamed into place. Returns whether it was created."""
    db = sqlite_file(tracking_uri)
    if db is None:
        return False
    db = db if db.is_absolute() else Path.cwd() / db
    if db.is_file() and db.stat().st_size > 0:
        half, held = _broken(db)
        if not half:
            return False
        if held:
            raise OptstepsError(
                f"{db} was left half-migrated by an interrupted MLflow migration and holds {held} runs or models; "
                f"back it up and run `mlflow db upgrade sqlite:///{db}`, then rerun."
            )
        aside = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(db, aside)
        print(f"moved the half-created, empty registry database {db} aside to {aside.name}", file=sys.stderr)
    if not db.parent.is_dir():
        raise OptstepsError(
            f"the folder {db.parent} of the registry database does not exist; create it or fix mlflow.tracking_uri "
            "(or --tracking-uri)."
        )
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    uri = f"sqlite:///{tmp}"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        SqlAlchemyStore(uri, artifact_location or (db.parent / "mlartifacts").as_uri())
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
        os.replace(tmp, db)
    except OSError as e:
        raise machine_error(e, db) or e from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True


# ---- runs a crash left ------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def orphaned(run, local_store: bool, locked: bool) -> bool:
    """Whether a RUNNING run was left by a writer that is gone: written from this host by a dead process (or, under
    the registry lock, by this one: nothing else of it writes now); a run without a writer tag counts as gone only
    in a local store under the lock."""
    if run.info.status != "RUNNING":
        return False
    w = run.data.tags.get(WRITER_TAG)
    if not w:
        return local_store and locked
    host, _, pid = w.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return (locked and int(pid) == os.getpid()) or not _alive(int(pid))


def heal_runs(reg, kinds=("schedule", "summary")) -> list[str]:
    """Mark FAILED the optsteps runs (``kinds``) a killed writer left RUNNING (call under ``registry_lock``).
    Returns their ids."""
    from optsteps.integrations.mlflow_registry import KIND_TAG, SUMMARY_EXPERIMENT

    ids = []
    for name in (reg.experiment, SUMMARY_EXPERIMENT):
        exp = reg.client.get_experiment_by_name(name)
        if exp is None:
            continue
        for run in reg.client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
            if run.data.tags.get(KIND_TAG) in kinds and orphaned(run, sqlite_file(reg.tracking_uri) is not None, True):
                reg.client.set_terminated(run.info.run_id, "FAILED")
                ids.append(run.info.run_id)
    return ids


def open_run(reg, experiment_id: str, key_tag: str, key: str, run_name: str, tags: dict, expected: dict | None):
    """A run to log the content ``key`` into: the newest run of that key a crash left (FAILED, or RUNNING by a gone
    writer) whose params agree with ``expected`` (param → value; None: never reuse), reopened (status RUNNING,
    ``tags`` set); else a new run. Every run carries its writer (``WRITER_TAG``)."""
    c = reg.client
    tags = {**tags, WRITER_TAG: writer()}
    if expected is not None:
        crashed = c.search_runs(
            [experiment_id],
            f"tags.{key_tag} = '{key}' and attributes.status != 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
        local = sqlite_file(reg.tracking_uri) is not None
        for run in crashed:
            if run.info.status == "RUNNING" and not orphaned(run, local, False):
                continue
            attempts = int(run.data.tags.get(ATTEMPTS_TAG, "0") or 0)
            have = run.data.params
            if attempts >= MAX_ATTEMPTS or any(
                k in have and have[k] != str(v)[:6000] for k, v in expected.items() if v is not None
            ):
                continue
            from mlflow.entities import RunTag

            rid = run.info.run_id
            c.update_run(rid, status="RUNNING")
            changed = {k: v for k, v in {**tags, ATTEMPTS_TAG: str(attempts + 1)}.items() if run.data.tags.get(k) != v}
            c.log_batch(rid, tags=[RunTag(k, str(v)) for k, v in changed.items()])
            return c.get_run(rid)
    return c.create_run(experiment_id, run_name=run_name, tags=tags)


@contextlib.contextmanager
def open_registry(tracking_uri: str | None, timeout_s: float, lock_timeout_s: float, root="."):
    """The ``Registry`` at ``tracking_uri`` (empty: the default sqlite database) for writing: held under
    ``registry_lock`` for the block, its database created once (``ensure_database``) and the runs a killed writer
    left RUNNING marked FAILED (``heal_runs``), ready to be reopened."""
    from optsteps.integrations.mlflow_registry import Registry, artifact_location_for, default_tracking_uri

    uri = tracking_uri or default_tracking_uri(root)
    with registry_lock(uri, lock_timeout_s, root):
        ensure_database(uri, artifact_location_for(uri))
        reg = Registry(uri, timeout_s=timeout_s)
        heal_runs(reg)
        yield reg
