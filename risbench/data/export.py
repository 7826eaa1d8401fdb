"""Export SynthRef to the REFER layout, so that the REFER loader reads it back end to end.

OUT/synthref-<flavour>/refs(unc).p      refs of every split (train / val / test)
OUT/synthref-<flavour>/instances.json   every object of every scene, segmentation as compressed RLE
OUT/images/synthref-<flavour>/*.png     PNG (lossless: the masks stay exact against the pixels), or *.jpg
                                        with image_format "jpeg" (quality 90, as COCO's photos: for timing
                                        JPEG decoding; the masks come from the scene, not the pixels)
OUT/synthref-<flavour>.yaml             the `data:` config that reads this copy back
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from risbench.data.synthref import SPLITS, SceneSource, SynthRefConfig, split_size
from risbench.data.synthref_render import render
from risbench.data.synthref_scene import SHAPES

IMAGE_FORMATS = ("png", "jpeg")


def export_refer(
    cfg: SynthRefConfig, out: str | Path, splits: tuple[str, ...] = SPLITS, image_format: str = "png"
) -> dict[str, Any]:
    """Write the REFER copy of SynthRef `cfg` under `out` (images as `image_format`: png or jpeg); returns the
    data config that reads it back."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    out = Path(out)
    name = f"synthref-{cfg.flavour}"
    folder, image_folder = out / name, out / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    image_folder.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    robust = cfg.negative_fraction > 0
    for split in splits:
        source = SceneSource(cfg, split)
        for index in range(split_size(cfg, split)):
            scene = source.scene(index)
            image, labels = render(scene, cfg.image_size)
            image_id = source.image_id(index)
            file_name = f"{split}_{index:08d}.{'jpg' if image_format == 'jpeg' else 'png'}"
            if image_format == "jpeg":
                Image.fromarray(image).save(image_folder / file_name, quality=90)
            else:
                Image.fromarray(image).save(image_folder / file_name, compress_level=1)
            h, w = labels.shape
            images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            for k, obj in enumerate(scene.objects):
                m = np.asfortranarray((labels == k + 1).astype(np.uint8))
                rle = mask_utils.encode(m)
                annotations.append(
                    {
                        "id": image_id * 10 + k,
                        "image_id": image_id,
                        "category_id": SHAPES.index(obj.shape) + 1,
                        "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                        "area": int(m.sum()),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                        "iscrowd": 0,
                        "attributes": {"colour": obj.colour, "size": obj.size, "x": obj.x, "y": obj.y},
                    }
                )
            for r, ref in enumerate(scene.refs):
                ref_id = source.ref_id(index, r)
                sentences = []
                for j, (text, exists) in enumerate(ref.sentences):
                    sent = {"sent_id": source.sent_id(ref_id, j), "raw": text, "sent": text, "tokens": text.split()}
                    if robust:
                        sent["exist"] = exists
                    sentences.append(sent)
                refs.append(
                    {
                        "ref_id": ref_id,
                        "ann_id": image_id * 10 + ref.object_index,
                        "image_id": image_id,
                        "category_id": SHAPES.index(scene.objects[ref.object_index].shape) + 1,
                        "split": split,
                        "file_name": file_name,
                        "sent_ids": [s["sent_id"] for s in sentences],
                        "sentences": sentences,
                    }
                )
    categories = [{"id": i + 1, "name": s, "supercategory": "shape"} for i, s in enumerate(SHAPES)]
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f, protocol=2)
    (folder / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    data_cfg = {
        "description": f"SynthRef ({cfg.flavour}) exported to the REFER layout (seed {cfg.seed})",
        "name": "refer",
        "root": str(out.resolve()),
        "dataset": name,
        "folder": name,
        "split_by": "unc",
        "robust": robust,
        "image_dir": f"images/{name}",
    }
    (out / f"{name}.yaml").write_text(yaml.safe_dump(data_cfg, sort_keys=False))
    return data_cfg
