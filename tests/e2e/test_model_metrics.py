"""``/metrics`` has the inference time of each model (issue 27): the worker records how long
segmentation and suppression took on each instance in the ledger (``model_runs``), and the
serve process's collector folds them into ``ribnode_model_inference_seconds{model=...}``.

Real jobs with the shipped models (2 sampling steps): the histogram counts move by exactly the
instances the models ran on, and not for a job whose input the decode path refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from ribnode.config.settings import Settings
from ribnode.ledger.store import JobState, Ledger
from ribnode.node.completion import StudyCompletion
from ribnode.node.http import HttpService
from ribnode.node.http.app import make_app
from ribnode.node.routing import RoutingRule
from ribnode.node.spool import Spool
from ribnode.phantom import generate_chest, write_dicom_study
from ribnode.workers.jobs import run_job
from ribnode.workers.pipeline_step import ModelStep
from tests.e2e.helpers import e2e_settings, require_weights
from tests.node.helpers import c_store, dx_dataset, running_listener

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    text = requests.get(url + "/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, Ledger, str]]:
    require_weights()
    settings = e2e_settings(tmp_path, **{"http.port": 0, "http.min_spool_free_bytes": 0})
    ledger = Ledger(settings.ledger.url)
    spool = Spool(settings.spool.directory)
    app = make_app(settings, ledger, spool, RoutingRule(settings.routing.rules), lambda: None)
    with HttpService(app, settings.http) as service:
        yield settings, ledger, f"http://127.0.0.1:{service.port}"
    ledger.dispose()


def test_inference_histogram_per_model_moves_by_the_jobs_run(
    node: tuple[Settings, Ledger, str], tmp_path: Path
) -> None:
    settings, ledger, url = node
    chests = [write_dicom_study(generate_chest(seed, (320, 288)), tmp_path / f"c{seed}", seed)[0] for seed in (3, 4)]
    tiny = dx_dataset(rows=40, columns=50)  # below the models' 64 px: refused before any model runs
    with running_listener(settings, ledger) as listener:
        assert c_store(listener.port, [*chests, tiny]) == [0, 0, 0]
    time.sleep(settings.spool.quiet_period_s + 0.05)
    jobs = StudyCompletion(settings, ledger, lambda j: f"t{j.id}").tick()
    assert len(jobs) == 3  # one study each
    before = scrape(url)
    step = ModelStep(settings)
    for job in jobs:
        run_job(job.id, settings, ledger, step=step)
    states = sorted(str(ledger.job(j.id).state) for j in jobs)
    assert states == ["done", "done", "failed"], states
    after = scrape(url)

    def moved(name: str, model: str) -> float:
        key = (name, (("model", model),))
        return after.get(key, 0.0) - before.get(key, 0.0)

    for model in ("segmentation", "suppression"):
        assert moved("ribnode_model_inference_seconds_count", model) == 2, model
        assert moved("ribnode_model_inference_seconds_sum", model) > 0, model
        assert after[("ribnode_model_inference_seconds_bucket", (("le", "+Inf"), ("model", model)))] == 2
    again = scrape(url)  # folded incrementally: a second scrape counts nothing twice
    assert again[("ribnode_model_inference_seconds_count", (("model", "segmentation"),))] == 2
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in chests}
    done = [j for j in jobs if ledger.job(j.id).state == JobState.DONE]
    assert {i.sop_instance_uid for j in done for i in ledger.job_instances(j.id)} == sources
