"""Find your object in your photos, on a web page: the search of search_photos.py, with a browser.

    python app.py --sam2_cfg configs/sam2.1/sam2.1_hiera_t.yaml --sam2_checkpoint checkpoints/sam2.1_hiera_tiny.pt
    python app.py ... --dinov2 facebook/dinov2-small --shortlist 100   # large folders: a DINOv2 shortlist

Serves a Gradio page on http://127.0.0.1:7860 (--host 0.0.0.0 to be reached from elsewhere;
then only folders under --photos_root, default the current folder, can be searched). Upload a
photo of your object and show it: click two opposite corners of its box, or paint over it, or
upload its mask; add more photos of it with "Add this reference" (k-shot). Then give a folder on
this computer or upload photos, press Search and watch the progress bar. The results are the
photos ranked by SAM2's score, each with its mask overlaid where the object is found, and
downloads of rankings.csv and the masks. Each search writes its folder (the "Your own photos"
layout, search_photos.py's outputs in its results/, and their metrics.json with the page's run
record) in <output_dir>/searches/; a folder's DINOv2 photo index is kept in <output_dir>/index/
and reused by every later search of that folder. Searches run one at a time: a second one waits
in the queue. The page calls the same code as search_photos.py (utils/photo_search.py) and shows
the same ranking; its API (the "search" endpoint) serves gradio_client.
"""
import hashlib
import io
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from utils.cli import CliParser, add_dinov2_args, add_sam2_args, run_cli, run_record, setup
from utils.errors import UserError, check_positive
from utils.io import atomic_write_bytes, save_json, save_png
from utils.loaders.common import image_size, open_image, read_mask
from utils.loaders.custom import load_custom
from utils.photo_search import SearchOptions, load_models, mask_file, search, summary_metrics
from utils.pseudo_video import SCORES
from utils.vis import overlay, with_prompt

SHOWN = 48  # photos in the result gallery (every one is in rankings.csv)


def get_args_parser() -> CliParser:
    parser = CliParser(__doc__)
    add_sam2_args(parser)
    add_dinov2_args(parser, None, 224, "short_side_crop",
                    "shortlist the photos with this DINOv2 (hub id or local folder) before SAM2")
    parser.add_argument("--shortlist", type=int, default=50, help="with --dinov2: photos per search that go to SAM2")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--photos_root", default=None,
                        help="folders that can be searched must be under it (default: any on 127.0.0.1, "
                             "the current folder otherwise)")
    parser.add_argument("--output_dir", default="outputs/app", help="searches and photo indexes")
    parser.add_argument("--seed", type=int, default=0)
    return parser


