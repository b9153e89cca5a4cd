# CPU image: the package, its pinned dependencies and the embedded default model.
FROM python:3.11-slim
WORKDIR /opt/compressor
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A C compiler: the head-distance kernels (compressor/native) are built on first use
# for the CPU the container runs on. Without it they fall back to PyTorch (slower).
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
# The CPU build of torch first, from PyTorch's CPU index, so nothing pulls CUDA wheels.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY compressor ./compressor
COPY recipes ./recipes
RUN pip install '.[model,cpu]'
CMD ["compress", "--help"]
