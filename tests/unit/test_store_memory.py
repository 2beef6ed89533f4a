"""The storage contract against the in-memory adapter, plus what only it promises."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.application.ports import ChangeSet, ConcurrencyError, StoredDossier, UnitOfWork
from engine.store.memory import InMemoryStore, InMemoryUnitOfWork
from tests.store_contract import T0, StoreContract, UowFactory, make_dossier


@pytest.fixture
def uow_factory() -> UowFactory:
    store = InMemoryStore()

    def factory() -> UnitOfWork:
        return InMemoryUnitOfWork(store)

    return factory


class TestInMemoryStore(StoreContract):
    pass


def test_interleaved_writers_never_lose_an_update() -> None:
    store = InMemoryStore()
    first, second = InMemoryUnitOfWork(store), InMemoryUnitOfWork(store)
    with first, second:
        first.repo.write(ChangeSet(clock=T0))
        second.repo.write(ChangeSet(clock=T0 + timedelta(days=1)))
        first.commit()
        with pytest.raises(ConcurrencyError):
            second.commit()
    assert store.clock == T0


def test_read_only_unit_of_work_commits_after_another_writer() -> None:
    store = InMemoryStore()
    reader, writer = InMemoryUnitOfWork(store), InMemoryUnitOfWork(store)
    with reader, writer:
        assert reader.repo.get_clock() is None
        writer.repo.write(ChangeSet(dossiers=[StoredDossier(make_dossier(), 0, None)]))
        writer.commit()
        reader.commit()  # nothing staged: nothing to conflict with


def test_staging_is_invisible_to_the_store_until_commit() -> None:
    uow = InMemoryUnitOfWork()
    with uow:
        uow.repo.write(ChangeSet(dossiers=[StoredDossier(make_dossier(), 0, None)]))
        assert uow.store.dossiers == {}
        uow.commit()
    assert list(uow.store.dossiers) == [make_dossier().code]


def test_use_outside_with_block_is_refused() -> None:
    uow = InMemoryUnitOfWork()
    with pytest.raises(RuntimeError):
        uow.commit()
