"""Typed configuration for every stage: YAML in, dotted overrides applied, validated, clear errors out.

One pydantic model per stage composed into `TPOConfig`. Unknown keys, wrong types and impossible
values fail at load time with the file and the dotted path of the field. Loss settings are a
discriminated union keyed by `name`, one submodel per registered loss, so `train.loss.beta` means
the beta of whichever method is selected.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError,
                      field_validator, model_validator)

DEFAULT_LOSS = "tdpo"


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file, the field and the fix."""


class StrictModel(BaseModel):
    """Unknown keys, infinities/NaN and booleans in number fields are errors: YAML's `true`, `.inf` and
    `.nan` are valid scalars, and pydantic alone would read `batch_size: true` as 1 and accept `lr: .inf`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info) -> Any:
        if isinstance(value, bool) and info.field_name in cls.model_fields:
            annotation = cls.model_fields[info.field_name].annotation
            allowed = set(get_args(annotation)) or {annotation}
            if bool not in allowed and allowed & {int, float}:
                raise ValueError(f"expected a number, got the boolean {value!r}")
        return value


def _absolute_local(value: str) -> str:
    """`tpo_ray.data.io.absolute_local`, imported when a path is validated: that module loads pyarrow and
    fsspec, which `import tpo_ray.config` (and so `tpo-ray --help`) does without."""
    from tpo_ray.data.io import absolute_local as resolve

    return resolve(value)


def _local_or_hub(value: str) -> str:
    """Model sources: `tiny:*` and hub ids (`owner/name`, not a local folder) stay; paths become absolute."""
    if value.startswith("tiny:") or not (value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()):
        return value
    return _absolute_local(value)


# Paths are canonical from the moment a config exists: relative paths resolve against the working
# directory of the command, once, so a run's identity, its cache key and its outputs do not depend
# on where a later command runs or on how the same path is spelled.
PathOrURI = Annotated[str, AfterValidator(_absolute_local)]
ModelSource = Annotated[str, AfterValidator(_local_or_hub)]


# ------------------------------------------------------------------------------------------ losses
class LossConfigBase(StrictModel):
    """Fields of a loss config are its loss function's keyword arguments, except `trainer_fields`."""

    trainer_fields: ClassVar[frozenset[str]] = frozenset()

    def shares_noise(self) -> bool:
        """Whether the two samples of a pair use the same eps and t (true for every paired method)."""
        return True

    def loss_kwargs(self) -> dict[str, Any]:
        skip = {"name"} | set(self.trainer_fields)
        return {k: v for k, v in self.model_dump().items() if k not in skip}


Beta = Annotated[float, Field(gt=0, description="Inverse temperature of the preference logit.")]
Tau = Annotated[
    float | None,
    Field(ge=0, description="Clip threshold on the loser term d_l = m_l - r_l; null disables the clip."),
]


class SFTLossConfig(LossConfigBase):
    trainer_fields: ClassVar[frozenset[str]] = frozenset({"caption_dropout"})
    name: Literal["sft"] = "sft"
    caption_dropout: float = Field(0.1, ge=0, lt=1, description="Probability of training on the empty caption.")


class DPOLossConfig(LossConfigBase):
    name: Literal["dpo"] = "dpo"
    beta: Beta = 5000.0


class TDPOLossConfig(LossConfigBase):
    name: Literal["tdpo"] = "tdpo"
    beta: Beta = 5000.0
    tau: Tau = None
    clip: str = Field("loser_cap", description="Clip variant on the loser term: a name registered in "
                      "tpo_ray.losses.CLIPS; loser_cap = min(d_l, tau).")

    @field_validator("clip")
    @classmethod
    def _known_clip(cls, value: str) -> str:
        clips = loss_registry().CLIPS
        if value not in clips:
            raise ValueError(f"unknown clip {value!r}; choose one of {sorted(clips)}")
        return value


KLMode = Literal["batch", "undesirable", "rolled"]  # checked against tpo_ray.losses.KL_MODES by loss_registry()


class KTOLossConfig(LossConfigBase):
    name: Literal["kto"] = "kto"
    beta: Beta = 5000.0
    kl_mode: KLMode = Field("batch", description="How the reference point z0 is estimated.")


class TKTOLossConfig(LossConfigBase):
    trainer_fields: ClassVar[frozenset[str]] = frozenset({"share_noise"})
    name: Literal["tkto"] = "tkto"
    beta: Beta = 5000.0
    tau: Tau = None
    kl_mode: KLMode = Field("batch", description="How the reference point z0 is estimated.")
    share_noise: bool = Field(True, description="Use the same eps and t for the c_w and c_l sample of a triplet.")

    def shares_noise(self) -> bool:
        return self.share_noise


class MaPOLossConfig(LossConfigBase):
    name: Literal["mapo"] = "mapo"
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term.")
    gamma: float = Field(0.5, gt=0, description="Scale g in f(x) = g x / expm1(g x).")
    T: float = Field(1000.0, gt=0, description="Temperature on the log odds.")


class RPOLossConfig(LossConfigBase):
    name: Literal["rpo"] = "rpo"
    beta: Beta = 5000.0
    temp: float = Field(0.5, gt=0, description="Softmax temperature of the prompt-similarity weights.")


