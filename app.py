"""Find your object in your photos and videos, on a web page: the search of search_photos.py, with a browser.

    python app.py --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt
    python app.py ... --dinov2 facebook/dinov2-small --shortlist 100     # large folders: a DINOv2 shortlist
    python app.py ... --host 0.0.0.0 --photos_root /data/photos           # for colleagues on the network

Serves a Gradio page on http://127.0.0.1:7860. Upload a photo of your object and show it: click on
it (a point on the object; a right click, or the toggle, for a point not on it), drag a box around
it, or paint over it, or upload its mask; the mask SAM2 makes of your clicks appears at once, and
is exactly what the search tracks. "Add this reference" keeps it and takes another photo of the
same object (k-shot). Then give a folder under --photos_root or upload photos and videos, press
Search and watch the progress bar. The results are the photos and videos ranked by SAM2's score,
each with its mask where the object is found (a video: its best frame, the times where the object
is present, and a clip of its frames with the masks), and downloads of rankings.csv and the masks.

A shared machine is the expected case (README "On a web page"): the page reads only under
--photos_root (default: the current folder), links resolved, and never its own --output_dir; it
serves only files it made for a search, under names nobody can guess; the queue is the only way to
run a search (one at a time, --queue_size waiting, --time_limit each, a Cancel button); requests
for another host name than the served ones are refused (DNS rebinding); uploads, files, pixels and
references are limited by flags; searches are removed after --keep_hours or beyond
--max_storage_mb. Each search writes its folder (the "Your own photos" layout, search_photos.py's
outputs in results/, their metrics.json with the page's run record) under <output_dir>/searches/;
a folder's DINOv2 photo index is kept in <output_dir>/index/. The page's work is
utils/page.py; this file lays it out and serves it. It calls the same code as search_photos.py:
the same prompts and checks (utils/prompts.py), the same search (utils/photo_search.py), the same
metrics writer.
"""
import socket
from pathlib import Path

import gradio as gr
import uvicorn
from fastapi import FastAPI
from starlette.middleware.trustedhost import TrustedHostMiddleware

from utils import dinov2
from utils.cli import (CliParser, add_sam2_args, add_search_args, positive_int, run_cli, run_record, sam2_run,
                       search_options, setup)