class PhotoSearchPage:
    """The page's work: references from the page's inputs, a search folder, the search, the results."""

    def __init__(self, models, options: SearchOptions, run, output_dir: Path, photos_root: Path | None,
                 record: dict):
        self.models, self.options, self.run = models, options, run
        self.output_dir, self.photos_root, self.record = Path(output_dir), photos_root, record

    # -- the reference and its prompt ---------------------------------------------------------

    @staticmethod
    def corner(photo: str | None, box: str, first: list | None, event: gr.SelectData):
        """A click on the reference photo: the first corner of a box, or the second (the box)."""
        x, y = event.index
        if first is None:
            return f"{x} {y}", [x, y], preview(photo, None, [x, y])
        box = f"{min(first[0], x)} {min(first[1], y)} {max(first[0], x) + 1} {max(first[1], y) + 1}"
        return box, None, preview(photo, box, None)

    @staticmethod
    def reference_loaded(photo: str | None):
        """A new reference photo: its prompt starts empty; the painting canvas shows it.
        Returns (box, first corner, preview, canvas, message)."""
        if photo is None:
            return "", None, None, None, ""
        try:
            image = open_image(photo, exif=True)
        except UserError as err:
            return "", None, None, None, message(err)
        return "", None, image, {"background": image, "layers": [], "composite": image}, \
            "Now click two opposite corners of your object (or paint over it, or upload its mask)"

    def add_reference(self, references: list, photo, box, painted, mask_upload):
        try:
            references = references + [reference(photo, box, painted, mask_upload)]
        except UserError as err:
            return references, reference_gallery(references), message(err)
        return references, reference_gallery(references), f"{len(references)} reference(s) of your object; add " \
            "another, or search"

    # -- the search ---------------------------------------------------------------------------

    def search(self, references: list, photo, box, painted, mask_upload, name, folder, uploads, score,
               progress=gr.Progress(track_tqdm=True)):  # noqa: ARG002 (gradio shows the search's own bars)
        """The Search button (and the API's "search"): (gallery, downloads, ranking, message)."""
        try:
            shots = references + ([reference(photo, box, painted, mask_upload)] if photo else [])
            if not shots:
                raise UserError("no reference", "reference photo", "upload a photo of your object and draw its box "
                                "(two clicks), paint it, or upload its mask")
            root = self.output_dir / "searches" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
            index_dir = self.write_folder(root, safe_name(name), shots, folder, uploads)
            data = load_custom(root)
            summary = search(data, self.models, replace(self.options, score=score, index_dir=index_dir),
                             root / "results", self.run)
            save_json(root / "results" / "metrics.json", {
                **summary_metrics(summary, score),
                "run": {**self.record, "encoder_passes": summary["encoder_passes"], "index": summary["index"],
                        "search": {"references": len(shots), "folder": folder if not uploads else None,
                                   "uploaded_photos": len(uploads or [])}}})
        except UserError as err:
            return [], None, None, message(err)
        object_name = next(iter(summary["rankings"]))
        ranked = summary["rankings"][object_name]
        gallery = [(result_image(data, root / "results", object_name, row), f"{rank}. {caption(row)}")
                   for rank, row in enumerate(ranked[:SHOWN], start=1)]
        found = len(summary["found"][object_name])
        text = (f"Found in {found} of {len(ranked)} photos searched ({summary['photos']} in the folder); "
                f"best first, masks overlaid where found. Results in {root / 'results'}")
        return gallery, downloads(root / "results"), ranking_json(ranked), text

    def write_folder(self, root: Path, name: str, shots: list, folder: str | None, uploads) -> Path | None:
        """The search folder in the "Your own photos" layout; returns the photo index's folder."""
        for k, shot in enumerate(shots, start=1):
            stem = name if k == 1 else f"{name}_{k}"
            atomic_write_bytes(root / "references" / f"{stem}.jpg", jpeg_bytes(shot["photo"]))
            if shot["mask"] is not None:
                save_png(root / "references" / f"{stem}.png", shot["mask"].astype(np.uint8) * 255)
            else:
                box = " ".join(f"{v:g}" for v in shot["box"])
                atomic_write_bytes(root / "references" / f"{stem}.txt", f"{box}\n".encode())
        if uploads:
            for k, upload in enumerate(uploads):
                atomic_write_bytes(root / "images" / f"{k:05d}_{Path(upload).name}", Path(upload).read_bytes())
            return None
        photos = self.photo_folder(folder)
        root.mkdir(parents=True, exist_ok=True)
        (root / "images").symlink_to(photos, target_is_directory=True)
        return self.output_dir / "index" / hashlib.sha1(str(photos).encode()).hexdigest()[:16]

    def photo_folder(self, folder: str | None) -> Path:
        if not folder or not folder.strip():
            raise UserError("no photos to search", "photos", "give a folder on this computer, or upload photos")
        path = Path(folder.strip()).expanduser().resolve()
        if not path.is_dir():
            raise UserError("folder not found", f"folder {folder.strip()}", "give the path of a folder of photos")
        if self.photos_root is not None and not path.is_relative_to(self.photos_root):
            raise UserError("this folder cannot be searched from here", f"folder {folder.strip()}",
                            f"choose a folder under {self.photos_root}, or upload the photos")
        return path


def reference(photo: str | None, box: str, painted: dict | None, mask_upload: str | None) -> dict:
    """A reference photo and its prompt from the page's inputs: a painted mask, else an uploaded
    mask, else the box; the photo as the search will read it (EXIF-oriented)."""
    if not photo:
        raise UserError("no reference photo", "reference photo", "upload a photo of your object")
    height, width = image_size(photo, exif=True)
    mask = painted_mask(painted)
    if mask is None and mask_upload:
        mask = read_mask(mask_upload, exif=True)
    if mask is not None:
        if mask.shape != (height, width):
            raise UserError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the photo {width}x{height}",
                            "mask", "upload a mask of the photo's size, or paint on the photo")
        if not mask.any():
            raise UserError("the mask is empty", "mask", "paint over your object, or upload its mask in white on black")
        return {"photo": photo, "mask": mask, "box": None}
    try:
        x1, y1, x2, y2 = (float(v) for v in box.split())
    except (ValueError, AttributeError):
        raise UserError("no box, painted mask or mask file", "reference photo",
                        "click two opposite corners of your object, paint over it, or upload its mask") from None
    if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
        raise UserError(f"the box {box} is not inside the {width}x{height} photo", "box",
                        "click two corners on the photo, or write x1 y1 x2 y2 within it")
    return {"photo": photo, "mask": None, "box": (x1, y1, x2, y2)}


def painted_mask(painted: dict | None) -> np.ndarray | None:
    """What was painted on the canvas (any layer's opaque pixels), or None."""
    layers = (painted or {}).get("layers") or []
    masks = [np.asarray(Image.open(layer) if isinstance(layer, str) else layer)[..., -1] > 0 for layer in layers]
    painted = np.logical_or.reduce(masks) if masks else None
    return painted if painted is not None and painted.any() else None


def jpeg_bytes(photo: str) -> bytes:
    """The reference photo as a JPEG: a JPEG's own bytes (its EXIF kept), else re-encoded (the
    "Your own photos" layout takes JPEG references; a PNG beside one is its mask)."""
    path = Path(photo)
    with Image.open(path) as image:
        if image.format == "JPEG":
            return path.read_bytes()
    buffer = io.BytesIO()
    open_image(path, exif=True).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def safe_name(name: str | None) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in (name or "").strip())
    return cleaned.strip("_") or "my_object"


