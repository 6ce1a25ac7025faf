"""Shared fixtures for the deployment tests: one loopback Dask cluster per module."""

from __future__ import annotations

import distributed
import pytest


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=":0",
        silence_logs=40,
    ) as local_cluster:
        yield local_cluster
