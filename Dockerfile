# syntax=docker/dockerfile:1
# The tpo_ray cluster image: every Ray container in cluster/ (head, GPU workers, the autoscaler
# sidecar KubeRay adds, the RayJob submitter) runs it. Build: docker build -t <registry>/tpo-ray:<tag> .
#
# Base image: rayproject/ray:<RAY_VERSION>-py311-<CUDA_TAG>, because
#  - its Ray is the version the project is tested with (2.60.0) and the `rayVersion` the manifests
#    declare, so the client, GCS, raylets, autoscaler and submitter all agree;
#  - py311 is the Python the project is tested on;
#  - Ray's CUDA images are built FROM nvidia/cuda:<version>-devel: nvcc and g++ are there for
#    DeepSpeed's JIT-built ops (cpu_adam for ZeRO-Offload, fused CUDA kernels);
#  - it has the non-root user `ray` (uid 1000, gid 100) the manifests run as (runAsUser: 1000),
#    owning its Python (/home/ray/anaconda3), so pip needs no root.
# torch 2.13.0's CUDA 12.x wheels bundle their own CUDA runtime; the base's toolkit only needs the
# same CUDA *major* version as torch for DeepSpeed's JIT builds, which a step below checks (pass
# --build-arg CUDA_TAG=... to change it). Not verifiable offline: that the tag exists on Docker Hub
# for this Ray release (list them with `docker manifest inspect rayproject/ray:2.60.0-py311-cu128`).
ARG RAY_VERSION=2.60.0
ARG CUDA_TAG=cu128
FROM rayproject/ray:${RAY_VERSION}-py311-${CUDA_TAG}

ARG RAY_VERSION
ARG TORCH_VERSION=2.13.0

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ray

# The code's home and the mount points the recipes name (/mnt/local: per-node model cache;
# /mnt/models: vLLM weights; /mnt/shared: a filesystem shared by all nodes).
USER root
RUN mkdir -p /opt/tpo_ray /mnt/local /mnt/models /mnt/shared \
 && chown 1000:100 /opt/tpo_ray /mnt/local /mnt/shared
USER 1000:100
WORKDIR /opt/tpo_ray

# 1. Dependencies, the heavy layer (torch, vLLM, DeepSpeed...), rebuilt only when pyproject.toml
#    changes: read from pyproject.toml (dependencies + the `llm` extra) so the list lives in one place.
#    The constraints keep torch at the pinned version (vLLM releases pin their own torch: pip picks the
#    newest vLLM built for torch 2.13.0 instead of replacing torch) and Ray at the base image's version.
COPY --chown=1000:100 pyproject.toml ./
RUN printf 'torch==%s\nray==%s\n' "${TORCH_VERSION}" "${RAY_VERSION}" > /tmp/constraints.txt \
 && python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['llm']))" > /tmp/requirements.txt \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# DeepSpeed refuses to JIT-build CUDA ops when nvcc's major version differs from torch's: fail here,
# at build time, rather than in the first ZeRO-Offload step on the cluster. Also fails on a CPU torch.
RUN python -c "import os, re, subprocess, sys, torch; \
nvcc = '/usr/local/cuda/bin/nvcc'; \
out = subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout if os.path.exists(nvcc) else ''; \
m = re.search(r'release (\d+)\.(\d+)', out); nv = m.group(0) if m else 'absent'; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'CUDA', cuda, '| nvcc', nv); \
sys.exit(0 if cuda and m and cuda.split('.')[0] == m.group(1) else \
'torch CUDA %s vs nvcc %s: build with a CUDA_TAG of the same major version' % (cuda, nv))"

# 2. tpo_ray itself (the cheap layer): what `pip install .` needs (pyproject.toml, README.md as the
#    readme, the tpo_ray package with its templates and lexicon), then the job entrypoints and recipes.
COPY --chown=1000:100 README.md ./
COPY --chown=1000:100 tpo_ray ./tpo_ray
RUN pip install --no-deps -c /tmp/constraints.txt ".[llm]" \
 && rm -rf build ./*.egg-info \
 && python -c "import ray, torch, tpo_ray; print('tpo_ray', tpo_ray.__version__, 'ray', ray.__version__, 'torch', torch.__version__)"
COPY --chown=1000:100 jobs ./jobs

# KubeRay replaces the command with `ray start ...`; jobs run `python jobs/<stage>.py` from here.
USER 1000:100
WORKDIR /opt/tpo_ray
