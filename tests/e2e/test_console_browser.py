"""The QA console in a real browser: headless Debian Chromium (Selenium, Debian's chromedriver)
against ``ribnode serve`` over HTTPS, on a ledger filled by a real job (a synthetic chest sent
over C-STORE through listener, Celery worker and the shipped models, as ``ribnode demo`` does).

The browser logs in, finds the demo study by filtering on the weights sha256, opens it, checks
the provenance shown against the stored objects' tags and the mismatch flag of an object
altered after the fact, reads the models page, filters the audit trail and downloads its CSV;
a wrong password is refused and audited; only the keyboard is needed; the technical role sees
no patient identifier. Screenshots go to the test's folder (and $RIBNODE_SCREENSHOTS).
"""

from __future__ import annotations

import csv
import io
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
import yaml
from PIL import Image

from ribnode.console.audit_export import EVENT_CODES
from ribnode.ledger.store import Ledger
from tests.console.helpers import (
    PASSWORDS,
    ConsoleNode,
    SyslogReceiver,
    add_jobs,
    check_audit_message,
    chromium,
    console_config,
    make_pki,
    require_browser,
    run_real_job,
    screenshot,
    serve_console,
    wait_until_up,
)
from tests.e2e.helpers import require_weights
from tests.node.helpers import wait_for
from tests.peers.fixtures import free_port

pytestmark = pytest.mark.slow
SHA = re.compile(r"weights sha256:([0-9a-f]{64})")
SECURITY_HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")


SOP_CLASSES = {"sc": "1.2.840.10008.5.1.4.1.1.7", "seg": "1.2.840.10008.5.1.4.1.1.66.4"}


