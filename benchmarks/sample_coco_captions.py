"""Draw the seeded sample of real COCO captions that the negatives benchmarks read.

COCO's 2017 validation captions (`captions_val2017.json`: 5,000 images, 25,014 human captions, CC BY 4.0)
are not downloaded here: give the file's path. The sample takes `--images` images at random (seeded),
one of each image's captions (same generator), keeps the caption's text as written (typos and case
included) with only its whitespace collapsed, and writes a tab-separated table with the COCO ids:

    Prompt<TAB>image_id<TAB>annotation_id

    python benchmarks/sample_coco_captions.py /path/to/captions_val2017.json \
        --images 2500 --seed 0 --output benchmarks/data/coco_val2017_captions.tsv

Where the committed file came from: benchmarks/data/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path


def sample_captions(annotations: list[dict], images: int, seed: int) -> list[tuple[str, int, int]]:
    """(caption, image_id, annotation_id) for `images` images drawn with `seed`, one caption each,
    in the order drawn."""
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in annotations:
        by_image[int(a["image_id"])].append(a)
    rng = random.Random(seed)
    rows = []
    for image_id in rng.sample(sorted(by_image), images):
        a = rng.choice(sorted(by_image[image_id], key=lambda x: int(x["id"])))
        rows.append((" ".join(str(a["caption"]).split()), image_id, int(a["id"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("captions_json", type=Path, help="COCO captions_val2017.json")
    parser.add_argument("--images", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/data/coco_val2017_captions.tsv"))
    args = parser.parse_args()
    raw = args.captions_json.read_bytes()
    rows = sample_captions(json.loads(raw)["annotations"], args.images, args.seed)
    lines = ["Prompt\timage_id\tannotation_id"] + [f"{text}\t{image}\t{ann}" for text, image, ann in rows]
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(rows)} captions from {args.captions_json} (sha256 {hashlib.sha256(raw).hexdigest()}) -> {args.output}")


if __name__ == "__main__":
    main()