from utils.errors import UserError
from utils.images import PHOTO_SUFFIXES
from utils.page import LIMIT_FLAGS, Limits, PhotoSearchPage
from utils.photo_search import Models
from utils.pseudo_video import SCORES
from utils.video import VIDEO_SUFFIXES

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
# Clicks on the reference photo: a click adds a point, a drag draws a box, a right click adds a
# point not on the object. Each goes to the page through the hidden #click_event box, in the
# displayed image's natural pixels (the image is drawn with object-fit: contain).
CLICKS_JS = """
<script>
(() => {
  let start = null;
  const shown = () => document.querySelector('#preview img');
  const natural = (img, e) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
    const left = r.left + (r.width - img.naturalWidth * scale) / 2;
    const top = r.top + (r.height - img.naturalHeight * scale) / 2;
    return [(e.clientX - left) / scale, (e.clientY - top) / scale, scale];
  };
  const send = (event) => {
    const box = document.querySelector('#click_event textarea, #click_event input');
    box.value = JSON.stringify({...event, nonce: Math.random()});
    box.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const onPhoto = (e) => e.target === shown();
  document.addEventListener('mousedown', (e) => {
    if (onPhoto(e) && e.button === 0) { start = natural(shown(), e); e.preventDefault(); }
  });
  document.addEventListener('mouseup', (e) => {
    const img = shown();
    if (!start || !img || e.button !== 0) { start = null; return; }
    const [x, y, scale] = natural(img, e), size = [img.naturalWidth, img.naturalHeight];
    const [x0, y0] = start;
    start = null;
    if (Math.hypot(x - x0, y - y0) * scale < 6) send({kind: 'point', x: x0, y: y0, size, button: 'left'});
    else send({kind: 'box', x: x0, y: y0, x2: x, y2: y, size});
  });
  document.addEventListener('contextmenu', (e) => {
    if (!onPhoto(e)) return;
    e.preventDefault();
    const [x, y] = natural(shown(), e);
    send({kind: 'point', x, y, size: [shown().naturalWidth, shown().naturalHeight], button: 'right'});
  });
})();
</script>
"""
CSS = "#click_event {display: none !important}"


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_sam2_args(parser)
    add_search_args(parser, visualize=False)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--allowed_hosts", nargs="+", default=None,
                        help="host names a browser may use to reach the page (default: loopback names, --host, and "
                             "this machine's name and addresses); other Host headers are refused")
    parser.add_argument("--photos_root", default=".",
                        help="every folder and file a search reads must be under it, links resolved (default: the "
                             "current folder); --output_dir is never searched")
    parser.add_argument("--output_dir", default="outputs/app", help="searches and photo indexes")
    limits = Limits()
    for flag, field, what in LIMIT_FLAGS:
        parser.add_argument(f"--{flag}", type=float if field == "keep_hours" else positive_int,
                            default=getattr(limits, field), help=what)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def build_page(page: PhotoSearchPage, dinov2_shortlist: bool) -> gr.Blocks:
    options = page.options
    media = ["image", "video", *PHOTO_SUFFIXES, *VIDEO_SUFFIXES]
    with gr.Blocks(title="Find your object in your photos", analytics_enabled=False,
                   delete_cache=(3600, int(page.limits.keep_hours * 3600))) as demo:
        gr.Markdown("# Find your object in your photos and videos\nSAM2 looks for the object of your reference "
                    "photo in every photo and video and segments it where it is found.")
        references = gr.State([])
        with gr.Row():
            with gr.Column():
                photo = gr.File(file_types=["image", *PHOTO_SUFFIXES], label="1. A photo of your object",
                                elem_id="reference")
                shown = gr.Image(label="click on your object (right click: not on it), or drag a box around it",
                                 interactive=False, elem_id="preview", buttons=[])
                with gr.Row():
                    negative = gr.Checkbox(label="clicks are points NOT on the object", elem_id="negative")
                    undo = gr.Button("Undo", size="sm", elem_id="undo")
                    clear = gr.Button("Clear", size="sm", elem_id="clear")
                prompt = gr.Textbox(label="its prompt: a box 'x1 y1 x2 y2' and points 'x y 1' (on it) or 'x y 0' "
                                    "(filled by your clicks)", lines=3, elem_id="prompt")
                click_event = gr.Textbox(elem_id="click_event")
                mask = gr.Image(label="the mask SAM2 tracks", interactive=False, elem_id="reference_mask",
                                image_mode="L", format="png", buttons=[])
                with gr.Accordion("...or its mask", open=False):
                    painted = gr.ImageEditor(label="paint over your object", type="numpy", sources=(),
                                             brush=gr.Brush(colors=["#ff3030"], default_size=20),
                                             transforms=(), elem_id="paint")
                    mask_upload = gr.File(file_types=["image"], label="or upload its mask (white on black, the "
                                          "photo's size)", elem_id="mask_upload")
                name = gr.Textbox(value="my_object", label="its name", elem_id="name")
                add = gr.Button("Add this reference (more photos of the object: better results)", elem_id="add")
                added = gr.Gallery(label="references", columns=4, height=160, elem_id="references")
            with gr.Column():
                folder = gr.Textbox(label="2. A folder of photos and videos under the page's photo folder",
                                    elem_id="folder")
                uploads = gr.File(file_count="multiple", file_types=media, label="...or upload photos and videos",
                                  elem_id="uploads")
                score = gr.Dropdown(list(SCORES), value=options.score, label="ranked by the SAM2 score")
                gr.Markdown(f"A DINOv2 shortlist of {options.shortlist} photos and videos goes to SAM2"
                            if dinov2_shortlist else "Every photo and video goes to SAM2 (start the page with --dinov2 "
                            "for large folders)")
                with gr.Row():
                    go = gr.Button("Search", variant="primary", elem_id="search")
                    stop = gr.Button("Cancel", elem_id="cancel")
                status = gr.Markdown(elem_id="status")
        results = gr.Gallery(label="photos and videos, best first (click one to see it large)", columns=6,
                             height="auto", elem_id="results")
        clips = gr.Gallery(label="videos where the object is found: their frames with the masks", columns=3,
                           height="auto", elem_id="clips")
        files = gr.File(label="downloads: rankings.csv and the masks", file_count="multiple", elem_id="downloads")
        with gr.Accordion("skipped files", open=False):
            skipped = gr.Markdown(elem_id="skipped")
        with gr.Accordion("ranking (JSON)", open=False):
            ranking = gr.JSON(elem_id="ranking")

        light = {"concurrency_limit": 2, "concurrency_id": "light", "api_visibility": "private"}
        private = {"queue": False, "api_visibility": "private"}
        previewed = {"concurrency_limit": 1, "concurrency_id": "preview", "trigger_mode": "always_last"}
        photo.upload(page.reference_loaded, photo, [shown, painted, prompt, mask, status], **light)
        click_event.change(page.clicked, [photo, prompt, negative, click_event], prompt, **private)
        undo.click(lambda text: "\n".join(text.splitlines()[:-1]), prompt, prompt, **private)
        clear.click(lambda: "", None, prompt, **private)
        prompt.change(page.preview, [photo, prompt, painted, mask_upload], [shown, mask, status], api_name="preview",
                      **previewed)
        for source in (painted.change, mask_upload.change):
            source(page.preview, [photo, prompt, painted, mask_upload], [shown, mask, status],
                   api_visibility="private", **previewed)
        add.click(page.add_reference, [references, photo, prompt, painted, mask_upload],
                  [references, added, status, photo, prompt], **light)
        go.click(page.search, [references, photo, prompt, painted, mask_upload, name, folder, uploads, score],
                 [results, clips, files, ranking, skipped, status], api_name="search", concurrency_id="sam2",
                 concurrency_limit=1)
        stop.click(page.cancel, None, status, **private)
    return demo.queue(api_open=False, max_size=page.limits.queue, default_concurrency_limit=1)