LOSS_CONFIGS: dict[str, type[LossConfigBase]] = {
    "sft": SFTLossConfig,
    "dpo": DPOLossConfig,
    "tdpo": TDPOLossConfig,
    "kto": KTOLossConfig,
    "tkto": TKTOLossConfig,
    "mapo": MaPOLossConfig,
    "rpo": RPOLossConfig,
}


@functools.cache
def loss_registry():
    """The `tpo_ray.losses` package, imported on the first validation that needs it (it loads torch, which
    `import tpo_ray.config`, and so `tpo-ray --help`, does without), checked once against the configs above:
    a registered loss without a config (or the reverse), or a config field its loss does not take, is a bug."""
    from tpo_ray import losses

    if set(LOSS_CONFIGS) != set(losses.LOSSES):
        raise ImportError(f"loss configs {sorted(LOSS_CONFIGS)} do not match registered losses {sorted(losses.LOSSES)}")
    for name, cls in LOSS_CONFIGS.items():
        accepted = set(inspect.signature(losses.LOSSES[name]).parameters)
        fields = set(cls.model_fields) - {"name"} - set(cls.trainer_fields)
        if not fields <= accepted:
            raise ImportError(f"{cls.__name__} fields {sorted(fields - accepted)} are not arguments of {name}()")
    if set(get_args(KLMode)) != set(losses.KL_MODES):
        raise ImportError(f"KLMode {get_args(KLMode)} does not match tpo_ray.losses.KL_MODES {losses.KL_MODES}")
    return losses


def _loss_name(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("name", DEFAULT_LOSS)
    return getattr(value, "name", DEFAULT_LOSS)


LossConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in LOSS_CONFIGS.items())],  # type: ignore[misc]  # noqa: UP007
    Discriminator(_loss_name),
]


# -------------------------------------------------------------------------------------------- data
Principle = Literal["content", "attribute", "spatial", "contextual"]


class SyntheticDataConfig(StrictModel):
    num_rows: int = Field(64, ge=1, description="Rows of the generated shapes dataset.")
    image_size: int = Field(64, ge=16, le=1024, description="Side of the rendered square images in pixels.")
    seed: int = Field(0, description="Seed: the same seed gives byte-identical rows.")


class DataConfig(StrictModel):
    captions: PathOrURI | None = Field(
        None, description="Captions dataset (rows id, caption, image; parquet/JSONL/HF folder, local or s3://): the "
        "input of negatives and of the SFT cache. null = <output_dir>/data/captions.parquet (the demo writes its "
        "generated data there).")
    synthetic: SyntheticDataConfig = SyntheticDataConfig()
    resolution: int = Field(64, ge=8, description="Training resolution in pixels (multiple of 8).")
    center_crop: bool = Field(True, description="Center crop after resizing the short side (else random crop).")
    holdout_fraction: float = Field(0.125, ge=0, lt=1, description="Share of ids held out for evaluation.")
    principles: list[Principle] | None = Field(
        None, description="Train only on triplets edited under these principles (e.g. [content, attribute, "
        "contextual]); null = all. Read-time filter: the cache is shared, held-out pairs are not filtered.")
    max_edits: int | None = Field(
        None, ge=1, description="Train only on triplets whose negative differs by at most this many edits; null = all.")
    hard_negatives: int | None = Field(
        None, ge=1, description="Hard-negative mining: per caption id keep only the k candidate negatives ranked "
        "hardest by data.hard_negatives_by (generate more with negatives.negatives_per_caption); null = all. "
        "Read-time filter, after data.principles / data.max_edits; held-out pairs are never mined.")
    hard_negatives_by: Literal["reference", "clip", "random"] = Field(
        "reference", description="How data.hard_negatives ranks the candidates: reference = smallest reference "
        "margin m_l - m_w (the start U-Net finds c_l most plausible for the image; needs a cache built with "
        "cache.reference_margins=true), clip = highest text-encoder similarity of c_w and c_l, random = k seeded "
        "random ones (the control).")

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE downsamples by 8), got {value}")
        return value


# --------------------------------------------------------------------------------------- negatives
EditorName = Literal["rules", "hf", "vllm", "openai", "scene"]
InputFormat = Literal["auto", "parquet", "jsonl", "hf"]


class LLMSettings(StrictModel):
    """Settings of the LLM editors (hf, vllm, openai); ignored by the rules editor."""

    model: ModelSource | None = Field(None, description="Local folder or hub id of the chat LLM (served model name for openai).")
    max_new_tokens: int = Field(128, ge=8, le=2048, description="Most tokens the LLM generates per answer.")
    temperature: float = Field(0.7, ge=0, le=2, description="LLM sampling temperature (0 = greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="LLM nucleus sampling: draw from the most likely tokens "
                         "that hold this much probability.")
    batch_size: int = Field(32, ge=1, description="Rows per engine/request batch.")
    concurrency: int = Field(1, ge=1, description="Engine replicas (vllm), parallel clients (openai) or actors (hf).")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM replica.")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine arguments.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://host:8000/v1.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the endpoint's API key.")
    qps: float | None = Field(None, gt=0, description="Request rate limit per client (openai).")
    max_request_retries: int = Field(3, ge=0, description="HTTP retries per request (openai).")
    device: str = Field("auto", description="hf editor device: auto, cpu or cuda.")
    template_version: str = Field("edit_v2", description="Versioned instruction template in tpo_ray/negatives/templates.")
    guided_json: bool = Field(True, description="Decode answers under their JSON schema (vLLM structured outputs; "
                              "response_format json_schema for openai); off for an endpoint that rejects it.")
    verify: bool = Field(True, description="Verification pass: the same engine is asked whether each accepted "
                         "negative could still describe the image of its caption; yes rejects it as still_true "
                         "(one short greedy request per accepted negative, in the job's next pass); the rules "
                         "and scene editors ignore it.")


