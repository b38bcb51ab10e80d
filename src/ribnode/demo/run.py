"""``ribnode demo``: the main job end to end on embedded defaults.

Everything it shows comes from the run it makes: it writes a synthetic chest study, starts
``ribnode serve`` and ``ribnode worker`` as separate processes (SQLite ledger, filesystem
broker, local outbox folder, all under ``--work-dir``, wiped first), sends the study over DICOM
C-STORE, waits for the job to reach "done", then reads the three delivered objects back from
the outbox. It prints the times and job states from the ledger, the objects with their SOP
classes and series descriptions, and each object's provenance as standard DICOM attributes
state it; it writes ``before-after.png`` (source | suppressed | difference | rib mask) and
copies the objects to ``--output``.

With ``--orthanc`` a local Orthanc (Debian package) plays the PACS: the study is uploaded to
it, Orthanc sends it to ribnode, ribnode's results go back by STOW-RS, and the demo lists the
study's series as Orthanc holds them.

Exit status: 0 when the loop closed; 1 with the reason otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pydicom

    from ribnode.config.settings import Settings
    from ribnode.demo.orthanc import OrthancServer
    from ribnode.ledger.store import Ledger

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

TERMINAL = ("done", "failed", "dead")
KINDS = ("sc", "seg", "sr")
DEMO_AE = "RIBNODE-DEMO"


class DemoError(RuntimeError):
    """The demo could not close the loop; the message says where and why."""


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``ribnode demo``."""
    demo = sub.add_parser(
        "demo",
        help="run the whole loop on a synthetic chest study (embedded defaults)",
        description=(
            "Write a synthetic chest radiograph study, start 'ribnode serve' and 'ribnode "
            "worker', send the study over DICOM, wait for the three AI objects (bone-suppressed "
            "Secondary Capture, rib DICOM-SEG, TID 1500 SR), print a summary with their "
            "provenance and write a before/after PNG. Nothing shown is made up: it is all "
            "read back from the run. Model settings (weights, steps) come from --config and "
            "RIBNODE_MODELS__*; everything else uses embedded defaults under --work-dir."
        ),
    )
    demo.add_argument(
        "--work-dir",
        default="var/demo",
        type=Path,
        help="ledger, spool, broker, outbox and logs (wiped at start; default var/demo)",
    )
    demo.add_argument(
        "--output",
        default="demo-output",
        type=Path,
        help="where the PNG and the three objects go (default demo-output)",
    )
    demo.add_argument(
        "--orthanc",
        action="store_true",
        help="also start a local Orthanc as the PACS (study sent from it, results back by STOW-RS)",
    )
    demo.add_argument("--size", type=int, default=2048, help="synthetic image side in pixels (default 2048)")
    demo.add_argument("--seed", type=int, default=42, help="synthetic study seed (default 42)")
    demo.add_argument("--steps", type=int, help="diffusion sampling steps (models.suppression_steps)")
    demo.add_argument(
        "--quiet-period", type=float, default=1.0, help="study completion quiet period, seconds (default 1)"
    )
    demo.add_argument("--timeout", type=float, default=300.0, help="longest wait for the job, seconds (default 300)")
    demo.set_defaults(handler=demo_command)


# -- set-up ---------------------------------------------------------------------------------
@dataclass
class DemoRun:
    """What one demo run produced, for the summary."""

    settings: Settings
    work_dir: Path
    output: Path
    source: Path
    study_uid: str = ""
    sent_at: datetime | None = None
    job_id: int | None = None
    job_state: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    objects: dict[str, Path] = field(default_factory=dict)


def free_port() -> int:
    """A free TCP port on loopback."""
    from ribnode.demo.orthanc import free_port as orthanc_free_port

    return orthanc_free_port()


def demo_routing() -> dict[str, Any]:
    """The default routing rule, except that it takes SyntheticData YES input.

    The default refuses any AI-synthetic instance so that ribnode's outputs are never fed back
    in; the demo's (and the tests') input is a synthetic phantom, which says so honestly with
    SyntheticData YES. Here ribnode's own results stay excluded by what marks them: the
    Secondary Capture by Conversion Type SYN, the SEG and SR by their modality.
    """
    from ribnode.node.routing import DEFAULT_RULE

    synthetic = {"not": {"attr": "SyntheticData", "equals": "YES"}}
    clauses = [c for c in DEFAULT_RULE["all"] if c != synthetic]
    if len(clauses) == len(DEFAULT_RULE["all"]):
        raise DemoError("the default routing rule changed: no SyntheticData clause to relax")
    return {"all": [*clauses, {"not": {"attr": "ConversionType", "equals": "SYN"}}]}


