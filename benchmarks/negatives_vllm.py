"""GPU benchmark: tokens/s of the negatives job's vLLM path vs vLLM's own offline `LLM.generate`.

Both sides get the same prompts (our versioned instruction + each caption, through the model's
chat template) and the same sampling parameters (per-row seed, temperature, max tokens, the
answer's JSON schema for guided decoding). `retries=0`: one pass, one candidate per caption. The job
side runs the real Ray Data pipeline (read shards -> ray.data.llm vLLM engine -> validation) and
counts generated tokens by re-tokenising the answers; the baseline runs one `vllm.LLM` in this
process. Needs a CUDA GPU, the `llm` extra and a local chat model. Last line: the headline ratio.

    python benchmarks/negatives_vllm.py --model /models/Qwen2.5-1.5B-Instruct [--captions 4000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa


def sampling_params(vllm, params: dict):
    """The request's sampling parameters as ray.data.llm's vLLM stage builds them (guided JSON included)."""
    params = dict(params)
    guided = params.pop("structured_outputs", None)
    structured = vllm.sampling_params.StructuredOutputsParams(**guided) if guided else None
    return vllm.SamplingParams(**params, structured_outputs=structured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local chat model folder")
    parser.add_argument("--captions", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="500 captions")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--tensor-parallel-size", type=int, default=1)
    args = parser.parse_args()
    try:
        import torch
        import vllm
    except ImportError:
        sys.exit("needs the llm extra (pip install 'tpo_ray[llm]') on a CUDA machine")
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    n = 500 if args.quick else args.captions

    from transformers import AutoTokenizer

    from tpo_ray.config import load_config
    from tpo_ray.data.io import write_parquet_atomic
    from tpo_ray.data.sources import plan_source
    from tpo_ray.data.synthetic import synthetic_captions
    from tpo_ray.negatives.editors import build_editor
    from tpo_ray.negatives.job import build_pipeline
    from tpo_ray.negatives.layout import OutputLayout
    from tpo_ray.negatives.shards import shard_requests

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "captions.parquet"
        write_parquet_atomic(pa.Table.from_pylist(list(synthetic_captions(n))), source)
        cfg = load_config(None, [f"output_dir={tmp}", f"negatives.input={source}", f"negatives.output={tmp}/neg",
                                 "negatives.editor=vllm", f"negatives.llm.model={args.model}", "negatives.retries=0",
                                 f"negatives.llm.max_new_tokens={args.max_tokens}", "tracking.enabled=false",
                                 f"negatives.llm.tensor_parallel_size={args.tensor_parallel_size}",
                                 "negatives.shard_size=1000", "negatives.llm.batch_size=64"])
        plan = plan_source(str(source), cfg.negatives.shard_size)
        editor = build_editor(cfg.negatives)
        items = [{"item": {"spec": s.to_dict(), "duplicates": []}} for s in plan.shards]

        # the same requests the job sends, for the baseline
        from tpo_ray.negatives.editors.requests import vllm_request

        requests = []
        for item in items:
            table = shard_requests(item["item"], cfg=cfg.negatives.model_dump(mode="json"), root=f"{tmp}/baseline",
                                   attempts=1, chooses_principle=True, columns=plan.columns)
            requests += [vllm_request(r, **editor.request_kwargs) for r in table.to_pylist()]
        prompts = [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True, tokenize=False)
                   for r in requests]
        params = [sampling_params(vllm, r["sampling_params"]) for r in requests]

        llm = vllm.LLM(model=args.model, enable_prefix_caching=True, tensor_parallel_size=args.tensor_parallel_size,
                       max_model_len=4096)
        llm.generate(prompts[:32], params[:32])  # warm-up
        start = time.perf_counter()
        outputs = llm.generate(prompts, params)
        base_s = time.perf_counter() - start
        base_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        del llm
        torch.cuda.empty_cache()

        import ray

        ray.init()
        start = time.perf_counter()
        job_tokens = 0
        for batch in build_pipeline(items, cfg, editor, OutputLayout(f"{tmp}/neg").root, plan.columns).iter_batches(
                batch_format="pyarrow", batch_size=None):
            for raw in batch.column("raw_output").to_pylist():
                job_tokens += len(tokenizer(raw or "", add_special_tokens=False).input_ids)
        job_s = time.perf_counter() - start  # includes engine start-up, as a job run would

    base_rate, job_rate = base_tokens / base_s, job_tokens / job_s
    print(f"captions {n}  baseline LLM.generate: {base_tokens} tokens in {base_s:.1f} s = {base_rate:.0f} tokens/s")
    print(f"captions {n}  negatives job (Ray Data + vLLM): {job_tokens} tokens in {job_s:.1f} s = {job_rate:.0f} tokens/s")
    print(f"ratio {job_rate / base_rate:.2f}")


if __name__ == "__main__":
    main()