class NegativesConfig(StrictModel):
    input: PathOrURI | None = Field(
        None, description="Captions (parquet/JSONL/HF datasets folder, local or s3://); null = data.captions."
    )
    output: PathOrURI | None = Field(None, description="Output folder or URI; null = <output_dir>/negatives.")
    format: InputFormat = Field(
        "auto", description="Input format; auto detects it from each file's content (never from its name).")
    editor: EditorName = Field("rules", description="Caption editor; rules is offline and deterministic; scene edits "
                               "captions of the scene world (tpo_ray/world) within its grammar.")
    principles: list[Principle] = Field(
        default_factory=lambda: ["content", "attribute", "spatial", "contextual"],
        min_length=1,
        description="Edit principles to draw from (drop one for an ablation).",
    )
    principle_weights: dict[Principle, float] | None = Field(
        None, description="Sampling weight per principle; null = uniform."
    )
    max_edits: int = Field(1, ge=1, le=3, description="Edit budget k: at most this many edits per negative.")
    negatives_per_caption: int = Field(1, ge=1, le=8, description="Accepted negatives n per caption.")
    retries: int = Field(2, ge=0, le=8, description="Extra LLM candidates (new seeds) per negative before fallback.")
    fallback: Literal["rules", "none"] = Field("rules", description="Editor used when every LLM candidate is rejected.")
    max_tokens: int = Field(77, ge=8, description="CLIP token limit for captions and negatives.")
    tokenizer: ModelSource | None = Field(
        None, description="CLIP tokenizer folder for exact token counts; null = CLIP pre-token count."
    )
    shard_size: int = Field(10_000, ge=1, description="Input rows per output shard (unit of resume).")
    seed: int = Field(0, description="Base seed; row seeds derive from it and the row id.")
    llm: LLMSettings = LLMSettings()

    @model_validator(mode="after")
    def _weights_cover_principles(self) -> NegativesConfig:
        if self.principle_weights is not None:
            missing = set(self.principles) - set(self.principle_weights)
            if missing or any(w < 0 for w in self.principle_weights.values()):
                raise ValueError(
                    f"principle_weights must give a weight >= 0 for every principle in use; missing {sorted(missing)}"
                )
            if not any(self.principle_weights[p] > 0 for p in self.principles):
                raise ValueError("principle_weights gives every principle in use weight 0")
        if self.editor in ("hf", "vllm") and not self.llm.model:
            raise ValueError(f"negatives.editor={self.editor!r} needs negatives.llm.model (a local folder or hub id)")
        if self.editor == "openai" and not (self.llm.base_url and self.llm.model):
            raise ValueError("negatives.editor='openai' needs negatives.llm.base_url and negatives.llm.model")
        return self


# ------------------------------------------------------------------------------------------- cache
DataKind = Literal["auto", "single", "triplet", "image_pair", "labelled"]


class CacheConfig(StrictModel):
    input: PathOrURI | None = Field(
        None, description="Rows to encode; null = <output_dir>/negatives/triplets (triplet) or data.captions "
        "(single). Image pairs (jpg_0, jpg_1, label_0, caption) and labelled rows must be given.",
    )
    output: PathOrURI | None = Field(None, description="Cache root; null = <output_dir>/cache.")
    kind: DataKind = Field("auto", description="Example kind; auto = what train.loss needs.")
    batch_size: int = Field(16, ge=1, description="Rows per encoder batch.")
    concurrency: int = Field(1, ge=1, description="Encoder actors (one GPU each when use_gpu).")
    use_gpu: bool = Field(False, description="Run the encoders on GPUs, one per actor.")
    row_group_size: int = Field(64, ge=1, description="Rows per parquet row group: the unit of shuffled reads.")
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Images with more pixels are quarantined (image_too_large) before decoding: "
        "decompression-bomb guard; the default is PIL's.")
    max_text_similarity: float | None = Field(
        None, ge=-1, le=1, description="Triplets whose c_w and c_l pooled text embeddings (the model's own text "
        "encoder) have a cosine similarity above this are quarantined as near_synonym; null = keep all (the "
        "similarity is stored either way, column text_similarity: choose the threshold from its distribution).")
    reference_margins: bool = Field(
        False, description="Also store each triplet's ref_margin: the mean over eval.timesteps (1 noise draw) of "
        "m_l - m_w of the start U-Net (train.init_from or the base), for data.hard_negatives_by=reference. Loads "
        "that U-Net in every encoder actor.")