def demo_settings(args: argparse.Namespace, work: Path, stow_url: str | None) -> Settings:
    """Embedded defaults under ``work``: ledger, broker, spool, outbox and port are the demo's;
    the rest (models, outputs, routing) comes from --config and the environment."""
    from ribnode.config.settings import Settings, load_settings

    base = load_settings(args.config)
    destinations: list[dict[str, Any]] = [{"name": "outbox", "kind": "folder", "path": str(work / "outbox")}]
    if stow_url:
        destinations.append({"name": "orthanc", "kind": "stow", "url": stow_url})
    overrides = {
        "var_dir": str(work),
        "listener.port": free_port(),
        "listener.open_mode": True,
        "spool.directory": str(work / "spool"),
        "spool.quiet_period_s": args.quiet_period,
        "spool.completion_poll_s": 0.2,
        "ledger.url": f"sqlite:///{work / 'ledger.sqlite'}",
        "broker.url": "filesystem://",
        "broker.folder": str(work / "broker"),
        "routing.rules": demo_routing(),
        "export.destinations": destinations,
        "export.staging_dir": str(work / "outputs"),
        "models.suppression_steps": args.steps,
    }
    merged = base.model_dump(mode="json")
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return Settings.model_validate(merged)


def check_weights(settings: Settings) -> None:
    """Fail before starting anything when a model's weights file is missing (otherwise the
    worker would retry the job until it is dead)."""
    from ribnode.models.segmentation.runtime import DEFAULT_WEIGHTS
    from ribnode.models.suppression.runtime import DEFAULT_CONFIG

    models = settings.models
    wanted = {
        "segmentation": models.segmentation_weights or DEFAULT_WEIGHTS,
        "suppression": models.suppression_weights or DEFAULT_CONFIG,
    }
    missing = [f"{name} weights {path}" for name, path in wanted.items() if not Path(path).is_file()]
    if missing:
        raise DemoError(
            f"{'; '.join(missing)} not found: set models.segmentation_weights / "
            "models.suppression_weights, or train them (ribnode-lab train-seg, "
            "ribnode-lab train-suppression; docs/models/)"
        )


def write_config(settings: Settings, path: Path) -> Path:
    """The YAML file both subprocesses read (so they share exactly these settings)."""
    import yaml

    path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    return path


def write_study(work: Path, size: int, seed: int) -> Path:
    """A synthetic chest DX study (one instance) from ``ribnode.phantom``."""
    from ribnode.phantom import generate_chest, write_dicom_study

    chest = generate_chest(seed, size)
    [path] = write_dicom_study(chest, work / "study", seed)  # Imager Pixel Spacing, as DX
    return path


@contextmanager
def ribnode_process(command: str, config: Path, log: Path, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``ribnode <command>`` as a subprocess reading ``config``; stopped (SIGTERM) on exit."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIBNODE_")}
    env["RIBNODE_CONFIG"] = str(config)
    argv = [sys.executable, "-m", "ribnode", "--config", str(config), "--log-level", "INFO", command, *extra]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def start_node(
    stack: ExitStack, config: Path, work: Path, port: int
) -> dict[str, tuple[subprocess.Popen[bytes], Path]]:
    """``ribnode serve``, then (once it answers C-ECHO, so the ledger exists and is migrated)
    ``ribnode worker``; both stopped when ``stack`` closes."""
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name in ("serve", "worker"):
        log = work / f"{name}.log"
        procs[name] = (stack.enter_context(ribnode_process(name, config, log)), log)
        if name == "serve":
            wait_for_echo(port, procs)
    wait_for_worker(procs)
    return procs


