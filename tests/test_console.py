"""The web console end to end: Debian's Chromium (driven by Selenium, one browser for the
module) against a real uvicorn serving the API, real PostgreSQL + pgvector, Redis and Celery
workers. Its parts are also requested over plain HTTP with keys of each kind, to check that
every part answers for the key's scopes and collections only."""

from __future__ import annotations

import re
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import browser
from tests.conftest import EXAMPLES, QUESTIONS, KeyClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not browser.available(), reason="needs chromium and chromium-driver (apt)"),
]

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


@pytest.fixture(scope="module")
def chrome() -> Iterator[WebDriver]:
    driver = browser.chromium()
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def signed_in(chrome: WebDriver, api: str, admin: KeyClient) -> WebDriver:
    """The browser, signed in with the admin key."""
    browser.sign_in(chrome, f"{api}/console/", admin.token)
    return chrome


def test_the_console_is_served_whole_by_the_api(api: str) -> None:
    r = httpx.get(f"{api}/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/console/"
    shell = httpx.get(f"{api}/console/", headers={"Accept-Encoding": "gzip"})
    assert shell.status_code == 200
    assert "script-src 'self'" in shell.headers["content-security-policy"]
    # Every script and stylesheet comes from the API itself, and is served (compressed).
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', shell.text)
    assert len(assets) >= 3
    for asset in assets:
        assert asset.startswith("/console/static/"), asset
        got = httpx.get(f"{api}{asset}", headers={"Accept-Encoding": "gzip"})
        assert got.status_code == 200 and got.headers["content-encoding"] == "gzip", asset
    # The shell holds no data: the parts behind it need a key.
    for part in ("/console/parts/nav", "/console/parts/collections"):
        assert httpx.get(f"{api}{part}").status_code == 401


def test_upload_two_files_and_watch_the_job_to_done(
    signed_in: WebDriver, api: str, tmp_path: Path
) -> None:
    driver = signed_in
    files = [tmp_path / "pumps.md", tmp_path / "valves.txt"]
    files[0].write_text("# Pumps\n\nThe river pump is serviced every spring by the water team.\n")
    files[1].write_text("Valves on the main line are checked monthly for leaks.\n")
    name = f"console_{uuid.uuid4().hex[:8]}"

    driver.get(f"{api}/console/")
    form = browser.wait_for(lambda: driver.find_element(By.ID, "upload"), what="upload form")
    form.find_element(By.NAME, "collection").send_keys(name)
    form.find_element(By.NAME, "create").click()
    form.find_element(By.NAME, "files").send_keys("\n".join(str(f) for f in files))
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()

    # The jobs page follows the new job until it is done.
    browser.wait_for(lambda: "/console/jobs?job=" in driver.current_url, what="the jobs page")
    job_id = int(driver.current_url.rsplit("=", 1)[1])
    card = browser.wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f"#job[data-job='{job_id}']"), what="job"
    )
    browser.wait_for(
        lambda: driver.find_element(By.ID, "job").get_attribute("data-state") == "done",
        timeout=300,
        what="the job to be done",
    )
    card = driver.find_element(By.ID, "job")
    assert card.get_attribute("data-docs") == "2"
    assert int(card.get_attribute("data-chunks") or 0) >= 2
    assert name in card.text and "Cancel job" not in card.text
    # The live table lists it too, and the collections page shows its two documents.
    browser.wait_for(
        lambda: f"#{job_id}" in browser.text(driver, "#jobs-table"), what="the jobs table"
    )
    driver.get(f"{api}/console/")
    row = browser.wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f"tr[data-collection='{name}']"),
        what="the collection's row",
    )
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "2"


