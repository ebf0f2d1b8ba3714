FROM python:3.11-slim
WORKDIR /app
# CUDA wheels by default (the embed and query workers use the GPU); pass
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch
COPY pyproject.toml README.md ./
COPY pgrag ./pgrag
COPY workers ./workers
COPY api ./api
COPY migrations ./migrations
RUN pip install --no-cache-dir -e .
ENV HF_HOME=/models