def wait_for_worker(procs: dict[str, tuple[subprocess.Popen[bytes], Path]], timeout_s: float = 120.0) -> None:
    """Until the Celery worker says it is ready (its log line; the embedded broker has no
    remote control to ping), so the times shown are the job's, not the worker's start-up."""
    log = procs["worker"][1]
    deadline = time.monotonic() + timeout_s
    while b" ready." not in (log.read_bytes() if log.is_file() else b""):
        check_alive(procs)
        if time.monotonic() > deadline:
            raise DemoError(f"ribnode worker not ready within {timeout_s:.0f} s:\n{log_tail(log)}")
        time.sleep(0.2)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 25) -> str:
    """The end of a subprocess log, for error messages."""
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# -- DICOM ----------------------------------------------------------------------------------
def wait_for_echo(port: int, procs: dict[str, tuple[subprocess.Popen[bytes], Path]], timeout_s: float = 60.0) -> None:
    """Until the listener answers C-ECHO (fail early if a subprocess died)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=DEMO_AE)
    ae.add_requested_context(Verification)
    transport_log = logging.getLogger("pynetdicom.transport")
    level = transport_log.level
    transport_log.setLevel(logging.CRITICAL)  # "connection refused" until the listener is up
    try:
        _echo_until_answered(ae, port, procs, timeout_s)
    finally:
        transport_log.setLevel(level)


def _echo_until_answered(
    ae: Any, port: int, procs: dict[str, tuple[subprocess.Popen[bytes], Path]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        check_alive(procs)
        assoc = ae.associate("127.0.0.1", port)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return
        time.sleep(0.3)
    raise DemoError(f"ribnode serve did not answer C-ECHO on port {port} within {timeout_s:.0f} s")


def check_alive(procs: dict[str, tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Raise with the log tail when a ribnode subprocess has exited."""
    for name, (proc, log) in procs.items():
        if proc.poll() is not None:
            raise DemoError(f"ribnode {name} exited with status {proc.returncode}:\n{log_tail(log)}")


def c_store(path: Path, port: int) -> None:
    """Send one file to the listener with a pynetdicom SCU; raise unless status is success."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title=DEMO_AE)
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port)
    if not assoc.is_established:
        raise DemoError(f"association with ribnode on port {port} was not established")
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    if not status or status.Status != 0:
        code = f"0x{status.Status:04X}" if status else "no response"
        raise DemoError(f"C-STORE of {path.name} answered {code}")


def send_via_orthanc(pacs: OrthancServer, path: Path, port: int) -> None:
    """Upload the study to Orthanc and have Orthanc C-STORE it to ribnode (a PACS forward)."""
    pacs.add_modality("RIBNODE", "RIBNODE", "127.0.0.1", port)
    oid = pacs.upload(path)
    result = pacs.send_to_modality("RIBNODE", [oid])
    if result.get("FailedInstancesCount"):
        raise DemoError(f"Orthanc could not send the study to ribnode: {result}")


# -- waiting and reading back ---------------------------------------------------------------
def wait_for_job(
    run: DemoRun, ledger: Ledger, procs: dict[str, tuple[subprocess.Popen[bytes], Path]], timeout_s: float
) -> None:
    """Until the study's job is done, failed or dead (printing each new state)."""
    deadline = time.monotonic() + timeout_s
    seen: str | None = None
    while time.monotonic() < deadline:
        check_alive(procs)
        job = _study_job(ledger, run.study_uid)
        if job is not None and job.state != seen:
            seen = job.state
            print(f"  job {job.id}: {job.state}", flush=True)
            if job.state in TERMINAL:
                run.job_id, run.job_state = job.id, job.state
                return
        time.sleep(0.2)
    raise DemoError(
        f"the job did not finish within {timeout_s:.0f} s (last state: {seen}); "
        f"worker log:\n{log_tail(procs['worker'][1])}"
    )


def _study_job(ledger: Ledger, study_uid: str) -> Any:
    """The latest job of the study, or None before the study is complete."""
    from ribnode.ledger.schema import JobState

    jobs = [j for state in JobState for j in ledger.jobs_in_state(state) if j.study_instance_uid == study_uid]
    return max(jobs, key=lambda j: j.id) if jobs else None


def job_timings(run: DemoRun, ledger: Ledger) -> None:
    """Seconds from the end of the C-STORE to each job transition (ledger timestamps)."""
    assert run.sent_at is not None and run.job_id is not None
    for transition in ledger.transitions(run.job_id):
        run.timings[transition.to_state] = (transition.at - run.sent_at).total_seconds()


