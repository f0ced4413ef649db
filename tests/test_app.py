"""The web page (app.py): its API, through gradio_client, gives search_photos.py's ranking and
reference masks; bad input is a message on the page; searches queue; a video result is shown; a
shared machine's colleagues cannot read other searches, bypass the queue, reach it under another
host name, read outside the photo root or past the limits; a failed search leaves nothing behind;
and a real browser (headless Chromium) clicks points on the object, sees SAM2's mask at once,
searches and finds the gallery in the CLI's order. Traffic goes to loopback only."""
import csv
import io
import json
import os
import shutil
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
import search_photos
from media import moving_scenes, write_clip
from utils.errors import UserError
from utils.images import read_mask
from utils.photo_index import Embedded, PhotoIndex
from utils.dist import setup_run

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
POINTS = "150 120 1\n190 160 1\n20 20 0\n"  # two points on object_1 of the demo reference, one off it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(page, demo) -> tuple[str, object]:
    """The page served on a free loopback port in a thread: (url, server)."""
    port = free_port()
    server = app.serve(page, demo, "127.0.0.1", port, app.allowed_hosts("127.0.0.1", None))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "the page did not start"
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/", server


def page_args(tiny_sam2, root: Path, *extra):
    cfg, ckpt = tiny_sam2
    return app.get_args_parser().parse_args(
        ["--sam2_cfg", str(cfg), "--sam2_checkpoint", str(ckpt), "--device", "cpu", "--photos_root", str(root),
         "--output_dir", str(root / "outputs" / "app"), "--video_fps", "5", *map(str, extra)])


@pytest.fixture(scope="module")
def served(tiny_sam2, demo_photos, tmp_path_factory):
    """The page over a photo root holding the demo photos, a folder with a clip, and the page's own
    output folder; (url, page, root)."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree(demo_photos / "images", root / "photos")
    (root / "clips").mkdir()
    write_clip(root / "clips" / "clip.mp4", moving_scenes(6, 96, 128, seed=1))
    shutil.copy(demo_photos / "images" / "indoor" / "000.jpg", root / "clips" / "still.jpg")
    page, demo = app.page_from_args(page_args(tiny_sam2, root))
    url, server = start(page, demo)
    yield url, page, root
    server.should_exit = True


def cli_run(tiny_sam2, photos, reference: Path, prompt: str, out: Path, *extra, name="my_object", images=None):
    """search_photos.py on [reference with this prompt] and the photos: (its ranking, output folder)."""
    folder = out / "folder"
    (folder / "references").mkdir(parents=True)
    shutil.copyfile(reference, folder / "references" / f"{name}{reference.suffix}")
    (folder / "references" / f"{name}.txt").write_text(prompt)
    shutil.copytree(images or photos / "images", folder / "images")
    cfg, ckpt = tiny_sam2
    search_photos.main(search_photos.get_args_parser().parse_args(
        ["--data_path", str(folder), "--output_dir", str(out / "cli"), "--sam2_cfg", str(cfg), "--sam2_checkpoint",
         str(ckpt), "--device", "cpu", "--video_fps", "5", *extra]))
    if not (out / "cli" / "rankings.csv").is_file():
        return None, out / "cli"
    with open(out / "cli" / "rankings.csv") as f:
        return [(row["image"], float(row["score"])) for row in csv.DictReader(f)], out / "cli"


def api_search(url, reference=None, prompt="", folder="", photos=None, score="iou", name="my_object"):
    """The page's search through its API: (gallery, clips, downloads, ranking, skipped, message)."""
    return Client(url, verbose=False).predict(
        photo=handle_file(str(reference)) if reference else None, prompt=prompt, name=name, folder=str(folder),
        uploads=[handle_file(str(p)) for p in photos] if photos else None, score=score, api_name="/search")