def allowed_hosts(host: str, given: list[str] | None) -> list[str]:
    """Host names a request may carry: as given, else loopback, --host and this machine's names."""
    if given:
        return given
    names = {*LOOPBACK_HOSTS, socket.gethostname(), socket.getfqdn()}
    if host not in ("0.0.0.0", "::"):
        names.add(host)
    else:
        try:
            names.update(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            pass
    return sorted(names)


def page_from_args(args) -> tuple[PhotoSearchPage, gr.Blocks]:
    run = setup(args, distributed=False)
    models = Models(sam2_run(args, run), dinov2.load_dinov2(args.dinov2, run.device, run.amp) if args.dinov2 else None,
                    args.dinov2)
    photos_root = Path(args.photos_root).expanduser().resolve()
    if not photos_root.is_dir():
        raise UserError("folder not found", f"--photos_root {args.photos_root}",
                        "give the folder that holds the photos")
    limits = Limits(**{field: getattr(args, flag) for flag, field, _ in LIMIT_FLAGS})
    page = PhotoSearchPage(models, search_options(args), run, Path(args.output_dir), photos_root,
                           run_record(args, run), limits)
    return page, build_page(page, args.dinov2 is not None)


def web_app(page: PhotoSearchPage, demo: gr.Blocks, hosts: list[str]) -> FastAPI:
    """The page as an ASGI app: requests for other host names refused, uploads limited, no file
    served but those a search made (Gradio's cache)."""
    app = FastAPI()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts)
    return gr.mount_gradio_app(app, demo, path="", max_file_size=f"{page.limits.upload_mb}mb", allowed_paths=[],
                               head=CLICKS_JS, css=CSS, show_error=False, footer_links=[])


def serve(page: PhotoSearchPage, demo: gr.Blocks, host: str, port: int, hosts: list[str]) -> uvicorn.Server:
    """The page's server (run it with `.run()`, or in a thread)."""
    return uvicorn.Server(uvicorn.Config(web_app(page, demo, hosts), host=host, port=port, log_level="warning"))


def main(args) -> None:
    page, demo = page_from_args(args)
    page.sweep()
    hosts = allowed_hosts(args.host, args.allowed_hosts)
    print(f"the page: http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port} "
          f"(host names accepted: {', '.join(hosts)}; photos under {page.photos_root})")
    serve(page, demo, args.host, args.port, hosts).run()


if __name__ == "__main__":
    run_cli(main, get_args_parser())