def test_ask_streams_tokens_and_a_citation_opens_its_passage(
    signed_in: WebDriver, api: str, kb: str
) -> None:
    from pgrag.store import inspection

    driver = signed_in
    question, source = QUESTIONS[1]
    driver.get(f"{api}/console/ask")
    section = browser.ask(driver, question, kb)
    assert section.get_attribute("data-state") == "done"
    tokens = section.find_element(By.CLASS_NAME, "tokens")
    assert int(tokens.get_attribute("data-tokens") or 0) >= 1
    assert float(section.get_attribute("data-first-token-ms") or 0) > 0
    assert tokens.text.strip()
    timings = browser.text(driver, "#answer .timings")
    assert "total" in timings and "recall" in timings
    assert browser.text(driver, "#answer .short span") not in ("", "(none)")
    # The generating event said how many passages the generator read; citations are of those.
    read = int(section.get_attribute("data-read") or 0)
    assert 1 <= read <= 5
    cites = section.find_elements(By.CSS_SELECTOR, ".citations button.cite")
    assert cites and all(1 <= int(b.get_attribute("data-n")) <= read for b in cites)

    # The citation of the document that answers it opens that passage's stored text.
    items = section.find_elements(By.CSS_SELECTOR, ".citations li")
    cited = [li for li in items if source in li.text]
    assert cited, [li.text for li in items]
    cited[0].find_element(By.CSS_SELECTOR, "button.cite").click()
    dialog = browser.wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, "dialog#passage[open]"), what="the passage"
    )
    chunk_id = int(re.search(r"chunk (\d+)", dialog.text).group(1))  # type: ignore[union-attr]
    stored = inspection.chunk(chunk_id)
    assert stored["external_id"] == source and stored["collection"] == kb
    assert dialog.find_element(By.CLASS_NAME, "text").text == stored["text"].strip()
    dialog.find_element(By.CLASS_NAME, "close").click()


