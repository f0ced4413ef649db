"""The web page (app.py): its API, through gradio_client, gives search_photos.py's ranking; bad input
is a message on the page; searches queue; and a real browser (headless Chromium) uploads a
reference, draws its box with the mouse, uploads photos, presses Search and finds the gallery in
the CLI's order."""
import csv
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
import search_photos
from utils.loaders.common import read_mask

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def photos(demo_photos):
    return demo_photos


@pytest.fixture(scope="module")
def server(tiny_sam2, tmp_path_factory):
    """The page, served on a free local port; (url, output folder)."""
    cfg, ckpt = tiny_sam2
    out, port = tmp_path_factory.mktemp("app"), free_port()
    page, demo = app.page_from_args(app.get_args_parser().parse_args(
        ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--output_dir", str(out),
         "--port", str(port)]))
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(out)])
    yield f"http://127.0.0.1:{port}/", out
    demo.close()


def cli_ranking(tiny_sam2, photos, reference: Path, box: str, out: Path, name="my_object") -> list[tuple[str, float]]:
    """search_photos.py's ranking of the photos for this reference and box."""
    folder = out / "folder"
    (folder / "references").mkdir(parents=True)
    shutil.copyfile(reference, folder / "references" / f"{name}.jpg")
    (folder / "references" / f"{name}.txt").write_text(box + "\n")
    shutil.copytree(photos / "images", folder / "images")
    cfg, ckpt = tiny_sam2
    search_photos.main(search_photos.get_args_parser().parse_args(
        ["--data_path", str(folder), "--output_dir", str(out / "cli"), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
         str(ckpt), "--device", "cpu"]))
    with open(out / "cli" / "rankings.csv") as f:
        return [(row["image"], float(row["score"])) for row in csv.DictReader(f)]


def api_search(url, reference, box, folder, name="my_object", photos=None, score="iou"):
    client = Client(url, verbose=False)
    return client.predict(handle_file(str(reference)) if reference else None, box, None, None, name,
                          str(folder) if folder else "", [handle_file(str(p)) for p in photos] if photos else None,
                          score, api_name="/search")


def test_the_api_gives_the_cli_ranking(server, photos, tiny_sam2, tmp_path):
    url, _ = server
    reference, box = photos / "references" / "object_1.jpg", "20 30 300 260"
    gallery, downloads, ranking, status = api_search(url, reference, box, photos / "images")
    want = cli_ranking(tiny_sam2, photos, reference, box, tmp_path)
    assert [(r["image"], round(r["score"], 6)) for r in ranking] == [(image, round(s, 6)) for image, s in want]
    assert [item["caption"].split(". ", 1)[1].split(" —")[0] for item in gallery] == \
        [str(Path(image).relative_to("images")) for image, _ in want]
    assert sorted(Path(d).name for d in downloads) == ["masks.zip", "rankings.csv"]
    assert status.startswith("Found in")
    results = Path(status.rsplit("Results in ", 1)[1])  # each search keeps its outputs and their record
    record = json.loads((results / "metrics.json").read_text())
    assert record["score"] == "iou" and record["objects"]["my_object"]["searched"] == 6
    assert record["run"]["settings"]["sam2_checkpoint"] == str(tiny_sam2[1]) and record["run"]["search"]["references"] == 1


def test_uploaded_photos_are_searched_too(server, photos):
    url, _ = server
    uploads = sorted((photos / "images").rglob("*.jpg"))[:3]
    _, _, ranking, _ = api_search(url, photos / "references" / "object_0_2.jpg",
                                  (photos / "references" / "object_0_2.txt").read_text().strip(), None,
                                  photos=uploads)
    assert sorted(r["image"] for r in ranking) == [f"images/{k:05d}_{p.name}" for k, p in enumerate(uploads)]


@pytest.mark.parametrize("case, named", [
    ("no reference", "no reference"),
    ("box outside the photo", "not inside"),
    ("no box", "no box, painted mask or mask file"),
    ("reference that is not an image", "not a readable image"),
    ("empty folder", "no photo to search"),
    ("folder that does not exist", "folder not found"),
])
def test_bad_input_is_a_message_on_the_page(case, named, server, photos, tmp_path):
    url, _ = server
    reference, box, folder = photos / "references" / "object_0.jpg", "10 10 60 60", photos / "images"
    if case == "no reference":
        reference = None
    elif case == "box outside the photo":
        box = "10 10 5000 60"
    elif case == "no box":
        box = ""
    elif case == "reference that is not an image":
        reference = tmp_path / "notes.jpg"
        reference.write_text("not a photo")
    elif case == "empty folder":
        folder = tmp_path / "empty"
        folder.mkdir()
    else:
        folder = tmp_path / "nowhere"
    gallery, downloads, ranking, status = api_search(url, reference, box, folder)
    assert not gallery and not ranking and named in status and "Traceback" not in status