# ------------------------------------------------------------------------------------------- model
class LoRAConfig(StrictModel):
    enabled: bool = Field(False, description="Train LoRA adapters instead of the full U-Net.")
    rank: int = Field(4, ge=1, description="Rank of the LoRA adapters.")
    alpha: float = Field(4.0, gt=0, description="LoRA scale: the adapters' update is multiplied by alpha / rank.")
    target_modules: list[str] = Field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"],
                                      description="U-Net modules (attention projections) that get adapters.")


ReferenceKind = Literal["auto", "frozen_copy", "lora_off", "precomputed", "none"]


class ModelConfig(StrictModel):
    pretrained: ModelSource = Field(
        "tiny:sd15",
        description="Diffusers pipeline folder: local path, s3://bucket/prefix, hub id, or tiny:sd15 / tiny:sdxl "
        "(built from configs and saved in diffusers layout under cache_dir).",
    )
    revision: str | None = Field(None, description="Hub revision (hub ids only).")
    cache_dir: PathOrURI = Field("~/.cache/tpo_ray/models", validate_default=True,
                                 description="Where s3:// and tiny models are materialised.")
    family: Literal["auto", "sd15", "sdxl"] = Field("auto", description="Model family; auto reads model_index.json.")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="Override the scheduler's prediction type (null = keep it)."
    )
    reference: ReferenceKind = Field(
        "auto", description="Reference errors from: frozen_copy, lora_off (adapters disabled), precomputed (computed "
        "once per cache and seed by `tpo-ray reference`, shared by every Tune trial; no reference U-Net in training), "
        "none; auto picks."
    )
    lora: LoRAConfig = LoRAConfig()
    gradient_checkpointing: bool = Field(
        False, description="Recompute U-Net activations in the backward pass: less memory, more compute.")


# ------------------------------------------------------------------------------------------- train
class ScalingSettings(StrictModel):
    num_workers: int = Field(1, ge=1, description="Ray Train workers (one per GPU on GPU clusters).")
    use_gpu: bool = Field(False, description="One GPU per worker (NCCL); false = CPU workers (gloo).")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves for each worker.")


class DeepSpeedSettings(StrictModel):
    zero_stage: Literal[1, 2, 3] = Field(
        2, description="ZeRO stage: 1 partitions optimizer states, 2 also gradients, 3 also parameters.")
    offload_optimizer: bool = Field(
        False, description="Optimizer states in CPU memory, stepped by DeepSpeed's CPU AdamW (JIT-built on first use).")
    offload_params: bool = Field(False, description="ZeRO-3 only: keep parameters in CPU memory.")
    param_persistence_threshold: int | None = Field(
        None, ge=0, description="ZeRO-3 only: parameters with fewer elements stay whole on every rank; "
        "null = DeepSpeed's default (1e5), 0 = partition every parameter.")


