"""Text conditioning for SD1.5 and SDXL U-Nets, as one batch-shaped object.

`Conditioning` carries what the U-Net call needs beyond `x_t` and `t`: prompt embeddings, and for
SDXL the pooled embedding and `add_time_ids`. The step concatenates, rolls and indexes it without
knowing the family; `PROMPT_ENCODERS` maps a family to the function that encodes captions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass
class Conditioning:
    prompt_embeds: torch.Tensor  # [N, L, D]
    pooled: torch.Tensor | None = None  # [N, P], SDXL only
    time_ids: torch.Tensor | None = None  # [N, 6], SDXL only

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def unet_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"encoder_hidden_states": self.prompt_embeds}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        return Conditioning(
            fn(self.prompt_embeds),
            None if self.pooled is None else fn(self.pooled),
            None if self.time_ids is None else fn(self.time_ids),
        )

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        return self.map(lambda x: x.to(device=device, dtype=dtype if x.is_floating_point() and dtype else x.dtype))

    def rows(self, start: int, stop: int) -> Conditioning:
        return self.map(lambda x: x[start:stop])

    def with_text(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Conditioning:
        """`fn` applied to the caption parts (embeddings, pooled); SDXL time ids stay with their image."""
        return Conditioning(fn(self.prompt_embeds), None if self.pooled is None else fn(self.pooled), self.time_ids)

    def with_time_ids(self, time_ids: torch.Tensor | None) -> Conditioning:
        return replace(self, time_ids=time_ids)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        first = items[0]
        return Conditioning(
            torch.cat([c.prompt_embeds for c in items]),
            None if first.pooled is None else torch.cat([c.pooled for c in items]),  # type: ignore[misc]
            None if first.time_ids is None else torch.cat([c.time_ids for c in items]),  # type: ignore[misc]
        )


def tokenize(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    return tokenizer(
        list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids


@torch.no_grad()
def sd15_text_states(text_encoders: list, tokenizers: list, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the CLIP text encoder: (last hidden state [N, 77, D], pooler_output [N, D], the end
    token's final state)."""
    encoder, tokenizer = text_encoders[0], tokenizers[0]
    out = encoder(tokenize(tokenizer, captions).to(encoder.device))
    return out[0], out.pooler_output


def encode_prompts_sd15(text_encoders: list, tokenizers: list, captions: Sequence[str]) -> Conditioning:
    """Last hidden state of the CLIP text encoder, [N, 77, D]."""
    return Conditioning(sd15_text_states(text_encoders, tokenizers, captions)[0])


@torch.no_grad()
def encode_prompts_sdxl(text_encoders: list, tokenizers: list, captions: Sequence[str]) -> Conditioning:
    """Penultimate hidden states of both encoders concatenated; pooled projection of the second.

    `time_ids` are per image (original size, crop), so they are attached later with `with_time_ids`.
    """
    hidden, pooled = [], None
    for encoder, tokenizer in zip(text_encoders, tokenizers):
        ids = tokenize(tokenizer, captions).to(encoder.device)
        out = encoder(ids, output_hidden_states=True)
        hidden.append(out.hidden_states[-2])
        pooled = out[0]  # text_embeds of CLIPTextModelWithProjection: the last encoder's is kept
    return Conditioning(torch.cat(hidden, dim=-1), pooled)


PROMPT_ENCODERS: dict[str, Callable[[list, list, Sequence[str]], Conditioning]] = {
    "sd15": encode_prompts_sd15,
    "sdxl": encode_prompts_sdxl,
}


def sdxl_time_ids(
    original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]
) -> torch.Tensor:
    """SDXL micro-conditioning (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
    return torch.tensor([*original_size, *crop_top_left, *target_size], dtype=torch.float32)