def test_the_api_gives_the_cli_ranking(served, demo_photos, tiny_sam2, tmp_path):
    url, page, root = served
    reference, box = demo_photos / "references" / "object_1.jpg", "20 30 300 260"
    gallery, clips, downloads, ranking, skipped, status = api_search(url, reference, box, "photos")
    want, _ = cli_run(tiny_sam2, demo_photos, reference, box, tmp_path)
    assert [(r["image"], round(r["score"], 6)) for r in ranking] == [(image, round(s, 6)) for image, s in want]
    assert [item["caption"].split(". ", 1)[1].split(" —")[0] for item in gallery] == \
        [str(Path(image).relative_to("images")) for image, _ in want]
    assert sorted(Path(d).name for d in downloads) == ["masks.zip", "rankings.csv"] and not clips and not skipped
    assert status.startswith("Found in") and str(root) not in status  # no path of the server
    results = sorted((root / "outputs" / "app" / "searches").glob("*/results/metrics.json"))[-1]
    record = json.loads(results.read_text())  # each search keeps its outputs and their record
    assert record["score"] == "iou" and record["objects"]["my_object"]["searched"] == 6
    assert record["run"]["settings"]["sam2_checkpoint"] == str(tiny_sam2[1]) and record["run"]["search"]["references"] == 1


def test_the_preview_is_the_mask_the_cli_tracks(served, demo_photos, tiny_sam2, tmp_path):
    """Points: the page's preview (the API's "preview") equals the reference mask search_photos.py
    writes for the same prompt file, and the search uses exactly that prompt."""
    url, _, _ = served
    reference = demo_photos / "references" / "object_1.jpg"
    shown, mask, status = Client(url, verbose=False).predict(photo=handle_file(str(reference)), prompt=POINTS,
                                                             api_name="/preview")
    want, cli = cli_run(tiny_sam2, demo_photos, reference, POINTS, tmp_path / "refs", "--references_only")
    expected = read_mask(cli / "masks" / "my_object" / "references" / "my_object.png")
    assert want is None and expected.any() and not expected.all()
    assert np.array_equal(np.asarray(Image.open(mask)) > 0, expected) and "pixels" in status
    _, _, _, ranking, _, _ = api_search(url, reference, POINTS, "photos")
    cli_ranking, _ = cli_run(tiny_sam2, demo_photos, reference, POINTS, tmp_path / "search")
    assert [(r["image"], round(r["score"], 6)) for r in ranking] == [(i, round(s, 6)) for i, s in cli_ranking]


def test_uploaded_photos_and_videos_are_searched_and_a_video_is_shown(served, demo_photos):
    url, _, root = served
    uploads = sorted((demo_photos / "images").rglob("*.jpg"))[:2] + [root / "clips" / "clip.mp4"]
    gallery, clips, _, ranking, _, status = api_search(url, demo_photos / "references" / "object_0_2.jpg",
                                                       (demo_photos / "references" / "object_0_2.txt").read_text(),
                                                       photos=uploads)
    assert sorted(r["image"] for r in ranking) == [f"images/{k:05d}_{p.name}" for k, p in enumerate(uploads)]
    video = next(r for r in ranking if r["image"].endswith(".mp4"))
    assert video["found"] and "time" in video  # found in some frame, ranked by its best frame
    item = next(g for g in gallery if ".mp4" in g["caption"])
    assert "best at" in item["caption"] and "present" in item["caption"]
    # the clip of its frames sampled at 5 per second (0, 0.2 and 0.4 s of a 0.6 s clip), animated
    assert len(clips) == 1 and Image.open(clips[0]["image"]).n_frames == 3


