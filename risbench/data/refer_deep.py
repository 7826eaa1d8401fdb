"""`risbench data check --deep`: decode every image and every mask of a REFER-layout dataset, and check
that each annotation (bbox, polygon points, RLE size) lies inside its image."""

from __future__ import annotations

from typing import Any

from risbench.data.images import read_rgb
from risbench.data.refer import ReferData
from risbench.errors import RisbenchError

EPS = 1.0  # COCO polygons and boxes may touch the far border (x == width) by a pixel


def _outside(ann: dict[str, Any], width: int, height: int) -> str | None:
    """Why annotation `ann` is not inside a width x height image, or None."""
    bbox = ann.get("bbox")
    if isinstance(bbox, (list, tuple)) and len(bbox) == 4:
        x, y, w, h = (float(v) for v in bbox)
        if x < -EPS or y < -EPS or x + w > width + EPS or y + h > height + EPS or w < 0 or h < 0:
            return f"bbox {list(bbox)} is outside the {width}x{height} image"
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        for poly in seg:
            xs, ys = [float(v) for v in poly[0::2]], [float(v) for v in poly[1::2]]
            if xs and (min(xs) < -EPS or min(ys) < -EPS or max(xs) > width + EPS or max(ys) > height + EPS):
                return f"a polygon point is outside the {width}x{height} image"
    elif isinstance(seg, dict) and list(seg.get("size") or []) != [height, width]:
        return f"RLE size {seg.get('size')} is not the image's [{height}, {width}]"
    return None


def deep_check(data: ReferData, splits: list[str]) -> tuple[list[str], int, int]:
    """(problems, images decoded, annotations checked) over the refs of `splits`; a missing image is left
    to the layout check (`refer.check`)."""
    problems: list[str] = []
    refs = [r for split in splits for r in data.split_refs(split)]
    image_ids = sorted({r["image_id"] for r in refs})
    decoded = 0
    for image_id in image_ids:
        path = data.image_path(image_id)
        if not path.is_file():
            continue
        try:
            pixels = read_rgb(path)
        except RisbenchError as exc:
            problems.append(str(exc))
            continue
        decoded += 1
        img = data.images[image_id]
        if pixels.shape[:2] != (int(img["height"]), int(img["width"])):
            problems.append(
                f"{path}: image is {pixels.shape[1]}x{pixels.shape[0]} but {data.paths.instances} says "
                f"{img['width']}x{img['height']}"
            )
    ann_ids = sorted({r["ann_id"] for r in refs})
    for ann_id in ann_ids:
        ann = data.anns[ann_id]
        img = data.images[ann["image_id"]]
        why = _outside(ann, int(img["width"]), int(img["height"]))
        if why is None:
            try:
                if not data.mask(ann_id).any():
                    why = "its mask is empty"
            except RisbenchError as exc:
                problems.append(str(exc))
                continue
        if why is not None:
            problems.append(f"{data.paths.instances}: annotation {ann_id} (image {ann['image_id']}): {why}")
    return problems, decoded, len(ann_ids)
