"""Creating a job that names a dataset in its parameters and deleting that dataset exclude each other
(DELETE /datasets/{id} is refused while any job names it: backend/unregister.py); so do pointing a
teacher's evaluation protocol at a dataset (POST /teachers, PATCH /teachers/{id}) and deleting it (the
delete is refused while a protocol names it too).

Without this, a job checked its dataset, a delete checked that no job named it and removed it, and the job
was then saved naming a dataset that no longer existed. Now:
- PostgreSQL: the job's transaction holds the dataset's row FOR SHARE from its insert to its commit; the
  delete takes it FOR UPDATE before it looks for users, so it waits for the job and then sees it (409),
  or it deleted first and the job finds no row (404 at its `dataset_id`).
- SQLite (no row locks): every write transaction holds the database's one write lock. The job checks its
  dataset again after its insert, the delete looks for users again after its delete: whichever wrote
  second sees what the first committed.
Torch-free."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.errors import NotFound
from backend.models import Dataset

Path = tuple[str | int, ...]


def named_datasets(params: Any, at: Path = ()) -> Iterator[tuple[int, Path]]:
    """Each (dataset id, path of its `dataset_id` key) a job's parameters name: `dataset_id`,
    `protocol.dataset_id`, a workflow's step parameters."""
    if isinstance(params, dict):
        for key, value in params.items():
            if key == "dataset_id" and isinstance(value, int) and not isinstance(value, bool):
                yield value, (*at, key)
            else:
                yield from named_datasets(value, (*at, key))
    elif isinstance(params, list):
        for i, value in enumerate(params):
            yield from named_datasets(value, (*at, i))


def hold_for_job(session: Session, params: dict[str, Any], params_at: Path) -> None:
    """After the job's insert (flushed): the datasets it names, held until the transaction ends; one
    deleted meanwhile is a 404 at its field (`params_at`: where the request carries the parameters)."""
    named = dict(named_datasets(params))  # id -> the first path naming it
    if not named:
        return
    present = set(session.scalars(select(Dataset.id).where(Dataset.id.in_(named)).with_for_update(read=True)))
    for dataset_id, path in named.items():
        if dataset_id not in present:
            raise NotFound(f"Dataset {dataset_id} not found (deleted meanwhile)", field=(*params_at, *path))


def hold_for_protocol(session: Session, protocol: dict[str, Any] | None, protocol_at: Path) -> None:
    """After a teacher's insert or protocol change (flushed): the dataset its evaluation protocol names,
    held like a job's until the transaction ends; one deleted meanwhile is a 404 at `protocol_at`.dataset_id."""
    if protocol:
        hold_for_job(session, protocol, protocol_at)


def hold_for_delete(session: Session, dataset_id: int) -> None:
    """Before the delete looks for users: waits for a job being created on it to commit (PostgreSQL)."""
    session.execute(
        select(Dataset.id)
        .where(Dataset.id == dataset_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