@pytest.mark.parametrize("case, named", [
    ("no reference", "no reference"),
    ("box outside the photo", "not inside"),
    ("a line that is neither box nor point", "neither a box"),
    ("reference that is not an image", "not a photo in a format this project reads"),
    ("an SVG reference", "not a photo in a format this project reads"),
    ("empty folder", "no photo or video to search"),
    ("folder that does not exist", "folder not found"),
    ("folder outside the photo root", "cannot be searched from here"),
    ("the page's own output folder", "cannot be searched from here"),
])
def test_bad_input_is_a_message_on_the_page(case, named, served, demo_photos, tmp_path):
    url, _, root = served
    reference, prompt, folder = demo_photos / "references" / "object_0.jpg", "10 10 60 60", "photos"
    if case == "no reference":
        reference = None
    elif case == "box outside the photo":
        prompt = "10 10 5000 60"
    elif case == "a line that is neither box nor point":
        prompt = "10 10"
    elif case == "reference that is not an image":
        reference = tmp_path / "notes.jpg"
        reference.write_text("not a photo")
    elif case == "an SVG reference":
        reference = tmp_path / "drawing.svg"
        reference.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    elif case == "empty folder":
        (root / "empty").mkdir(exist_ok=True)
        folder = "empty"
    elif case == "folder that does not exist":
        folder = "nowhere"
    elif case == "folder outside the photo root":
        folder = str(tmp_path)
    else:
        folder = "outputs/app/searches"
    gallery, _, _, ranking, _, status = api_search(url, reference, prompt, folder)
    assert not gallery and not ranking and named in status and "Traceback" not in status
    assert str(root) not in status and str(tmp_path) not in status  # messages name files, not server paths


def test_a_second_search_waits_in_the_queue(served, demo_photos):
    """Two searches at once, for two objects: each gets its own ranking (one runs, the other
    waits; nothing is mixed)."""
    url, _, _ = served
    prompt = lambda name: (demo_photos / "references" / f"{name}_2.txt").read_text()
    alone = {name: api_search(url, demo_photos / "references" / f"{name}_2.jpg", prompt(name), "photos")[3]
             for name in ("object_0", "object_1")}
    client = Client(url, verbose=False)
    jobs = {name: client.submit(photo=handle_file(str(demo_photos / "references" / f"{name}_2.jpg")),
                                prompt=prompt(name), name=name, folder="photos", api_name="/search")
            for name in ("object_0", "object_1")}
    for name, job in jobs.items():
        assert job.result(timeout=300)[3] == alone[name]


def test_the_page_shows_the_search_s_progress(served, demo_photos):
    url, _, _ = served
    job = Client(url, verbose=False).submit(photo=handle_file(str(demo_photos / "references" / "object_0_2.jpg")),
                                            prompt="10 10 200 200", folder="photos", api_name="/search")
    seen = set()
    while not job.done():
        seen |= {(p.desc, p.index, p.length) for p in job.status().progress_data or []}
        time.sleep(0.01)
    assert job.result()[5].startswith("Found in")
    assert any(desc == "photos" and length == 6 for desc, _, length in seen), seen


# -- a shared machine ---------------------------------------------------------------------------

def test_another_search_s_files_are_not_served(served, demo_photos):
    url, _, root = served
    api_search(url, demo_photos / "references" / "object_0_2.jpg", "10 10 200 200", "photos")
    earlier = sorted((root / "outputs" / "app" / "searches").glob("*/results/rankings.csv"))[0]
    for path in (earlier, earlier.parent / "metrics.json", demo_photos / "images" / "indoor" / "000.jpg"):
        assert httpx.get(f"{url}gradio_api/file={path}").status_code == 403


def test_the_queue_is_the_only_way_in(served):
    url, _, _ = served
    response = httpx.post(f"{url}gradio_api/run/search", json={"data": [None, "10 10 60 60", None, None, "x",
                                                                          "photos", None, "iou"]})
    assert response.status_code in (403, 404) and "Found in" not in response.text


def test_another_host_name_is_refused(served):
    """A page reached through a rebound DNS name: its Host header is not a name the page serves."""
    url, _, _ = served
    assert httpx.get(url, headers={"Host": "attacker.example"}).status_code == 400
    assert httpx.get(url).status_code == 200