def test_a_second_search_waits_in_the_queue(server, photos):
    """Two searches at once, for two objects: each gets its own ranking (one runs, the other
    waits; nothing is mixed)."""
    url, _ = server
    alone = {}
    for name in ("object_0", "object_1"):
        _, _, ranking, _ = api_search(url, photos / "references" / f"{name}_2.jpg",
                                      (photos / "references" / f"{name}_2.txt").read_text().strip(), photos / "images")
        alone[name] = ranking
    client = Client(url, verbose=False)
    jobs = {name: client.submit(handle_file(str(photos / "references" / f"{name}_2.jpg")),
                                (photos / "references" / f"{name}_2.txt").read_text().strip(), None, None, name,
                                str(photos / "images"), None, "iou", api_name="/search")
            for name in ("object_0", "object_1")}
    for name, job in jobs.items():
        assert job.result(timeout=300)[2] == alone[name]


def test_the_page_shows_the_search_s_progress(server, photos):
    """The progress bar: the scheduler's bar over the photos, as the page's client sees it."""
    url, _ = server
    job = Client(url, verbose=False).submit(
        handle_file(str(photos / "references" / "object_0_2.jpg")), "10 10 200 200", None, None, "object_0",
        str(photos / "images"), None, "iou", api_name="/search")
    seen = set()
    while not job.done():
        seen |= {(p.desc, p.index, p.length) for p in job.status().progress_data or []}
        time.sleep(0.01)
    assert job.result()[3].startswith("Found in")
    assert any(desc == "photos" and length == 6 for desc, _, length in seen), seen


def browser():
    """Headless Chromium through Debian's chromedriver, or None where they are not installed (the
    CI installs them, and makes their absence a failure)."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        if os.environ.get("REQUIRE_BROWSER"):
            pytest.fail("Chromium is required here: apt-get install chromium chromium-driver")
        pytest.skip("no browser: `apt-get install chromium chromium-driver` (as root) runs the browser tests")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,2200"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def wait_for(condition, timeout=120, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("the page did not get there in time")


def test_a_person_searches_with_a_browser(server, photos, tiny_sam2, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, _ = server
    driver = browser()
    try:
        driver.get(url)
        find = lambda css: driver.find_elements(By.CSS_SELECTOR, css)
        wait_for(lambda: find("#reference input[type=file]"))
        driver.find_element(By.ID, "search").click()  # nothing given yet: a message, no traceback
        assert "no reference" in wait_for(lambda: driver.find_element(By.ID, "status").text)

        reference = photos / "references" / "object_1.jpg"
        find("#reference input[type=file]")[0].send_keys(str(reference))
        image = wait_for(lambda: [i for i in find("#preview img") if i.get_attribute("naturalWidth") != "0"])[0]
        width, height = Image.open(reference).size
        mask = read_mask(photos / "references" / "object_1.png")  # the object's corners, in the photo's pixels
        ys, xs = mask.nonzero()
        corners = [(int(xs.min()), int(ys.min())), (int(xs.max()), int(ys.max()))]
        for x, y in corners:  # the offsets of a pixel from the displayed image's centre
            rect = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                         "return [r.width, r.height];", image)
            ActionChains(driver).move_to_element_with_offset(
                image, int((x + 0.5) * rect[0] / width - rect[0] / 2), int((y + 0.5) * rect[1] / height - rect[1] / 2)
            ).click().perform()
            time.sleep(0.5)
        box = wait_for(lambda: len(find("#box textarea")[0].get_attribute("value").split()) == 4 and
                       find("#box textarea")[0].get_attribute("value"))
        x1, y1, x2, y2 = map(float, box.split())
        want_box = (*corners[0], corners[1][0] + 1, corners[1][1] + 1)
        assert all(abs(got - want) <= 2 for got, want in zip((x1, y1, x2, y2), want_box)), (box, want_box)

        uploads = sorted((photos / "images").rglob("*.jpg"))
        find("#uploads input[type=file]")[0].send_keys("\n".join(map(str, uploads)))
        wait_for(lambda: len(find("#uploads tr, #uploads .file")) >= len(uploads) or
                 all(p.name in driver.find_element(By.ID, "uploads").text for p in uploads))
        driver.find_element(By.ID, "search").click()
        wait_for(lambda: driver.find_element(By.ID, "status").text.startswith("Found in"), timeout=300)
        captions = wait_for(lambda: driver.execute_script(
            "return [...document.querySelectorAll('#results .caption-label, #results figcaption')]"
            ".map(e => e.textContent.trim()).filter(t => t)"))
        driver.save_screenshot(str(tmp_path / "app.png"))
        if os.environ.get("APP_SCREENSHOT"):  # the README's picture: APP_SCREENSHOT=docs/app.png
            shutil.copyfile(tmp_path / "app.png", os.environ["APP_SCREENSHOT"])
    finally:
        driver.quit()
    want = cli_ranking(tiny_sam2, photos, reference, box, tmp_path / "cli_folder")
    names = [caption.split(". ", 1)[1].split(" —")[0] for caption in captions]
    assert [name.split("_", 1)[1] for name in names] == [Path(image).name for image, _ in want]
    assert (tmp_path / "app.png").stat().st_size > 10_000