def preview(photo: str | None, box: str | None, point) -> Image.Image | None:
    """The reference photo with its box (or first corner) drawn."""
    if not photo:
        return None
    image = open_image(photo, exif=True)
    if box:
        return with_prompt(image, box=tuple(float(v) for v in box.split()))
    x, y = point
    return with_prompt(image, box=(max(0, x - 3), max(0, y - 3), x + 3, y + 3))


def reference_gallery(references: list) -> list:
    return [(with_prompt(open_image(r["photo"], exif=True), r["mask"], r["box"]), f"reference {k}")
            for k, r in enumerate(references, start=1)]


def caption(row: dict) -> str:
    where = Path(row["image"]).relative_to("images")
    return f"{where} — {row['score']:.3f}" + (" · found" if row["found"] else "")


def result_image(data, results: Path, name: str, row: dict) -> Image.Image:
    photo = data.open(row["image"])
    return overlay(photo, read_mask(results / mask_file(name, row["image"]))) if row["found"] else photo


def downloads(results: Path) -> list[str]:
    """rankings.csv, and the masks in one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in sorted((results / "masks").rglob("*.png")):
            bundle.write(path, path.relative_to(results))
    return [str(results / "rankings.csv"), str(atomic_write_bytes(results / "masks.zip", buffer.getvalue()))]


def ranking_json(ranked: list[dict]) -> list[dict]:
    return [{"image": r["image"], "score": r["score"], "found": r["found"]} for r in ranked]


def message(err: UserError) -> str:
    return f"**{err.what}** ({err.where}): {err.fix}"


def build_page(page: PhotoSearchPage, dinov2: bool) -> gr.Blocks:
    with gr.Blocks(title="Find your object in your photos", analytics_enabled=False) as demo:
        gr.Markdown("# Find your object in your photos\nSAM2 looks for the object of your reference photo in every "
                    "photo and segments it where it is found.")
        references, first_corner = gr.State([]), gr.State(None)
        with gr.Row():
            with gr.Column():
                photo = gr.File(file_types=["image"], label="1. A photo of your object", elem_id="reference")
                shown = gr.Image(label="click two opposite corners of your object", interactive=False,
                                 elem_id="preview")
                box = gr.Textbox(label="its box, x1 y1 x2 y2 (filled by your clicks)", elem_id="box")
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
                folder = gr.Textbox(label="2. A folder of photos on this computer", elem_id="folder")
                uploads = gr.File(file_count="multiple", file_types=["image"], label="...or upload photos",
                                  elem_id="uploads")
                score = gr.Dropdown(list(SCORES), value=page.options.score, label="ranked by the SAM2 score")
                gr.Markdown(f"A DINOv2 shortlist of {page.options.shortlist} photos goes to SAM2" if dinov2 else
                            "Every photo goes to SAM2 (start the page with --dinov2 for large folders)")
                go = gr.Button("Search", variant="primary", elem_id="search")
                status = gr.Markdown(elem_id="status")
        results = gr.Gallery(label="photos, best first", columns=6, height="auto", elem_id="results")
        files = gr.File(label="downloads: rankings.csv and the masks", file_count="multiple", elem_id="downloads")
        with gr.Accordion("ranking (JSON)", open=False):
            ranking = gr.JSON(elem_id="ranking")

        photo.upload(page.reference_loaded, photo, [box, first_corner, shown, painted, status], concurrency_limit=None)
        shown.select(page.corner, [photo, box, first_corner], [box, first_corner, shown], concurrency_limit=None)
        add.click(page.add_reference, [references, photo, box, painted, mask_upload], [references, added, status],
                  concurrency_limit=None)
        go.click(page.search, [references, photo, box, painted, mask_upload, name, folder, uploads, score],
                 [results, files, ranking, status], api_name="search", concurrency_id="sam2", concurrency_limit=1)
    return demo


def page_from_args(args) -> tuple[PhotoSearchPage, gr.Blocks]:
    check_positive(args.shortlist, "--shortlist")
    run = setup(args, distributed=False)
    models = load_models(args.sam2_cfg, args.sam2_checkpoint, args.compile, args.dinov2, run)
    options = SearchOptions(shortlist=args.shortlist, dinov2_resolution=args.dinov2_resolution,
                            dinov2_preprocess=args.dinov2_preprocess, dinov2_batch_size=args.dinov2_batch_size)
    photos_root = Path(args.photos_root).resolve() if args.photos_root else (
        None if args.host in ("127.0.0.1", "localhost") else Path.cwd())
    page = PhotoSearchPage(models, options, run, Path(args.output_dir), photos_root, run_record(args, run))
    return page, build_page(page, args.dinov2 is not None).queue(default_concurrency_limit=1)


def main(args) -> None:
    _, demo = page_from_args(args)
    demo.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(Path(args.output_dir).resolve())])


if __name__ == "__main__":
    run_cli(main, get_args_parser())