def _tamper_seg(outputs: Path) -> Path:
    """Alter the stored SEG after the fact: its algorithm's version no longer matches the
    ledger (a mismatch the study page must flag)."""
    for path in sorted(outputs.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID == SOP_CLASSES["seg"]:
            item = next(i for i in ds.ContributingEquipmentSequence if "segmentation" in str(i.ManufacturerModelName))
            item.SoftwareVersions = ["0.0.0-altered", *list(item.SoftwareVersions)[1:]]
            ds.save_as(path)
            return path
    raise AssertionError(f"no SEG under {outputs}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleNode]:
    require_browser()
    require_weights()
    tmp = tmp_path_factory.mktemp("console")
    demo = run_real_job(tmp)
    work = Path(demo.settings.var_dir)
    _tamper_seg(work / "outputs")
    ledger = Ledger(demo.settings.ledger.url)
    added = add_jobs(ledger, 4)
    pki = make_pki(tmp / "pki")
    syslog = SyslogReceiver(pki["server"], pki["server_key"])
    port = free_port()
    config, token = console_config(demo.settings, pki, port, syslog.port)
    config_path = tmp / "console.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = tmp / "serve.log"
    url = f"https://127.0.0.1:{port}/console"
    with serve_console(config_path, log) as proc:
        wait_until_up(f"{url}/login", pki["ca"], proc, log)
        yield ConsoleNode(url, pki["ca"], work, ledger, token, added, syslog, config)
    syslog.close()
    ledger.dispose()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    require_browser()
    downloads = tmp_path_factory.mktemp("downloads")
    driver = chromium(downloads)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _navigate(browser: Any, action: Callable[[], Any], what: str) -> None:
    """Do `action` (a click, a key) and wait until the page it leads to has replaced this one.

    A click returns before the answer has arrived; on a busy machine the old page is still there
    when the next line reads it, and its elements go stale under the reader. Waiting for the old
    document to go stale closes that race for every form and link."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    old = browser.find_element(By.TAG_NAME, "html")
    action()

    def replaced() -> bool:
        try:
            old.is_displayed()
        except StaleElementReferenceException:
            return True
        return False

    wait_for(replaced, 30, what)


def _login(browser: Any, node: ConsoleNode, user: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(f"{node.url}/login")
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    # the answer (a password hash on a busy machine) may be the jobs page or a refusal
    submit = browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]")
    _navigate(browser, submit.click, "the answer to the login form")


def _stored(node: ConsoleNode, kind: str) -> pydicom.Dataset:
    """The demo's stored SC or SEG (headers)."""
    for path in sorted((node.work / "outputs").rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.SOPClassUID == SOP_CLASSES[kind]:
            return ds
    raise AssertionError(f"no stored {kind}")


def _session(node: ConsoleNode) -> requests.Session:
    """A cookie-keeping client that trusts the test CA (``trust_env`` off: a CA bundle named in
    the environment would take precedence over ``verify``)."""
    s = requests.Session()
    s.trust_env = False
    s.verify = str(node.ca)
    return s


def _audit(node: ConsoleNode, event: str) -> list[Any]:
    return node.ledger.audit_events(event)


# -- security without a browser: headers, CSRF, rate limit ------------------------------------
def test_security_headers_cookie_flags_and_login_required(node: ConsoleNode) -> None:
    answer = requests.get(f"{node.url}/jobs", verify=str(node.ca), allow_redirects=False, timeout=10)
    assert answer.status_code == 303 and answer.headers["location"].startswith("/console/login")
    page = requests.get(f"{node.url}/login", verify=str(node.ca), timeout=10)
    for header in SECURITY_HEADERS:
        assert header in page.headers, header
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'none': no script
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    assert "max-age" in page.headers["strict-transport-security"]
    cookie = page.headers["set-cookie"].lower()
    assert "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert (
        requests.get(
            f"{node.url}/jobs", headers={"Authorization": "Bearer wrong"}, verify=str(node.ca), timeout=10
        ).status_code
        == 401
    )


def test_csrf_token_is_required_for_login_and_logout(node: ConsoleNode) -> None:
    s = _session(node)
    s.get(f"{node.url}/login", timeout=10)
    form = {"username": "alice", "password": PASSWORDS["alice"]}
    assert s.post(f"{node.url}/login", data=form, timeout=10).status_code == 403  # no token
    assert s.post(f"{node.url}/login", data={**form, "csrf": "forged"}, timeout=10).status_code == 403
    token = s.cookies.get("ribnode_console_login")
    cross = s.post(
        f"{node.url}/login", data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert cross.status_code == 403
    answer = s.post(f"{node.url}/login", data={**form, "csrf": token}, allow_redirects=False, timeout=10)
    assert answer.status_code == 303, answer.text
    assert s.post(f"{node.url}/logout", data={"csrf": "forged"}, timeout=10).status_code == 403
    assert s.get(f"{node.url}/jobs", timeout=10, allow_redirects=False).status_code == 200  # still logged in
    alerts = [e.detail for e in _audit(node, "Security Alert")]
    assert any("CSRF" in (d or "") for d in alerts)


def test_failed_logins_are_audited_and_rate_limited(node: ConsoleNode) -> None:
    s = _session(node)
    s.get(f"{node.url}/login", timeout=10)
    token = s.cookies.get("ribnode_console_login")
    statuses = [
        s.post(
            f"{node.url}/login", data={"username": "mallory", "password": f"guess{i}", "csrf": token}, timeout=30
        ).status_code
        for i in range(5)
    ]
    assert statuses[:3] == [401, 401, 401] and statuses[3:] == [429, 429], statuses
    failed = [e for e in _audit(node, "User Authentication") if "mallory" in (e.detail or "")]
    assert len(failed) == 3 and all(e.outcome == 4 for e in failed)
    assert all(e.source_host == "127.0.0.1" for e in failed)
    limited = [e for e in _audit(node, "Security Alert") if "mallory" in (e.detail or "")]
    assert len(limited) == 2 and "rate limited" in (limited[0].detail or "")


# -- the browser ------------------------------------------------------------------------------
def test_wrong_password_is_refused_and_audited(node: ConsoleNode, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    before = len(_audit(node, "User Authentication"))
    _login(browser, node, "alice", "not-her-password")
    error = browser.find_element(By.ID, "login-error")
    assert "Wrong user name or password" in error.text
    assert browser.current_url.endswith("/console/login")
    screenshot(browser, browser.downloads, "console-login-refused")
    events = _audit(node, "User Authentication")[before:]
    assert [(e.outcome, "alice" in (e.detail or "")) for e in events] == [(4, True)]


def test_qa_finds_the_demo_study_by_weights_and_checks_its_provenance(node: ConsoleNode, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    sc = _stored(node, "sc")  # the Secondary Capture of the demo
    weights = SHA.findall(" ".join(str(i.ContributionDescription) for i in sc.ContributingEquipmentSequence))
    assert weights
    _login(browser, node, "alice", PASSWORDS["alice"])
    assert browser.current_url.endswith("/console/jobs")
    assert "5 jobs found" in browser.find_element(By.ID, "job-count").text
    weights_box = browser.find_element(By.ID, "weights")
    _navigate(browser, lambda: weights_box.send_keys(weights[0], Keys.ENTER), "the filtered job list")
    assert "1 job found" in browser.find_element(By.ID, "job-count").text
    links = browser.find_elements(By.CSS_SELECTOR, "a.study-link")
    assert [a.text for a in links] == [str(sc.StudyInstanceUID)]
    screenshot(browser, browser.downloads, "console-jobs")
    _navigate(browser, links[0].click, "the study page")
    assert str(sc.StudyInstanceUID) in browser.title
    # thumbnails: three images, loaded (decoded by the browser), from the stored objects
    images = browser.find_elements(By.CSS_SELECTOR, ".thumbs img")
    assert len(images) == 3
    wait_for(
        lambda: all(browser.execute_script("return arguments[0].naturalWidth", i) > 0 for i in images), 30, "thumbnails"
    )
    # provenance of the SC: what the page shows is what the object's tags say
    section = browser.find_element(By.CSS_SELECTOR, "section.output[data-kind=sc]")
    facts = {
        row.find_element(By.TAG_NAME, "th").text: (
            row.find_element(By.CSS_SELECTOR, "td.in-object").text,
            row.find_element(By.CSS_SELECTOR, "td.agrees").text,
        )
        for row in section.find_elements(By.CSS_SELECTOR, "table.provenance tbody tr")
    }
    assert facts["SOP Instance UID"] == (str(sc.SOPInstanceUID), "yes")
    assert facts["Synthetic Data (0008,001C)"] == (str(sc.SyntheticData), "yes")
    assert facts["Weights sha256 (Contribution Description)"][1] == "yes"
    assert weights[0] in facts["Weights sha256 (Contribution Description)"][0]
    models = {
        f"{i.ManufacturerModelName} {i.SoftwareVersions[0]}"
        for i in sc.ContributingEquipmentSequence
        if i.get("Manufacturer") == "ribnode"
    }
    assert facts["Algorithms (Contributing Equipment)"] == ("; ".join(sorted(models)), "yes")
    source_uid = str(sc.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert facts["Source instances (Source Image / Evidence)"] == (source_uid, "yes")
    assert "MISMATCH" not in section.text
    device_uids = {str(i.DeviceUID) for i in sc.ContributingEquipmentSequence if "DeviceUID" in i}
    assert device_uids and all(uid in section.text for uid in device_uids)
    # the SEG altered after the fact is flagged, in words
    summary = browser.find_element(By.ID, "mismatch-summary")
    assert "Provenance mismatch" in summary.text and summary.get_attribute("role") == "alert"
    seg = browser.find_element(By.CSS_SELECTOR, "section.output[data-kind=seg]")
    assert "MISMATCH" in seg.find_element(By.TAG_NAME, "h3").text
    bad = seg.find_element(By.CSS_SELECTOR, "tr.mismatch-row")
    assert "Algorithms" in bad.text and "0.0.0-altered" in bad.text
    # deliveries per destination
    deliveries = browser.find_element(By.CSS_SELECTOR, "table.deliveries tbody").text
    assert "outbox" in deliveries and "delivered" in deliveries
    assert browser.find_element(By.ID, "patient-id").text == str(sc.PatientID)
    browser.set_window_size(1400, 2400)  # the thumbnails and the first provenance tables
    screenshot(browser, browser.downloads, "console-study")
    browser.set_window_size(1400, 1000)
    accessed = [e for e in _audit(node, "DICOM Instances Accessed") if "viewed study page" in (e.detail or "")]
    assert accessed and accessed[-1].study_instance_uid == str(sc.StudyInstanceUID)
    assert (accessed[-1].detail or "").startswith("user alice (qa):")


def test_models_page_lists_each_version_with_its_weights(node: ConsoleNode, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{node.url}/models")
    if "/login" in browser.current_url:
        _login(browser, node, "alice", PASSWORDS["alice"])
        browser.get(f"{node.url}/models")
    rows = browser.find_elements(By.CSS_SELECTOR, "table.models tbody tr")
    text = "\n".join(r.text for r in rows)
    sc, seg = _stored(node, "sc"), _stored(node, "seg")
    for ds in (sc, seg):
        for item in ds.ContributingEquipmentSequence:
            if item.get("Manufacturer") == "ribnode":
                assert str(item.ManufacturerModelName) in text
    assert "rib-suppression" in text and "rib-segmentation" in text
    assert all(re.search(r"[0-9a-f]{64}", r.text) for r in rows)
    cards = [a.get_attribute("href") for a in browser.find_elements(By.PARTIAL_LINK_TEXT, "model card")]
    assert any(c.endswith("docs/models/rib-suppression.md") for c in cards)
    screenshot(browser, browser.downloads, "console-models")


def test_audit_filter_and_csv_download(node: ConsoleNode, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{node.url}/audit")
    if "/login" in browser.current_url:
        _login(browser, node, "alice", PASSWORDS["alice"])
        browser.get(f"{node.url}/audit")
    Select(browser.find_element(By.ID, "event")).select_by_visible_text("User Authentication")
    Select(browser.find_element(By.ID, "outcome")).select_by_visible_text("minor failure")
    submit = browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]")
    _navigate(browser, submit.click, "the filtered audit list")
    cells = browser.find_elements(By.CSS_SELECTOR, "table.audit tbody tr td:nth-child(2)")
    assert cells and {c.text for c in cells} == {"User Authentication"}
    screenshot(browser, browser.downloads, "console-audit")
    browser.find_element(By.ID, "export-csv").click()
    target = browser.downloads / "ribnode-audit.csv"
    wait_for(lambda: target.exists() and target.stat().st_size > 0, 30, "the downloaded CSV")
    time.sleep(0.5)
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert rows and {r["event"] for r in rows} == {"User Authentication"} and {r["outcome"] for r in rows} == {"4"}
    assert any("alice" in r["detail"] and "login failed" in r["detail"] for r in rows)


def test_audit_xml_is_dicom_audit_messages(node: ConsoleNode) -> None:
    answer = node.get("/audit.xml")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(answer.content)
    assert root.tag == "AuditMessages" and len(root) > 10
    codes = {code for code, _ in EVENT_CODES.values()}
    seen = set()
    for message in root:
        check_audit_message(message, codes)
        seen.add(message.find("EventIdentification/EventID").get("originalText"))  # type: ignore[union-attr]
    assert {
        "Application Activity",
        "DICOM Instances Transferred",
        "DICOM Instances Accessed",
        "Query",
        "User Authentication",
        "Security Alert",
    } <= seen


def test_thumbnails_are_rendered_at_the_original_window(node: ConsoleNode) -> None:
    sc = _stored(node, "sc")
    pngs = {}
    for kind in ("original", "suppressed", "removed"):
        answer = node.get(f"/thumbnails/{sc.SOPInstanceUID}/{kind}.png")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        pngs[kind] = np.asarray(Image.open(io.BytesIO(answer.content)))
    assert pngs["original"].shape == pngs["suppressed"].shape and max(pngs["original"].shape) == 320
    assert pngs["original"].std() > 10 and pngs["suppressed"].std() > 10
    assert np.abs(pngs["original"].astype(int) - pngs["suppressed"]).mean() > 0.2  # the suppression shows
    assert 100 < np.median(pngs["removed"]) < 156  # mostly "nothing removed": mid grey
    assert node.get("/thumbnails/1.2.3/original.png").status_code == 404


def test_job_list_filters_sort_and_pages(node: ConsoleNode) -> None:
    def ids(query: str) -> tuple[list[int], str]:
        html = node.get(f"/jobs?{query}").text
        return [int(x) for x in re.findall(r'<th scope="row">(\d+)', html)], html

    first, html = ids("sort=id&dir=asc")
    assert first == [1, 2] and "page 1 of 3" in html and 'rel="next"' in html
    third, html = ids("sort=id&dir=asc&page=3")
    assert third == [5] and 'rel="prev"' in html
    assert ids("sort=id&dir=desc")[0] == [5, 4]
    failed = [job for _, job, state in node.added if state == "failed"]
    assert sorted(ids("state=failed&sort=id&dir=asc")[0]) == failed
    study_uid, job_id, _ = node.added[1]
    assert ids(f"study={study_uid}")[0] == [job_id]
    assert ids("accession=ACC-2")[0] == [node.added[2][1]]
    assert ids("model=rib-segmentation")[0] == [1]
    assert ids("model=no-such-model")[0] == []
    sc = _stored(node, "sc")
    version = next(
        i.SoftwareVersions[0]
        for i in sc.ContributingEquipmentSequence
        if "segmentation" in str(i.get("ManufacturerModelName", ""))
    )
    assert ids(f"model=rib-segmentation&version={version}")[0] == [1]
    assert ids("model=rib-segmentation&version=0.0.0")[0] == []
    assert ids("from=2000-01-01&to=2000-01-02")[0] == []
    html = ids("sort=id&dir=asc")[1]
    assert "test error 0: not a chest radiograph" in html and 'aria-sort="ascending"' in html
    queries = [e for e in _audit(node, "Query") if "jobs page" in (e.detail or "")]
    assert any("state=failed" in (e.detail or "") for e in queries)


def test_technical_role_sees_no_patient_identifier(node: ConsoleNode, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    sc = _stored(node, "sc")
    _login(browser, node, "tom", PASSWORDS["tom"])
    browser.get(f"{node.url}/studies/{sc.StudyInstanceUID}")
    assert "masked" in browser.find_element(By.ID, "patient-id").text
    assert str(sc.PatientID) not in browser.page_source
    browser.get(f"{node.url}/jobs?sort=id&dir=desc")
    page = browser.page_source
    assert "PAT-3" not in page and "ACC-3" not in page and "masked" in page
    assert "patient identifiers masked" in page
    screenshot(browser, browser.downloads, "console-technical")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    exported = requests.get(f"{node.url}/audit.csv", cookies=cookies, verify=str(node.ca), timeout=30).text
    assert str(sc.PatientID) not in exported and "masked" in exported
    viewed = [e for e in _audit(node, "DICOM Instances Accessed") if (e.detail or "").startswith("user tom")]
    assert viewed


def test_keyboard_only(node: ConsoleNode, browser: Any) -> None:
    """Skip link first, log in, reach and open every section, log out: keys only."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    browser.delete_all_cookies()
    browser.get(f"{node.url}/login")

    def active() -> Any:
        return browser.switch_to.active_element

    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert active().text == "Skip to main content"
    outline = browser.execute_script("return getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert active().get_attribute("id") == "main"
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert active().get_attribute("id") == "username"
    ActionChains(browser).send_keys("alice", Keys.TAB, PASSWORDS["alice"], Keys.ENTER).perform()
    wait_for(lambda: browser.current_url.endswith("/console/jobs"), 15, "the jobs page")

    def tab_to(text: str, limit: int = 40) -> None:
        for _ in range(limit):
            ActionChains(browser).send_keys(Keys.TAB).perform()
            if active().text.strip().startswith(text):
                return
        raise AssertionError(f"{text!r} not reached with the Tab key")

    for section in ("Models", "Audit"):
        tab_to(section)
        ActionChains(browser).send_keys(Keys.ENTER).perform()
        wait_for(lambda s=section: browser.title.startswith(s) or s.lower() in browser.current_url, 15, section)
    tab_to("Log out")
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_for(lambda: browser.current_url.endswith("/console/login"), 15, "the login page after logout")
    logouts = [e for e in _audit(node, "User Authentication") if (e.detail or "").endswith(": logout")]
    assert logouts


def test_audit_trail_reaches_the_syslog_collector_over_tls(node: ConsoleNode) -> None:
    wanted = node.ledger.audit_events()[-1].id
    messages = wait_for(
        lambda: len(node.syslog.messages) >= wanted and node.syslog.messages, 60, f"{wanted} syslog messages"
    )
    first = messages[0]
    header, _, body = first.partition(b"\xef\xbb\xbf")
    parts = header.decode().split(" ")
    assert re.fullmatch(r"<8[0-7]>1", parts[0]) and parts[5] == "IHE+RFC-3881" and parts[6] == "-"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", parts[1])
    assert ET.fromstring(body).tag == "AuditMessage"
    texts = [m.partition(b"\xef\xbb\xbf")[2] for m in messages]
    events = [ET.fromstring(t).find("EventIdentification/EventID").get("originalText") for t in texts]  # type: ignore[union-attr]
    assert "User Authentication" in events and "DICOM Instances Accessed" in events
    assert len(set(texts)) == len(texts)  # each event once