class TrainConfig(StrictModel):
    loss: LossConfig = Field(  # type: ignore[valid-type]
        default_factory=TDPOLossConfig,
        description=f"Method (name: {', '.join(LOSS_CONFIGS)}) and its hyper-parameters (train.loss.beta, ...).")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(1e-2, ge=0, description="Decoupled weight decay of the optimizer.")
    adam_eps: float = Field(1e-8, gt=0, description="Epsilon of the Adam denominator (adamw, adamw_8bit).")
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warmup from 0 to train.lr over this many steps.")
    lr_scheduler: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="LR after warmup: constant, or linear / cosine decay to 0 at train.max_steps.")
    optimizer: Literal["adamw", "adamw_8bit", "adafactor"] = Field(
        "adamw", description="adamw (torch; DeepSpeed's CPU Adam when offloading), adamw_8bit (bitsandbytes, "
        "optimizer state in 8 bits; DDP or ZeRO 1/2), adafactor (torch, factored second moments; DDP only).")
    batch_size: int = Field(4, ge=1, description="Micro-batch per worker: triplets, pairs or samples.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step (global batch = "
                                  "batch_size x grad_accum_steps x scaling.num_workers).")
    max_steps: int = Field(20, ge=1, description="Optimizer steps.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global grad norm; null = off.")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="bf16: autocast under DDP, bf16 weights under DeepSpeed; fp16 needs DeepSpeed (loss scaling).")
    seed: int = Field(0, description="Seed of the data order, noise, timesteps and caption dropout of the run.")
    log_every_steps: int = Field(5, ge=1, description="Report metrics (averaged since the last report) every N steps.")
    checkpoint_every_steps: int = Field(50, ge=1, description="Save a checkpoint every N steps and at the end.")
    keep_checkpoints: int = Field(2, ge=1, description="Newest checkpoints kept in storage; older ones are deleted.")
    max_consecutive_nonfinite: int = Field(3, ge=1, description="Abort after this many non-finite steps in a row.")
    backend: Literal["ddp", "deepspeed"] = Field(
        "ddp", description="ddp: torch DDP; deepspeed: DeepSpeed ZeRO with the train.deepspeed settings.")
    channels_last: bool = Field(
        False, description="U-Net weights in channels_last memory format (GPU convolutions run NHWC kernels).")
    fused_optimizer: bool | None = Field(
        None, description="torch AdamW's fused kernel (one kernel for every parameter; same update, "
        "tests/unit/test_speed_switches.py); null = on with train.optimizer=adamw under the ddp backend "
        "(benchmarks/train_step.py: 10% faster steps on CPU), off under DeepSpeed.")
    compile: bool = Field(
        False, description="torch.compile the U-Net (Module.compile: weights and checkpoints unchanged); the first "
        "steps compile, and perf/examples_per_s counts them. DDP backend only.")
    data_loader: Literal["positional", "ray_data"] = Field(
        "positional",
        description="positional: workers read the cache by sample position (exact resume, any worker count); "
        "ray_data: ray.train.get_dataset_shard streaming (resume keeps the step count, not the samples).")
    read_lanes: int | None = Field(
        None, ge=1, description="positional loader: the cache's epoch order is cut into this many lanes, each worker "
        "reading its own (its share of the row groups, not all of them); null = the worker count at the run's start. "
        "Kept for the run's life: a resume with another worker count reads the same rows at the same steps.")

    @model_validator(mode="after")
    def _optimizer_fits_backend(self) -> TrainConfig:
        ds = self.deepspeed
        deepspeed = self.backend == "deepspeed"
        if deepspeed and ds.offload_optimizer and self.optimizer != "adamw":
            raise ValueError(f"train.optimizer={self.optimizer!r} cannot run with train.deepspeed.offload_optimizer: "
                             "ZeRO-Offload steps on the CPU with DeepSpeed's own Adam; use train.optimizer=adamw")
        if deepspeed and self.optimizer == "adafactor":
            raise ValueError("train.optimizer='adafactor' cannot run under train.backend='deepspeed': ZeRO hands the "
                             "optimizer one flat fp32 partition per rank, so Adafactor keeps an unfactored second "
                             "moment (no memory saving) and takes its relative step and update clipping from the RMS "
                             "of the whole partition, which depends on the world size; use train.backend='ddp' with "
                             "adafactor, or train.optimizer='adamw' with deepspeed")
        if deepspeed and ds.zero_stage == 3 and self.optimizer == "adamw_8bit":
            raise ValueError("train.optimizer='adamw_8bit' needs whole parameters (DDP or ZeRO stage 1/2), not "
                             "train.deepspeed.zero_stage=3; use adamw with offload_optimizer to save memory there")
        return self

    @model_validator(mode="after")
    def _speed_switches_fit(self) -> TrainConfig:
        if self.compile and self.backend != "ddp":
            raise ValueError("train.compile=true runs with train.backend='ddp' (DeepSpeed wraps the module itself)")
        if self.fused_optimizer and (self.optimizer != "adamw" or
                                     (self.backend == "deepspeed" and self.deepspeed.offload_optimizer)):
            raise ValueError("train.fused_optimizer=true is torch AdamW's kernel: it needs train.optimizer='adamw' "
                             "and no train.deepspeed.offload_optimizer (DeepSpeed's CPU Adam steps then)")
        return self

    def fused_adamw(self) -> bool:
        """Whether torch AdamW runs its fused kernel (`fused_optimizer`, with null resolved)."""
        if self.fused_optimizer is None:
            return self.optimizer == "adamw" and self.backend == "ddp"
        return self.fused_optimizer

    @model_validator(mode="after")
    def _fp16_needs_loss_scaling(self) -> TrainConfig:
        if self.mixed_precision == "fp16" and self.backend != "deepspeed":
            raise ValueError("train.mixed_precision='fp16' needs train.backend='deepspeed' (dynamic loss scaling); "
                             "use bf16 with ddp")
        return self
    deepspeed: DeepSpeedSettings = DeepSpeedSettings()
    scaling: ScalingSettings = ScalingSettings()
    storage_path: PathOrURI | None = Field(
        None, description="Checkpoint storage (local or s3://); null = <output_dir>/checkpoints.")
    run_name: str | None = Field(
        None, description="Ray Train run name; the same name and storage resume the run. null = <loss>-<config hash>.")
    init_from: PathOrURI | None = Field(
        None, description="Start the U-Net from this diffusers U-Net folder (e.g. the SFT export's unet/).")
    eval_every_steps: int = Field(0, ge=0, description="Held-out implicit preference every N steps (0 = at the end).")
    eval_max_pairs: int = Field(64, ge=1, description="Held-out examples evaluated per eval (split across workers).")
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["two small red circles on the left of a green field during the day",
                                 "one large blue square at the top of a gray wall at night"],
        description="Prompts of the image grid logged to MLflow at each eval (empty = no grid).")
    max_failures: int = Field(0, ge=-1, description="Worker-group restarts after a failure (-1 = unlimited).")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="Keep an EMA of the weights (e.g. 0.9999).")