def collect_objects(run: DemoRun, ledger: Ledger) -> dict[str, pydicom.Dataset]:
    """The job's objects as delivered to the outbox folder, copied to ``run.output``."""
    import pydicom

    from ribnode.ledger.deliveries import DeliveryLedger

    assert run.job_id is not None
    rows = DeliveryLedger(ledger).outputs(run.job_id)
    outbox = run.work_dir / "outbox"
    datasets: dict[str, pydicom.Dataset] = {}
    for row in rows:
        delivered = outbox / row.path  # the folder destination mirrors the staging layout
        if not delivered.is_file():
            raise DemoError(f"{row.kind} {row.sop_instance_uid} is in the ledger but not in {outbox}")
        target = run.output / f"{row.kind}.dcm"
        shutil.copyfile(delivered, target)
        run.objects[row.kind] = target
        datasets[row.kind] = pydicom.dcmread(target)
    missing = [k for k in KINDS if k not in datasets]
    if missing:
        raise DemoError(f"job {run.job_id} is done but has no {', '.join(missing)} object")
    return datasets


# -- the picture ----------------------------------------------------------------------------
def _display(stored: np.ndarray, source: pydicom.Dataset, lo: float, hi: float) -> np.ndarray:
    """Stored values -> bone-bright [0, 1] with the source's window (same for both images)."""
    import numpy as np

    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    image = (stored.astype(np.float64) * slope + intercept - lo) / max(hi - lo, 1e-9)
    if str(source.PhotometricInterpretation).upper() == "MONOCHROME1":
        image = 1.0 - image
    return np.clip(image, 0.0, 1.0)


def before_after_png(
    source_path: Path, sc: pydicom.Dataset, seg: pydicom.Dataset, out: Path, height: int = 512
) -> Path:
    """source | suppressed | difference | rib mask, labelled, from the delivered objects."""
    import numpy as np
    import pydicom
    from PIL import Image, ImageDraw, ImageFont

    from ribnode.models.preprocess import read_radiograph

    source = pydicom.dcmread(source_path)
    radiograph = read_radiograph(source)
    before = _display(radiograph.stored, source, radiograph.lo, radiograph.hi)
    after = _display(sc.pixel_array, source, radiograph.lo, radiograph.hi)
    diff = before - after
    scale = max(float(np.abs(diff).max()), 1e-6)
    # frame 1 is segment 1, the ribs (one frame per segment: ribs, clavicles, lung fields)
    mask = np.asarray(seg.pixel_array).reshape(-1, *before.shape)[0] > 0
    panels = [
        ("original", before),
        ("AI SYNTHETIC bone-suppressed", after),
        (f"difference (removed bone, x{1 / scale:.1f})", np.clip(diff / scale, 0, 1)),
        ("rib mask (DICOM-SEG)", mask.astype(np.float64)),
    ]
    width = round(height * before.shape[1] / before.shape[0])
    label_h = 28
    canvas = Image.new("L", (width * len(panels), height + label_h), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=16)
    for i, (label, image) in enumerate(panels):
        tile = Image.fromarray(np.round(image * 255).astype(np.uint8)).resize((width, height), Image.Resampling.LANCZOS)
        canvas.paste(tile, (i * width, label_h))
        draw.text((i * width + 6, 5), label, fill=255, font=font)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    return out


# -- the summary ----------------------------------------------------------------------------
def print_summary(run: DemoRun, datasets: dict[str, pydicom.Dataset], ledger: Ledger) -> None:
    """Times, states, objects and provenance, all read back from the run."""
    from pydicom.uid import UID

    from ribnode.dicom_sr.provenance import describe_standard
    from ribnode.ledger.deliveries import DeliveryLedger

    print("\nTimes from the end of the C-STORE (ledger job transitions):")
    for state, seconds in run.timings.items():
        print(f"  {state:<10} {seconds:7.2f} s")
    quiet = run.settings.spool.quiet_period_s
    print(
        f"  (study completion waits a quiet period of {quiet:g} s before the job is queued; "
        "a worker's first job also loads the models)"
    )
    assert run.job_id is not None
    print(
        f"\nJob {run.job_id}: {run.job_state}; deliveries: "
        + ", ".join(
            f"{d.destination} {d.state} after {d.attempts} attempt(s)"
            for d in DeliveryLedger(ledger).deliveries(run.job_id)
        )
    )
    print(f"\nThree objects in study {run.study_uid}:")
    for kind in KINDS:
        ds = datasets[kind]
        print(
            f"  {kind.upper():<3} {UID(ds.SOPClassUID).name:<38} series {ds.SeriesNumber:>4} "
            f'"{ds.SeriesDescription}"  -> {run.objects[kind]}'
        )
    print("\nProvenance, from standard DICOM attributes only (dicom_sr.provenance.describe_standard):")
    for kind in KINDS:
        info = describe_standard(datasets[kind])
        print(
            f"  {kind.upper()}: synthetic={info['synthetic_data']} "
            f"qualification={info['content_qualification']} derived from {info['derived_from']}"
        )
        for eq in info["ai_equipment"]:
            print(
                f"    {eq['purpose']}: {eq['model']} {' '.join(eq['software_versions'])} "
                f"at {eq['contribution_datetime']}"
            )
            print(f"      {eq['contribution_description']}")