def test_a_link_out_of_the_root_is_not_read(served, demo_photos, tmp_path):
    url, _, root = served
    folder = root / "linked"
    folder.mkdir(exist_ok=True)
    shutil.copy(demo_photos / "images" / "indoor" / "000.jpg", folder / "inside.jpg")
    secret = tmp_path / "secret.jpg"
    shutil.copy(demo_photos / "images" / "indoor" / "002.jpg", secret)
    (folder / "outside.jpg").unlink(missing_ok=True)
    (folder / "outside.jpg").symlink_to(secret)
    _, _, _, ranking, skipped, _ = api_search(url, demo_photos / "references" / "object_0_2.jpg", "10 10 200 200",
                                              "linked")
    assert [r["image"] for r in ranking] == ["images/inside.jpg"]
    assert "images/outside.jpg" in skipped and str(tmp_path) not in skipped


def test_limits(tiny_sam2, demo_photos, tmp_path):
    """An upload over --max_upload_mb is refused, a photo over --max_megapixels is refused from its
    header (a truncated one: decoding would have said so), more references than allowed too."""
    root = tmp_path / "root"
    shutil.copytree(demo_photos / "images", root / "photos")
    big = root / "big.jpg"  # 1,200 x 1,000 pixels claimed, its pixel data cut short
    Image.new("RGB", (1200, 1000), (200, 30, 30)).save(big, quality=95)
    big.write_bytes(big.read_bytes()[:2000])
    page, demo = app.page_from_args(page_args(tiny_sam2, root, "--max_upload_mb", 1, "--max_megapixels", 1,
                                              "--max_references", 1))
    url, server = start(page, demo)
    try:
        heavy = root / "heavy.jpg"
        heavy.write_bytes(os.urandom(3 * 2**20))
        with pytest.raises(Exception):  # Gradio refuses the upload itself
            api_search(url, heavy, "10 10 60 60", "photos")
        _, _, _, _, _, status = api_search(url, big, "10 10 60 60", "photos")
        assert "larger than the limit of 1,000,000 pixels" in status and "big.jpg" in status
        references = [page.shot(str(demo_photos / "references" / "object_0.jpg"), "10 10 60 60", None, None)]
        status = page.add_reference(references, str(demo_photos / "references" / "object_1.jpg"), "10 10 60 60",
                                    None, None)[2]
        assert "more than 1 references" in status
    finally:
        server.should_exit = True


def test_a_failed_search_leaves_nothing_behind(served, demo_photos, tiny_sam2, tmp_path, monkeypatch):
    """A search that fails after its images were encoded: nothing stays cached, and the next
    search's numbers equal a fresh process's."""
    url, page, root = served
    import utils.photo_search

    searches = root / "outputs" / "app" / "searches"
    before = set(searches.iterdir()) if searches.is_dir() else set()
    original = utils.photo_search.found_entry

    def failing(*args):
        raise UserError("disk trouble", "found.json", "try again")

    monkeypatch.setattr(utils.photo_search, "found_entry", failing)
    reference, box = demo_photos / "references" / "object_1.jpg", "20 30 300 260"
    *_, status = api_search(url, reference, box, "photos")
    assert "disk trouble" in status and page.models.sam2.engine.cached == []
    assert set(searches.iterdir()) == before  # nor its folder
    monkeypatch.setattr(utils.photo_search, "found_entry", original)
    _, _, _, ranking, _, _ = api_search(url, reference, box, "photos")
    want, _ = cli_run(tiny_sam2, demo_photos, reference, box, tmp_path)  # a fresh process
    assert [(r["image"], r["score"]) for r in ranking] == [(i, pytest.approx(s, abs=1e-6)) for i, s in want]


def test_old_searches_are_removed(served, demo_photos):
    url, page, root = served
    api_search(url, demo_photos / "references" / "object_0_2.jpg", "10 10 200 200", "photos")
    searches = root / "outputs" / "app" / "searches"
    old = sorted(searches.iterdir())[0]
    os.utime(old, (time.time() - 2 * 86400,) * 2)  # older than --keep_hours (24)
    page.sweep()
    assert not old.exists() and any(searches.iterdir())