# ------------------------------------------------------------------------------------ tune and eval
class TuneConfig(StrictModel):
    name: str | None = Field(
        None, description="Sweep name (its folder <output_dir>/tune/<name>); null = tune-<hash of the base config "
        "and this section>, so the same command resumes the same sweep.")
    search: Literal["grid", "random", "optuna"] = Field(
        "random", description="grid: every combination of list/grid values (num_samples times); random: sample "
        "every domain; optuna: TPE (Optuna) over the same domains.")
    num_samples: int | None = Field(
        None, ge=1, description="Trials (random/optuna; null = 4), or repeats of the whole grid (grid; null = 1).")
    metric: str = Field("val/implicit_acc", description="Held-out metric ASHA and the best trial are judged by: "
                        "val/implicit_acc (reference-relative), val/model_acc or val/ref_acc.")
    mode: Literal["max", "min"] = Field("max", description="Whether a higher (max) or lower (min) tune.metric is better.")
    search_space: dict[str, Any] = Field(
        default_factory=lambda: {"train.loss.beta": {"loguniform": [1000.0, 10000.0]},
                                 "train.loss.tau": {"choice": [None, 1e-4, 3e-4, 1e-3]}},
        description="Dotted config key -> a list of values or one of {choice: [...]}, {grid: [...]}, "
        "{uniform: [lo, hi]}, {loguniform: [lo, hi]}, {randint: [lo, hi]} (hi excluded). Keys and values are "
        "validated like overrides before the sweep starts.",
    )
    scheduler: Literal["asha", "none"] = Field("asha", description="asha: stop trials that trail at each rung.")
    grace_period: int = Field(10, ge=1, description="ASHA: steps every trial runs before it can be stopped.")
    reduction_factor: int = Field(2, ge=2, description="ASHA: keep 1/reduction_factor of the trials at each rung.")
    max_concurrent_trials: int = Field(1, ge=1, description="Trials running at once (each with its own workers).")

    @property
    def trials(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 4)

    @field_validator("metric")
    @classmethod
    def _held_out_metric(cls, value: str) -> str:
        if value not in ("val/implicit_acc", "val/model_acc", "val/ref_acc"):
            raise ValueError(f"expected a held-out metric every trial report carries (val/implicit_acc, "
                             f"val/model_acc, val/ref_acc), got {value!r}")
        return value


GUIDANCE_BY_FAMILY = {"sd15": 7.5, "sdxl": 5.0}  # the families' usual classifier-free guidance


class EvalConfig(StrictModel):
    timesteps: list[int] = Field(default_factory=lambda: [100, 300, 500, 700, 900],
                                 description="Timesteps of the held-out implicit preference, each in [0, 1000).")
    noise_draws: int = Field(2, ge=1, description="Noise draws per (triplet, timestep) for implicit preference.")
    prompts: str = Field("t2i_compbench", description="Prompt set to sample and score: a packaged one (parti, "
                         "t2i_compbench, scenes = the world's held-out prompts; sources in tpo_ray/eval/prompts/README.md) or a file (one prompt per line, or "
                         "parquet/JSONL with a prompt column).")
    scorers: list[Literal["clip", "pickscore", "hpsv2", "imagereward", "aesthetic", "scene"]] = Field(
        default_factory=lambda: ["clip"], description="Reward models to score samples with (tpo_ray/eval/scorers/); "
        "scene = the world's verifier (prompts of the scene grammar, eval.prompts: scenes; no weights).")
    scorer_weights: dict[str, PathOrURI] = Field(
        default_factory=dict, description="Each scorer's weights, a local path or s3:// (never downloaded at run "
        "time), e.g. {pickscore: /models/PickScore_v1}; a missing one names the file to place and where it is "
        "published.")
    models: dict[str, str] = Field(
        default_factory=dict, description="Models to sample and compare, name -> diffusers pipeline (a folder such "
        "as an export, s3://, a hub id, tiny:sd15); empty = {base: model.pretrained}.")
    baseline: str | None = Field(None, description="The model of eval.models every other is compared with "
                                       "(win rates); null = the first.")
    images_per_prompt: int = Field(1, ge=1, description="Images per prompt and model; image k of a prompt has the "
                                   "same seed for every model.")
    guidance_scale: float | None = Field(None, ge=0, description="Classifier-free guidance of the sampling "
                                         "pipeline; null = the family's usual value (SD1.5 7.5, SDXL 5.0).")
    max_prompts: int | None = Field(None, ge=1, description="Use N prompts of the set, a subset seeded by "
                                    "train.seed and balanced across the set's categories (null = all).")
    prompt_id_column: str | None = Field(None, description="A column of a prompt file that holds each prompt's "
                                         "id; null = ids from each prompt's text (an edited file keeps the ids of "
                                         "the prompts it did not change).")
    hps_version: Literal["v2.0", "v2.1"] = Field("v2.1", description="HPS weights' version: v2.1 "
                                                 "(HPS_v2.1_compressed.pt, HPSv2's benchmark default) or v2.0 "
                                                 "(HPS_v2_compressed.pt, the Diffusion-DPO and -KTO papers' numbers); "
                                                 "recorded with every score.")
    hps_antialias: bool = Field(True, description="Antialias HPSv2's resize: true = a fresh `pip install hpsv2` "
                                "today (torchvision >= 0.17); false = torchvision < 0.17, as the published v2.0, "
                                "Diffusion-DPO and -KTO numbers were computed; recorded with every score.")
    sample_batch_size: int = Field(4, ge=1, description="Prompts per pipeline call.")
    output: PathOrURI | None = Field(None, description="Where samples and scores go; null = <output_dir>/eval.")
    concurrency: int = Field(1, ge=1, description="Sampling actors (one pipeline replica each; one GPU each with "
                             "eval.use_gpu).")
    use_gpu: bool = Field(False, description="Sample, score and run implicit eval on GPUs, one per actor.")
    num_inference_steps: int = Field(50, ge=1, description="Denoising steps per sampled image (and per image of "
                                     "training's sample grids).")
    max_pairs: int | None = Field(None, ge=1, description="Held-out pairs `tpo-ray eval implicit` scores "
                                        "(null = every held-out pair of the cache).")
    implicit_batch_size: int = Field(8, ge=1, description="Held-out pairs per U-Net call in `tpo-ray eval implicit`.")
    report_prompts: int = Field(16, ge=1, description="Prompts whose images `tpo-ray report` shows side by side.")
    styles: dict[str, str] = Field(default_factory=dict, description="Style name -> description for `tpo-ray eval "
                                   "style` (a prompt's category names the style it requests); empty = the presets "
                                   "of tpo_ray/data/style.py (photo, oil_painting, watercolor, cartoon, ...).")

    def guidance(self, family: str) -> float:
        """`guidance_scale`, or the family's usual value when it is null."""
        return self.guidance_scale if self.guidance_scale is not None else GUIDANCE_BY_FAMILY.get(family, 7.5)

    @field_validator("timesteps")
    @classmethod
    def _timesteps_in_range(cls, value: list[int]) -> list[int]:
        # SD1.5 and SDXL schedulers have 1000 training timesteps; a step outside fails at the final eval
        bad = [t for t in value if not 0 <= t < 1000]
        if not value or bad:
            raise ValueError(f"expected timesteps in [0, 1000), got {bad or value}")
        return value