def print_orthanc(pacs: OrthancServer, study_uid: str) -> None:
    """The study's series as Orthanc holds them (proof the results landed in the same study)."""
    print(f"\nOrthanc ({pacs.url}) holds study {study_uid} with these series:")
    for series in pacs.series_of_study(study_uid):
        tags = series.get("MainDicomTags", {})
        print(
            f"  {tags.get('Modality', ''):<3} series {tags.get('SeriesNumber', ''):>4} "
            f'"{tags.get("SeriesDescription", "")}" ({len(series.get("Instances", []))} instance)'
        )


# -- the command ----------------------------------------------------------------------------
def run_demo(args: argparse.Namespace) -> DemoRun:
    """The whole loop; raises :class:`DemoError` with the reason when it does not close."""
    import pydicom

    from ribnode.demo.orthanc import OrthancServer
    from ribnode.ledger.store import Ledger

    work, output = args.work_dir.resolve(), args.output.resolve()
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(output, ignore_errors=True)
    work.mkdir(parents=True)
    output.mkdir(parents=True)
    with ExitStack() as stack:
        pacs = None
        if args.orthanc:
            if shutil.which("Orthanc") is None:
                raise DemoError(
                    "--orthanc: the Orthanc binary is not installed (apt-get install orthanc orthanc-dicomweb)"
                )
            pacs = stack.enter_context(OrthancServer(work / "orthanc"))
            print(f"Orthanc PACS on {pacs.url} (DICOM port {pacs.dicom_port})", flush=True)
        settings = demo_settings(args, work, pacs.dicomweb_url if pacs else None)
        check_weights(settings)
        config = write_config(settings, work / "ribnode.yaml")
        t0 = time.perf_counter()
        source = write_study(work, args.size, args.seed)
        run = DemoRun(settings, work, output, source)
        run.study_uid = str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID)
        print(f"synthetic chest study {args.size}x{args.size} written in {time.perf_counter() - t0:.1f} s: {source}")
        procs = start_node(stack, config, work, settings.listener.port)
        print(
            f"started 'ribnode serve' (port {settings.listener.port}) and 'ribnode worker'; logs in {work}", flush=True
        )
        ledger = Ledger(settings.ledger.url)
        if pacs is not None:
            send_via_orthanc(pacs, source, settings.listener.port)
            print("Orthanc sent the study to ribnode (C-STORE)", flush=True)
        else:
            c_store(source, settings.listener.port)
            print("sent the study to ribnode (C-STORE)", flush=True)
        from ribnode.ledger.store import utcnow

        run.sent_at = utcnow()
        wait_for_job(run, ledger, procs, args.timeout)
        if run.job_state != "done":
            row = ledger.job_row(run.job_id)  # type: ignore[arg-type]
            raise DemoError(
                f"job {run.job_id} ended {run.job_state}: {row.last_error}\nworker log:\n{log_tail(procs['worker'][1])}"
            )
        job_timings(run, ledger)
        datasets = collect_objects(run, ledger)
        png = before_after_png(source, datasets["sc"], datasets["seg"], output / "before-after.png")
        print_summary(run, datasets, ledger)
        if pacs is not None:
            print_orthanc(pacs, run.study_uid)
        print(f"\nbefore/after picture: {png}")
        ledger.dispose()
    return run


def demo_command(args: argparse.Namespace) -> int:
    """``ribnode demo``: 0 when the loop closed, 1 with the reason otherwise."""
    if args.log_level is None:  # the summary is the output; the processes log to their files
        logging.getLogger().setLevel(logging.WARNING)
    for name in ("pynetdicom", "alembic", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run_demo(args)
    except DemoError as exc:
        print(f"ribnode demo FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
