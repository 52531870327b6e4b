"""Which training rows a run reads: the cache's, or those its data filters keep and its mining picks.

Below both the trainer's driver and the reference job (which plans one store of errors per row the
run reads), so neither imports the other.
"""

from __future__ import annotations

import logging
from typing import Any

from tpo_ray.cache.store import CacheError, CacheReader, RowFilter
from tpo_ray.config import TPOConfig

log = logging.getLogger(__name__)


def training_rows(cfg: TPOConfig, directory: str, manifest: dict[str, Any]) -> int:
    """Training examples the run will see: the cache's, or those `data.principles`/`data.max_edits` keep and
    `data.hard_negatives` mines (the count the workers' readers, built with the same filter, agree on)."""
    check_hard_negatives(cfg, manifest)
    keep = RowFilter.from_data_config(cfg.data)
    if keep is None:
        return manifest["rows"]["train"]
    kept = len(CacheReader(directory, "train", seed=cfg.train.seed, keep=keep))
    d = cfg.data
    chosen = (f"data.principles={d.principles} data.max_edits={d.max_edits} data.hard_negatives={d.hard_negatives}"
              + (f" (by {d.hard_negatives_by})" if d.hard_negatives is not None else ""))
    log.info("train: %d of %d training examples pass %s", kept, manifest["rows"]["train"], chosen)
    if kept == 0:
        raise CacheError(f"no training example passes {chosen} in {directory}")
    return kept


def check_hard_negatives(cfg: TPOConfig, manifest: dict[str, Any]) -> None:
    """`data.hard_negatives` ranks the candidate negatives of each caption over the whole training split:
    it needs triplets, the positional reader (a streamed batch sees only part of a caption's candidates)
    and, ranked by the reference, a cache that stores the start U-Net's margins."""
    d = cfg.data
    if d.hard_negatives is None:
        return
    if manifest.get("kind") != "triplet":
        raise CacheError(f"data.hard_negatives mines negatives triplets; this run's cache holds {manifest.get('kind')!r} "
                         f"examples (train.loss.name={cfg.train.loss.name!r})")
    if cfg.train.data_loader != "positional":
        raise CacheError("data.hard_negatives needs train.data_loader='positional' (candidates are ranked per caption "
                         "over the whole split, which a streamed Ray Data shard never sees)")
    if d.hard_negatives_by == "reference" and not (manifest.get("options") or {}).get("reference_margins"):
        raise CacheError("data.hard_negatives_by=reference ranks candidates by the start U-Net's margins, which this "
                         "cache does not store: set cache.reference_margins=true (and rebuild it with `tpo-ray cache`), "
                         "or use data.hard_negatives_by=clip or random")