def test_map_hover_shows_a_title_and_a_click_opens_the_chunk(
    signed_in: WebDriver, api: str, kb: str
) -> None:
    from pgrag.store import inspection

    driver = signed_in
    chunks = next(s["chunks"] for s in inspection.collection_stats([kb]))
    driver.get(f"{api}/console/map?collection={kb}")
    canvas = browser.wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f"#map[data-points='{chunks}']"),
        timeout=120,
        what="the map drawn",
    )
    # The point farthest from any other on the screen, so that the click can only be it.
    i, x, y = driver.execute_script(
        """const n = pgragMap.count(), at = [...Array(n).keys()].map(pgragMap.screenOf);
        let best = [0, -1];
        at.forEach((p, i) => {
          const d = Math.min(...at.map((q, j) =>
            j === i ? Infinity : (p[0] - q[0]) ** 2 + (p[1] - q[1]) ** 2));
          if (d > best[1]) best = [i, d];
        });
        return [best[0], ...at[best[0]]];"""
    )
    chunk_id = int(driver.execute_script("return pgragMap.chunkId(arguments[0])", i))
    stored = inspection.chunk(chunk_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    width, height = canvas.size["width"], canvas.size["height"]
    ActionChains(driver).move_to_element_with_offset(
        canvas, int(x - width / 2), int(y - height / 2)
    ).perform()
    tip = browser.wait_for(lambda: driver.find_element(By.ID, "map-tip"), what="the tooltip")
    browser.wait_for(tip.is_displayed, what="the tooltip shown")
    assert tip.text == (stored["title"] or stored["external_id"])
    ActionChains(driver).click().perform()
    shown = browser.wait_for(
        lambda: driver.find_element(By.CSS_SELECTOR, f"#chunk[data-chunk='{chunk_id}']"),
        what="the chunk",
    )
    assert shown.find_element(By.CLASS_NAME, "chunk-text").text == stored["text"].strip()
    near = shown.find_elements(By.CSS_SELECTOR, ".neighbours a")
    assert len(near) == min(8, chunks - 1)
    expected = [n["neighbor_id"] for n in inspection.neighbors(chunk_id, 8)]
    assert [int(a.get_attribute("data-chunk") or 0) for a in near] == expected


def test_a_scoped_key_sees_its_collection_and_scopes_only(
    chrome: WebDriver, api: str, kb: str, admin: KeyClient
) -> None:
    from pgrag.store.collections import create_collection

    other = f"hidden_{uuid.uuid4().hex[:8]}"
    create_collection(other)
    scoped = KeyClient(api, ["search"], [kb])

    browser.sign_in(chrome, f"{api}/console/", scoped.token)
    rows = browser.wait_for(
        lambda: chrome.find_elements(By.CSS_SELECTOR, "#collections tr[data-collection]"),
        what="the collections",
    )
    assert [r.get_attribute("data-collection") for r in rows] == [kb]
    assert not chrome.find_elements(By.ID, "upload")  # no ingest scope: no upload form
    pages = [a.get_attribute("data-page") for a in chrome.find_elements(By.CSS_SELECTOR, "#nav a")]
    assert pages == ["collections", "search", "map"]
    chrome.get(f"{api}/console/map")
    select = browser.wait_for(
        lambda: chrome.find_element(By.CSS_SELECTOR, "#map-controls select[name=collection]"),
        what="the map form",
    )
    assert [o.text for o in Select(select).options] == [kb]
    # The admin sees both collections.
    browser.sign_in(chrome, f"{api}/console/", admin.token)
    browser.wait_for(
        lambda: chrome.find_elements(By.CSS_SELECTOR, f"tr[data-collection='{other}']"),
        what="the other collection, for the admin",
    )

    # Over HTTP: the other collection is 404 as if it did not exist, other scopes 403.
    for path in (
        f"/console/data/map/{other}",
        f"/console/data/map/{other}/points",
        f"/console/parts/collections/{other}/health",
    ):
        assert scoped.get(path).status_code == 404, path
    for path in ("/console/parts/jobs/table", "/console/parts/ask", "/console/parts/keys"):
        assert scoped.get(path).status_code == 403, path
    assert scoped.get(f"/console/data/map/{kb}").status_code == 200
    asker = KeyClient(api, ["ask"], [other])
    assert asker.get("/console/parts/search").status_code == 403
    # A chunk of kb (the map's first point) opens for the key of kb only.
    chunk_id = int(
        struct.unpack_from("<d", scoped.get(f"/console/data/map/{kb}/points").content)[0]
    )
    assert scoped.get(f"/console/parts/chunks/{chunk_id}").status_code == 200
    elsewhere = KeyClient(api, ["search"], [other])
    assert elsewhere.get(f"/console/parts/chunks/{chunk_id}").status_code == 404


def test_search_compares_rankings_with_filters(admin: KeyClient, kb: str) -> None:
    params = {"query": "How do I get help from IT?", "collection": kb, "k": 5}
    html = admin.get("/console/parts/search/results", params=params).text
    stages = re.findall(r'data-stage="(\w+)"', html)
    assert stages == ["dense", "lexical", "fused"]
    # Each column lists its own top k, with the score of its stage shown.
    for stage in stages:
        column = html.split(f'data-stage="{stage}"', 1)[1].split("</section>", 1)[0]
        assert column.count("data-chunk=") == 5
        assert f'class="score own" title="rank 1">{stage}' in column
    filtered = admin.get(
        "/console/parts/search/results", params={**params, "filters": "team=it"}
    ).text
    from pgrag.store import inspection

    for chunk_id in set(re.findall(r'data-chunk="(\d+)"', filtered)):
        assert inspection.chunk(int(chunk_id))["metadata"]["team"] == "it"
    bad = admin.get("/console/parts/search/results", params={**params, "filters": "team"})
    assert bad.status_code == 200 and 'class="error"' in bad.text


def test_cancel_a_job_from_the_console(api: str, admin: KeyClient, own_broker: None) -> None:
    """A job that no worker takes (its broker is the test's own) is cancelled from the
    console, and says so."""
    from pgrag.ingest import jobs, pipeline

    job = pipeline.submit(EXAMPLES / "corpus", f"cancel_{uuid.uuid4().hex[:8]}", create=True)
    part = admin.post(f"/console/parts/jobs/{job.id}/cancel")
    assert part.status_code == 200 and 'data-state="cancelled"' in part.text
    assert jobs.get_job(job.id).state == "cancelled"
    stranger = KeyClient(api, ["ingest"], ["elsewhere"])
    assert stranger.post(f"/console/parts/jobs/{job.id}/cancel").status_code == 404
