"""GPU benchmark: tokens/s of the negatives job's vLLM path vs vLLM's own offline `LLM.generate`.

Both sides get the same prompts (our versioned instruction + each caption, through the model's
chat template) and the same sampling parameters (per-row seed, temperature, max tokens, the
answer's JSON schema for guided decoding). `retries=0`: one pass, one candidate per caption. The job
side runs the real Ray Data pipeline (read shards -> ray.data.llm vLLM engine -> validation) and
counts generated tokens by re-tokenising the answers; the baseline runs one `vllm.LLM` in a
subprocess (so its GPU memory is free before the job's engine starts). Both sides are timed with
their engine's start-up (a job run starts one) and in steady state (the baseline's `generate` after
a warm-up; the job from its first answered block to its last). Tokens are counted from answers
only: a row the engine failed counts none. Needs a CUDA GPU, the `llm` extra and a local chat
model. Last line: the headline ratio (with start-up on both sides).

    python benchmarks/negatives_vllm.py --model /models/Qwen2.5-1.5B-Instruct [--captions 4000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
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
    parser.add_argument("--baseline", help=argparse.SUPPRESS)  # internal: run the baseline on this request file
    parser.add_argument("--baseline-result", help=argparse.SUPPRESS)  # internal: where the baseline writes its figures
    args = parser.parse_args()
    if args.baseline:
        return baseline(args)
    try:
        import torch
        import vllm  # noqa: F401  (the baseline subprocess needs it too)
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

        request_file = Path(tmp) / "baseline_requests.json"
        request_file.write_text(json.dumps({"prompts": prompts, "params": [r["sampling_params"] for r in requests]}))
        result_file = Path(tmp) / "baseline_result.json"
        subprocess.run([sys.executable, __file__, "--model", args.model, "--baseline", str(request_file),
                        "--baseline-result", str(result_file),
                        "--tensor-parallel-size", str(args.tensor_parallel_size)], check=True)  # its logs show
        base = json.loads(result_file.read_text())

        import ray

        ray.init()
        start = time.perf_counter()
        first_s, job_tokens, first_tokens = None, 0, 0
        for batch in build_pipeline(items, cfg, editor, OutputLayout(f"{tmp}/neg").root, plan.columns).iter_batches(
                batch_format="pyarrow", batch_size=None):
            for raw, failed in zip(batch.column("raw_output").to_pylist(), batch.column("editor_reason").to_pylist()):
                if not failed:  # an engine error's message is not generated text
                    job_tokens += len(tokenizer(raw or "", add_special_tokens=False).input_ids)
            if first_s is None:
                first_s, first_tokens = time.perf_counter() - start, job_tokens
        job_s = time.perf_counter() - start

    rows = [("baseline LLM.generate, with engine start-up", base["tokens"], base["load_s"] + base["generate_s"]),
            ("baseline LLM.generate, steady state", base["tokens"], base["generate_s"]),
            ("negatives job, with engine start-up", job_tokens, job_s),
            ("negatives job, steady state (after its first block)", job_tokens - first_tokens, job_s - (first_s or 0))]
    rates = {}
    for name, tokens, seconds in rows:
        rates[name] = tokens / seconds if seconds > 0 else 0.0
        print(f"captions {n}  {name}: {tokens} tokens in {seconds:.1f} s = {rates[name]:.0f} tokens/s")
    steady = rates[rows[3][0]] / rates[rows[1][0]] if rates[rows[1][0]] else 0.0
    print(f"steady-state ratio {steady:.2f}")
    print(f"ratio {rates[rows[2][0]] / rates[rows[0][0]]:.2f}")


def baseline(args) -> None:
    """vLLM's own offline generate over the job's prompts; writes {load_s, generate_s, tokens} as JSON to
    `--baseline-result` (not stdout, where vLLM logs too)."""
    import vllm

    data = json.loads(Path(args.baseline).read_text())
    params = [sampling_params(vllm, p) for p in data["params"]]
    start = time.perf_counter()
    llm = vllm.LLM(model=args.model, enable_prefix_caching=True, tensor_parallel_size=args.tensor_parallel_size,
                   max_model_len=4096)
    load_s = time.perf_counter() - start
    llm.generate(data["prompts"][:32], params[:32])  # warm-up: CUDA graphs, kernels
    start = time.perf_counter()
    outputs = llm.generate(data["prompts"], params)
    generate_s = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    Path(args.baseline_result).write_text(json.dumps({"load_s": load_s, "generate_s": generate_s, "tokens": tokens}))


if __name__ == "__main__":
    main()
