"""Column names of every table tpo_ray reads or writes (DESIGN.md "Data contracts").

Code refers to these constants, never to string literals, so a renamed column is one edit.
"""

from __future__ import annotations

# captions in
ID = "id"
IMAGE = "image"
IMAGE_URI = "image_uri"
CAPTION = "caption"
WIDTH = "width"
HEIGHT = "height"

# triplets out (plus ID, IMAGE/IMAGE_URI, CAPTION = c_w)
NEGATIVE = "negative"
PRINCIPLE = "principle"
EDITS = "edits"
EDITOR = "editor"
EDITOR_MODEL = "editor_model"
SEED = "seed"
ATTEMPT = "attempt"
NEGATIVE_INDEX = "negative_index"
TRIPLET_COLUMNS = (ID, CAPTION, NEGATIVE, PRINCIPLE, EDITS, EDITOR, EDITOR_MODEL, SEED, ATTEMPT)

# carried into a triplet cache for read-time filters (data.principles, data.max_edits)
NUM_EDITS = "num_edits"
# computed per triplet by the cache stage (semantic validation, hard-negative mining)
TEXT_SIMILARITY = "text_similarity"  # cosine of the pooled text embeddings of c_w and c_l
REF_MARGIN = "ref_margin"  # the start U-Net's mean m_l - m_w over eval.timesteps (cache.reference_margins)

# quarantine
STAGE = "stage"
REASON = "reason"
RAW = "raw"
QUARANTINE_COLUMNS = (ID, STAGE, REASON, RAW)

# cache rows: one key per training example (an input row: its id and a digest of its content), unique even
# when one caption id has several negatives; training noise and precomputed reference errors are keyed by it
EXAMPLE = "example"

# image-pair baselines (Pick-a-Pic layout)
JPG_0 = "jpg_0"
JPG_1 = "jpg_1"
LABEL_0 = "label_0"
LABEL = "label"

# negatives job, internal request/response columns
SHARD = "_shard"
ROW = "_row"
REQUESTED_PRINCIPLE = "requested_principle"
RAW_OUTPUT = "raw_output"
EDITOR_REASON = "editor_reason"
FALLBACK = "fallback"