class ExportConfig(StrictModel):
    checkpoint: PathOrURI | None = Field(None, description="Checkpoint folder; null = latest of this config's run.")
    output: PathOrURI | None = Field(None, description="Pipeline folder to write; null = <output_dir>/export.")
    use_ema: bool = Field(False, description="Export the EMA weights (needs train.ema_decay).")
    memory_gb: float | None = Field(
        None, gt=0, description="Memory the export's Ray task reserves; null = estimated from the model and "
        "checkpoint files (the export never runs in the driver, which KubeRay puts on the head).")


class TrackingConfig(StrictModel):
    enabled: bool = Field(True, description="Log runs to MLflow; false = no tracking at all.")
    log_model: bool = Field(True, description="Log the final U-Net weights as an MLflow artifact.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI. First of: a tracking.tracking_uri=... override, this key in the "
        "YAML, MLFLOW_TRACKING_URI as set when the command starts (a cluster's ConfigMap), sqlite:///<output_dir>/"
        "mlflow.db. Recipes for the cluster leave it out.")
    experiment: str = Field("tpo_ray", description="MLflow experiment of the runs (created when missing).")
    fail_on_error: bool = Field(False, description="Fail the run when tracking is unreachable (else warn).")


# ---------------------------------------------------------------------------------------- pipeline
PipelineStage = Literal["negatives", "sft", "preference", "tune", "eval", "report"]
PIPELINE_ORDER = ("negatives", "sft", "preference", "tune", "eval", "report")


class PipelineConfig(StrictModel):
    stages: list[PipelineStage] = Field(
        default_factory=lambda: ["negatives", "sft", "preference"],
        description="What `tpo-ray pipeline` runs, in this order: negatives, sft (cache, train, export-sft), "
        "preference (cache, train.loss from the SFT U-Net, export-<loss>), tune (a sweep from the SFT U-Net), "
        "eval (implicit preference, samples and scores of base, SFT and the preference model), report (HTML).")
    sft: dict[str, Any] = Field(default_factory=dict, description="Overrides (dotted keys) of the SFT stage, "
                                "e.g. {train.lr: 1.0e-5, train.max_steps: 17500}; train.loss.name is sft.")
    preference: dict[str, Any] = Field(default_factory=dict, description="Overrides of the preference stage.")
    tune: dict[str, Any] = Field(default_factory=dict, description="Overrides of the sweep stage's base config.")
    eval: dict[str, Any] = Field(default_factory=dict, description="Overrides of the eval and report stages, "
                                 "e.g. {eval.scorers: [clip], eval.scorer_weights: {clip: /models/clip}}; eval.models "
                                 "defaults to the base, the SFT export and the preference export, against SFT.")

    @field_validator("stages")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        order = list(PIPELINE_ORDER)
        if len(set(value)) != len(value) or value != sorted(value, key=order.index) or not value:
            raise ValueError(f"expected stages in the order {order}, each at most once, got {value}")
        return value


