# syntax=docker/dockerfile:1
# The tpo_ray cluster image: every Ray container in cluster/ (head, GPU workers, the autoscaler
# sidecar KubeRay adds, the RayJob submitter) runs it. Build (BuildKit, the default since Docker 23):
#   docker build -t <registry>/tpo-ray:<tag> .
#
# Base image: rayproject/ray:<RAY_VERSION>-<PYTHON_TAG>-<CUDA_TAG>, because
#  - its Ray is the version the project is tested with (2.60.0) and the `rayVersion` the manifests
#    declare, so the client, GCS, raylets, autoscaler and submitter all agree;
#  - py311 is the Python the project is tested on;
#  - CUDA 13: the registry's torch 2.13.0, vLLM 0.29 and ray[llm] 2.60 wheels are CUDA 13 builds
#    (torch requires cuda-toolkit==13.0.x, vLLM its cu13 kernels, ray[llm] nixl-cu13). Their CUDA
#    runtime comes from those wheels; the base's toolkit (nvcc, g++) compiles DeepSpeed's ops and must
#    have the same CUDA major, which a step below checks;
#  - it has the non-root user `ray` (uid 1000, gid 100) the manifests run as (runAsUser: 1000),
#    owning its Python (/home/ray/anaconda3), so pip needs no root.
# Nodes need an NVIDIA driver that supports CUDA 13.0 (R580 or newer; `nvidia-smi` prints the highest
# CUDA version the driver supports) and the NVIDIA container toolkit / GPU operator.
#
# Every version comes from image/requirements.lock + image/deepspeed.lock (hashed, compiled by
# `make lock` from pyproject.toml and the ARGs below; tests/unit/test_image_lock.py checks that the
# ARGs, the lock and pyproject.toml agree). Not verifiable on the machines this project is tested on
# (no Docker daemon, no GPU): that the base tag exists for this Ray release (`docker manifest inspect
# rayproject/ray:2.60.0-py311-cu130`) and that the build completes; hadolint lints this file in the tests.
ARG RAY_VERSION=2.60.0
ARG PYTHON_TAG=py311
ARG CUDA_TAG=cu130
FROM rayproject/ray:${RAY_VERSION}-${PYTHON_TAG}-${CUDA_TAG}

ARG TORCH_VERSION=2.13.0
# GPU architectures DeepSpeed's ops are compiled for: A100 (8.0), L4/L40S (8.9), H100/H200 (9.0),
# B200 (10.0). Add yours with --build-arg TORCH_CUDA_ARCH_LIST=...
ARG TORCH_CUDA_ARCH_LIST="8.0;8.9;9.0;10.0"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ray

# WordNet 3.0's database (Ubuntu's and Debian's wordnet-base, in /usr/share/wordnet, 28 MB) for the negatives'
# still-true check (tpo_ray/negatives/wordnet.py reads it with nltk). Not pinned (DL3008): the data is WordNet
# 3.0, unchanged since 2006; the package version follows the distribution's packaging only. The last step of
# this file checks that tpo_ray reads it.
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wordnet-base \
 && rm -rf /var/lib/apt/lists/* \
 && test -f /usr/share/wordnet/data.noun

# The code's home and the mount points the recipes name (/mnt/local: per-node model cache;
# /mnt/models: vLLM weights; /mnt/shared: a filesystem shared by all nodes).
RUN mkdir -p /opt/tpo_ray /mnt/local /mnt/models /mnt/shared \
 && chown 1000:100 /opt/tpo_ray /mnt/local /mnt/shared
USER 1000:100
WORKDIR /opt/tpo_ray

# 1. Dependencies, the heavy layer (torch, vLLM, Ray's extras...): keyed on the lock alone, so a change
#    to pyproject.toml that does not change what is installed (a dev pin, a description) rebuilds
#    nothing. The pip cache mount keeps downloaded wheels across builds on the same builder.
COPY --chown=1000:100 image/requirements.lock image/
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=100 \
    pip install --require-hashes --no-deps -r image/requirements.lock

# DeepSpeed compiles its ops with nvcc; it refuses when nvcc's CUDA major differs from torch's. Fail
# here, at build time, rather than in the first ZeRO-Offload step on the cluster.
RUN python -c "import os, re, subprocess, sys, torch; \
nvcc = '/usr/local/cuda/bin/nvcc'; \
out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout if os.path.exists(nvcc) else ''; \
m = re.search(r'release (\d+)\.(\d+)', out); nv = m.group(0) if m else 'absent'; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'CUDA', cuda, '| nvcc', nv); \
sys.exit(0 if cuda and m and cuda.split('.')[0] == m.group(1) else \
'torch CUDA %s vs nvcc %s: build with a CUDA_TAG of the same major version' % (cuda, nv))"

# 2. DeepSpeed with its GPU ops compiled now (it is sdist-only): fused Adam, for TORCH_CUDA_ARCH_LIST, so
#    pods scaled up from zero do not compile it in their first step. cpu_adam (ZeRO-Offload only) is not
#    prebuilt on purpose: DeepSpeed compiles it with -march=native and AVX-512 when the build machine has
#    it, which dies with SIGILL on nodes of another CPU (an image built on Intel, run on AMD EPYC); it is
#    compiled on first use on the node that runs it, into TORCH_EXTENSIONS_DIR (/mnt/local in cluster/).
#    The build imports torch, hence --no-build-isolation; the check fails the build if the op was skipped
#    (DeepSpeed skips an incompatible op silently when building).
COPY --chown=1000:100 image/deepspeed.lock image/
RUN --mount=type=cache,target=/home/ray/.cache/pip,uid=1000,gid=100 \
    DS_BUILD_OPS=0 DS_BUILD_FUSED_ADAM=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST}" \
    pip install --require-hashes --no-deps --no-build-isolation -r image/deepspeed.lock \
 && python -c "from deepspeed.git_version_info import installed_ops as ops; \
assert ops.get('fused_adam'), 'DeepSpeed fused_adam not prebuilt: %s' % ops; \
assert not ops.get('cpu_adam'), 'cpu_adam must not be prebuilt (-march=native)'; print('deepspeed prebuilt ops OK')"

# 3. tpo_ray itself (the cheap layer): what `pip install .` needs (pyproject.toml, README.md as the
#    readme, LICENSE, the tpo_ray package with its templates and lexicon), then the job entrypoints and
#    recipes. --no-deps: every dependency is already installed from the lock.
COPY --chown=1000:100 pyproject.toml README.md LICENSE ./
COPY --chown=1000:100 tpo_ray ./tpo_ray
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info \
 && python -c "import ray, torch, vllm, tpo_ray; print('tpo_ray', tpo_ray.__version__, 'ray', ray.__version__, \
'torch', torch.__version__, 'vllm', vllm.__version__)" \
 && python -c "from tpo_ray.negatives import wordnet; \
assert wordnet.relation('dog', 'animal') == 'hypernym', 'WordNet unreadable: see the log line above'; print('WordNet OK')"
COPY --chown=1000:100 jobs ./jobs

# KubeRay replaces the command with `ray start ...`; jobs run `python jobs/<stage>.py` from here.
