"""Negative captions: principles, editors (rules, hf, vllm, openai), validation and the Ray Data job."""