# -------------------------------------------------------------------------------------------- root
class TPOConfig(StrictModel):
    output_dir: PathOrURI = Field("demo-output", validate_default=True,
                                  description="Root of every output of the pipeline (relative: to the working directory).")
    shared_filesystem: bool = Field(
        False, description="Local paths are on a filesystem mounted at the same path on every node (NFS, EFS, "
        "Lustre). Without it, a multi-node cluster refuses local paths that workers read or write.")
    data: DataConfig = DataConfig()
    negatives: NegativesConfig = NegativesConfig()
    cache: CacheConfig = CacheConfig()
    model: ModelConfig = Field(default_factory=ModelConfig)  # made per config: its cache_dir resolves then, not at import
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    pipeline: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _reference_fits_loss(self) -> TPOConfig:
        spec = loss_registry().LOSS_SPECS[self.train.loss.name]
        ref = self.model.reference
        if spec.needs_reference and ref == "none":
            raise ValueError(
                f"train.loss.name={spec.name!r} needs reference errors but model.reference='none'; "
                "set model.reference to auto, frozen_copy or lora_off"
            )
        tc = self.train
        if getattr(tc.loss, "kl_mode", None) == "rolled" and tc.batch_size * tc.scaling.num_workers < 2:
            raise ValueError("train.loss.kl_mode='rolled' pairs each image with another example's caption: it needs "
                             "train.batch_size * train.scaling.num_workers >= 2 (now 1); use kl_mode=batch")
        if ref == "lora_off" and not self.model.lora.enabled:
            raise ValueError("model.reference='lora_off' needs model.lora.enabled=true (the reference is the base U-Net)")
        if ref == "precomputed" and spec.needs_reference:
            self._check_precomputable(spec)
        return self

    def _check_precomputable(self, spec) -> None:
        """Precomputed errors need noise that is a function of the example and its epoch alone."""
        tc = self.train
        if spec.shared_timestep:
            raise ValueError(f"model.reference='precomputed' cannot serve train.loss.name={spec.name!r}: it draws one "
                             "timestep per micro-batch, which depends on the batch; use frozen_copy or lora_off")
        if getattr(tc.loss, "kl_mode", None) == "rolled":
            raise ValueError("model.reference='precomputed' cannot serve train.loss.kl_mode='rolled' (errors under "
                             "another example's caption depend on the batch); use kl_mode=batch")
        if tc.data_loader != "positional":
            raise ValueError("model.reference='precomputed' needs train.data_loader='positional' (rows are matched "
                             "to their stored errors by id and epoch)")
        if self.cache.use_gpu != tc.scaling.use_gpu:
            raise ValueError(f"model.reference='precomputed' computes the reference errors where the cache runs "
                             f"(cache.use_gpu={self.cache.use_gpu}) but the policy's run where training runs "
                             f"(train.scaling.use_gpu={tc.scaling.use_gpu}); other kernels give other roundings, so "
                             "m - r would not start at 0: set both alike")

    @model_validator(mode="after")
    def _filters_need_triplets(self) -> TPOConfig:
        used = [f"data.{k}" for k in ("principles", "max_edits", "hard_negatives") if getattr(self.data, k) is not None]
        if used and self.data_kind() != "triplet":
            raise ValueError(f"{' and '.join(used)} filter negatives triplets; train.loss.name="
                             f"{self.train.loss.name!r} trains on {self.data_kind()} examples")
        if self.data.hard_negatives is not None:
            if self.data.hard_negatives_by == "reference" and not self.cache.reference_margins:
                raise ValueError("data.hard_negatives_by='reference' ranks candidates by the start U-Net's margins: "
                                 "set cache.reference_margins=true (or data.hard_negatives_by=clip or random)")
            if self.train.data_loader != "positional":
                raise ValueError("data.hard_negatives mines over every candidate of a caption, which a streamed shard "
                                 f"does not see: set train.data_loader=positional (got {self.train.data_loader!r})")
        return self

    def captions_source(self) -> str:
        """The captions dataset every stage starts from: `data.captions`, or the generated one in output_dir."""
        return self.data.captions or f"{self.output_dir.rstrip('/')}/data/captions.parquet"

    def data_kind(self) -> str:
        """The example kind the cache holds for this run (`cache.kind`, or what the loss needs)."""
        return loss_registry().LOSS_SPECS[self.train.loss.name].data if self.cache.kind == "auto" else self.cache.kind

    def resolved_reference(self) -> str:
        """The reference holder this run uses, with `auto` resolved."""
        if not loss_registry().LOSS_SPECS[self.train.loss.name].needs_reference:
            return "none"
        if self.model.reference != "auto":
            return self.model.reference
        return "lora_off" if self.model.lora.enabled else "frozen_copy"


# ------------------------------------------------------------------------------------------ loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.loss.beta=2000` -> (["train", "loss", "beta"], 2000.0); values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value (e.g. train.lr=1e-6)")
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); a dict of {dotted key: value} is also accepted."""
    result = _deep_copy(data)
    items = overrides.items() if isinstance(overrides, dict) else (
        (".".join(k), v) for k, v in map(parse_override, overrides)
    )
    for dotted, value in items:
        node = result
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {'.'.join(parts[: depth + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"] if not (isinstance(p, str) and p in LOSS_CONFIGS)) or "(root)"
        shown = item["type"] not in ("missing", "extra_forbidden") and not isinstance(item["input"], dict)
        got = f" (got {item['input']!r})" if shown else ""
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `tpo-ray <stage> --help` lists the options)"
        lines.append(f"{source}: {loc}: {msg}{got}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<config>") -> TPOConfig:
    """Validate a plain dict (e.g. re-validation on a Ray worker); raises ConfigError."""
    try:
        return TPOConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a config with `train:` twice would lose half."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (first at line {seen[key].start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> TPOConfig:
    """YAML file (or defaults when None) + dotted overrides -> validated `TPOConfig`."""
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{source}: config file not found")
        try:
            loaded = yaml.load(p.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as err:
            raise ConfigError(f"{source}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    if overrides:
        data = apply_overrides(data, overrides)
        source += " + overrides"
    return config_from_dict(data, source)


def flatten_config(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value, for MLflow params and Tune search spaces."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def dump_config(cfg: TPOConfig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
