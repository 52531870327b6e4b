"""CPU benchmark: what the verification pass (`negatives.llm.verify`) costs the `hf` editor.

The negatives job's pass loop (`ShardCollector`: first pass, retries, verification requests) runs
without Ray over real COCO captions, once with verify off and once with it on. Every request goes
through the real `hf` engine (`HFGenerator`: chat template, batched `generate`) of a tiny random
chat model, so requests, prompt and generated tokens and generation time are the engine's own.
The tiny model's answers are noise, so an edit answer is replaced by a stand-in for a capable LLM
(the rules editor's edit under the requested principle, or "no edit possible" when it has none)
after it was generated; verification answers are the model's own (mostly unparsable: kept).
The tiny model never stops early, so every answer is `max_new_tokens` long: an upper bound.

    python benchmarks/negatives_verify_cost.py [--captions 50] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa

from tpo_ray.config import load_config
from tpo_ray.data import schema
from tpo_ray.data.io import read_parquet, write_parquet_atomic
from tpo_ray.data.sources import plan_source
from tpo_ray.models.tiny_llm import save_tiny_chat_model
from tpo_ray.negatives.editors.hf import HFGenerator
from tpo_ray.negatives.editors.requests import KIND, VERIFY
from tpo_ray.negatives.editors.rules_stage import rules_output
from tpo_ray.negatives.job import ShardCollector
from tpo_ray.negatives.layout import OutputLayout
from tpo_ray.negatives.quality import aggregate_stats
from tpo_ray.negatives.shards import shard_requests, validate_batch
from tpo_ray.progress import Progress

COCO = Path(__file__).parent / "data" / "coco_val2017_captions.tsv"


class Editor:
    name, model, chooses_principle = "hf", "tiny", True

    def __init__(self, attempts: int, verifies: bool) -> None:
        self.attempts, self.verifies = attempts, verifies


def stand_in(row: dict, max_edits: int) -> str:
    """What a capable LLM answers: the rules editor's edit under the requested principle, else no edit."""
    raw, _ = rules_output(row[schema.CAPTION], principles=[row[schema.REQUESTED_PRINCIPLE]], weights=None,
                          max_edits=max_edits, seed=row[schema.SEED])
    return raw or json.dumps({"no_edit": True, "caption": "", "principle": row[schema.REQUESTED_PRINCIPLE],
                              "edits": []})


def run(captions: list[str], model: str, verify: bool, max_new_tokens: int, work: Path) -> dict:
    source = work / "in.parquet"
    write_parquet_atomic(pa.Table.from_pylist([{"id": f"c{i}", "caption": c} for i, c in enumerate(captions)]), source)
    cfg = load_config(None, [f"output_dir={work}", f"negatives.input={source}", f"negatives.output={work / 'neg'}",
                             "tracking.enabled=false", "negatives.editor=hf", f"negatives.llm.model={model}",
                             f"negatives.llm.max_new_tokens={max_new_tokens}", f"negatives.llm.verify={verify}",
                             "negatives.llm.device=cpu"])
    n = cfg.negatives
    plan = plan_source(str(source), n.shard_size)
    layout = OutputLayout(str(work / "neg"))
    editor = Editor(1 + n.retries, verify)
    collector = ShardCollector(cfg, layout, editor, [s.index for s in plan.shards], Progress(plan.num_rows, "c", "n"),
                               {s.index: s.num_rows for s in plan.shards}, plan.columns)
    engine = HFGenerator(n.llm.model_dump(mode="json"), n.max_edits)
    engine(pa.Table.from_pylist([{schema.CAPTION: "a dog", schema.REQUESTED_PRINCIPLE: "content", schema.SEED: 0,
                                  KIND: "edit"}]))  # warm-up, not counted
    engine.generated_tokens = 0
    figures = {kind: Counter() for kind in ("edit", "verify")}
    tables = [shard_requests({"spec": s.to_dict(), "duplicates": []}, cfg=n.model_dump(mode="json"), root=layout.root,
                             attempts=1, chooses_principle=True, columns=plan.columns) for s in plan.shards]
    passes, start = 0, time.perf_counter()
    while tables:
        passes += 1
        for table in tables:
            rows = table.to_pylist()
            for kind in ("edit", "verify"):
                part = [r for r in rows if (r[KIND] == VERIFY) == (kind == "verify")]
                for i in range(0, len(part), n.llm.batch_size):
                    batch = pa.Table.from_pylist(part[i:i + n.llm.batch_size], schema=table.schema)
                    tokens_before, t0 = engine.generated_tokens, time.perf_counter()
                    answered = engine(batch).to_pylist()
                    f = figures[kind]
                    f["seconds"] += time.perf_counter() - t0
                    f["requests"] += len(answered)
                    f["generated_tokens"] += engine.generated_tokens - tokens_before
                    f["prompt_tokens"] += sum(len(engine.tokenizer(p, add_special_tokens=False).input_ids)
                                              for p in engine.prompts(answered))
                    if kind == "edit":
                        answered = [{**r, schema.RAW_OUTPUT: stand_in(r, n.max_edits)} for r in answered]
                    collector.add(validate_batch(pa.Table.from_pylist(answered), principles=list(n.principles),
                                                 max_edits=n.max_edits, max_tokens=n.max_tokens, tokenizer=None))
        tables = [read_parquet(f) for f in collector.end_pass()]
    stats = aggregate_stats(collector.done)
    return {"verify_on": verify, "passes": passes, "wall_s": round(time.perf_counter() - start, 2),
            **{kind: {k: round(v, 2) for k, v in f.items()} for kind, f in figures.items()},
            "triplets": stats["triplets"], "fallbacks": stats["fallbacks"], "verdicts": stats["verify"],
            "rejected": stats["rejected"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="edit answers (verification: 16)")
    args = parser.parse_args()
    lines = COCO.read_text().splitlines()[1:1 + args.captions]
    captions = [line.split("\t")[0] for line in lines]
    with tempfile.TemporaryDirectory() as tmp:
        model = str(save_tiny_chat_model(Path(tmp) / "tiny-chat"))
        results = [run(captions, model, verify, args.max_new_tokens, Path(tmp) / f"verify-{verify}")
                   for verify in (False, True)]
    for r in results:
        print(json.dumps(r))
        for kind in ("edit", "verify"):
            f = r[kind]
            if f.get("requests"):
                print(f"  verify {'on' if r['verify_on'] else 'off'}, {kind} requests: {f['requests']:.0f}, per request "
                      f"{f['prompt_tokens'] / f['requests']:.0f} prompt tokens, {f['generated_tokens'] / f['requests']:.1f} "
                      f"generated tokens, {1000 * f['seconds'] / f['requests']:.0f} ms")
    off, on = results
    edit, check = on["edit"], on["verify"]
    print(f"verify on adds, in the same run: {check['requests'] / edit['requests']:+.0%} requests, "
          f"{check['generated_tokens'] / edit['generated_tokens']:+.0%} generated tokens, "
          f"{check['prompt_tokens'] / edit['prompt_tokens']:+.0%} prompt tokens, "
          f"{check['seconds'] / edit['seconds']:+.1%} generation time; passes {on['passes']} vs {off['passes']}; "
          f"wall {on['wall_s']} s vs {off['wall_s']} s")

if __name__ == "__main__":
    main()