def test_two_index_updates_of_one_folder_at_once_give_one_index(tmp_path):
    stats = {f"images/{k}.jpg": (k, k) for k in range(6)}
    embedded = []

    def embed(files, desc):
        embedded.extend(files)
        time.sleep(0.2)
        return Embedded(files, [-1] * len(files), np.ones((len(files), 4), np.float32), [])

    run = setup_run("cpu")
    index = lambda: PhotoIndex(tmp_path / "index", {"model": "m"})
    threads = [threading.Thread(target=index().update, args=(stats, embed, 4, run)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rows, _ = index().load()
    assert sorted(embedded) == sorted(stats) and [r for r, _ in rows] == sorted(stats)  # each file embedded once


# -- a person with a browser --------------------------------------------------------------------

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
                 "--window-size=1400,2400"):
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


def test_a_person_searches_with_a_browser(served, demo_photos, tiny_sam2, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url, _, root = served
    driver = browser()
    try:
        driver.get(url)
        find = lambda css: driver.find_elements(By.CSS_SELECTOR, css)
        status = lambda: driver.find_element(By.ID, "status").text

        def status_shows(*words, timeout=120):  # the page's message holds these words (not "processing | 0.1s")
            try:
                return wait_for(lambda: all(word in status() for word in words), timeout)
            except AssertionError:
                raise AssertionError(f"the page's message never held {words}: it says {status()!r}") from None

        def search(*words):  # Gradio skips a click while the last search's stream is still closing: click again
            deadline = time.monotonic() + 300
            while True:
                driver.find_element(By.ID, "search").click()
                try:
                    return status_shows(*words, timeout=min(30, deadline - time.monotonic()))
                except AssertionError:
                    if time.monotonic() >= deadline:
                        raise

        wait_for(lambda: find("#reference input[type=file]") and find("#search") and find("#status"))
        driver.find_element(By.ID, "search").click()  # nothing given yet: a message, no traceback
        status_shows("no reference")

        reference = demo_photos / "references" / "object_1.jpg"
        find("#reference input[type=file]")[0].send_keys(str(reference))
        wait_for(lambda: [i for i in find("#preview img") if i.get_attribute("naturalWidth") != "0"])
        width, height = Image.open(reference).size

        def offset(x, y):  # photo pixel (x, y) from the centre of the picture drawn (object-fit: contain)
            image = find("#preview img")[0]
            shown = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];",
                                          image)
            scale = min(shown[0] / width, shown[1] / height)
            return image, (int((x + 0.5 - width / 2) * scale), int((y + 0.5 - height / 2) * scale))

        def previewed(summary):  # the preview of the prompt so far is shown: the picture holds still
            status_shows(f"({summary})")

        def click(x, y, summary, context=False):
            image, at = offset(x, y)
            chain = ActionChains(driver).move_to_element_with_offset(image, *at)
            (chain.context_click() if context else chain.click()).perform()
            previewed(summary)

        mask = read_mask(demo_photos / "references" / "object_1.png")
        ys, xs = mask.nonzero()
        prompt_box = lambda: find("#prompt textarea")[0].get_attribute("value")
        image, start = offset(int(xs.min()), int(ys.min()))
        _, end = offset(int(xs.max()), int(ys.max()))
        ActionChains(driver).move_to_element_with_offset(image, *start).click_and_hold().move_by_offset(
            end[0] - start[0], end[1] - start[1]).release().perform()  # a drag draws the box
        box = [float(v) for v in wait_for(lambda: len(prompt_box().split()) == 4 and prompt_box()).split()]
        assert all(abs(got - want) <= 2 for got, want in zip(box, (xs.min(), ys.min(), xs.max(), ys.max()))), box
        previewed("box")
        driver.find_element(By.ID, "clear").click()
        wait_for(lambda: prompt_box() == "" and status() == "")
        inside = [(int(xs[k]), int(ys[k])) for k in (len(xs) // 3, 2 * len(xs) // 3)]
        outside = (5, 5)
        click(*inside[0], "1 point on it")
        click(*inside[1], "2 points on it")
        click(*outside, "3 points on it")  # a stray click, undone
        driver.find_element(By.ID, "undo").click()
        previewed("2 points on it")
        click(*outside, "2 points on it, 1 not", context=True)  # a right click: a point not on the object
        prompt = prompt_box()
        lines = [line.split() for line in prompt.splitlines()]
        assert [line[2] for line in lines] == ["1", "1", "0"]
        for (x, y), line in zip([*inside, outside], lines):
            assert abs(float(line[0]) - x) <= 2 and abs(float(line[1]) - y) <= 2, (prompt, inside)
        source = wait_for(lambda: [i.get_attribute("src") for i in find("#reference_mask img")
                                   if i.get_attribute("naturalWidth") not in (None, "0")])[0]
        shown = np.asarray(Image.open(io.BytesIO(httpx.get(source).content))) > 0
        _, cli = cli_run(tiny_sam2, demo_photos, reference, prompt, tmp_path / "refs", "--references_only")
        assert np.array_equal(shown, read_mask(cli / "masks" / "my_object" / "references" / "my_object.png"))

        find("#folder textarea, #folder input")[0].send_keys("photos")
        search("Found in")
        captions = wait_for(lambda: driver.execute_script(
            "return [...document.querySelectorAll('#results .caption-label, #results figcaption')]"
            ".map(e => e.textContent.trim()).filter(t => t)"))
        driver.save_screenshot(str(tmp_path / "app.png"))
        if os.environ.get("APP_SCREENSHOT"):  # the README's picture: APP_SCREENSHOT=docs/app.png
            shutil.copyfile(tmp_path / "app.png", os.environ["APP_SCREENSHOT"])

        folder = find("#folder textarea, #folder input")[0]  # a folder with a video: its best frame and its clip
        folder.clear()
        folder.send_keys("clips")
        search("videos in the folder", "1 videos")
        video_captions = wait_for(lambda: [c for c in driver.execute_script(
            "return [...document.querySelectorAll('#results .caption-label, #results figcaption')]"
            ".map(e => e.textContent.trim())") if "clip.mp4" in c])
        assert "best at" in video_captions[0] and "present" in video_captions[0]
        assert wait_for(lambda: [i for i in find("#clips img") if i.get_attribute("naturalWidth") not in (None, "0")])
    finally:
        driver.quit()
    want, _ = cli_run(tiny_sam2, demo_photos, reference, prompt, tmp_path / "cli_folder")
    assert [caption.split(". ", 1)[1].split(" —")[0] for caption in captions] == \
        [str(Path(image).relative_to("images")) for image, _ in want]
    assert (tmp_path / "app.png").stat().st_size > 10_000


def test_a_search_stops_at_its_time_limit_or_when_cancelled(served, demo_photos, monkeypatch):
    url, page, _ = served
    reference, box = demo_photos / "references" / "object_0_2.jpg", "10 10 200 200"
    monkeypatch.setattr(page, "limits", replace(page.limits, seconds=0))
    *_, status = api_search(url, reference, box, "photos")
    assert "took longer than the page's limit of 0 s" in status
    monkeypatch.undo()
    interrupt = page.interrupt

    def held(session):  # the search waits at its first check until it is cancelled (or 30 s pass)
        check = interrupt(session)
        return lambda: page.cancelled[session].wait(30) and check()

    monkeypatch.setattr(page, "interrupt", held)
    client = Client(url, verbose=False)
    job = client.submit(photo=handle_file(str(reference)), prompt=box, folder="photos", api_name="/search")
    wait_for(lambda: client.session_hash in page.cancelled, timeout=60, every=0.01)
    assert page.cancel(type("Request", (), {"session_hash": client.session_hash})()) == "Cancelling the search..."
    assert "search cancelled" in job.result(timeout=300)[5]
    assert page.models.sam2.engine.cached == []
