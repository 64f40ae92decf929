from collections.abc import AsyncIterator

import pytest

from tests.unit.billing.support import RunningBilling, running_billing


@pytest.fixture
async def billing(database_url: str) -> AsyncIterator[RunningBilling]:
    async with running_billing(database_url) as running:
        yield running
