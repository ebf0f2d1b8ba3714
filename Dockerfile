# The package is built as a wheel in a first stage and installed from it: the image holds
# pgrag in site-packages (with its workers, API and migrations inside) and no source tree.
FROM python:3.11-slim AS wheel
COPY pyproject.toml README.md /src/
COPY pgrag /src/pgrag
COPY workers /src/workers
COPY api /src/api
COPY migrations /src/migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM python:3.11-slim
WORKDIR /app
# CUDA wheels by default (the embed and query workers use the GPU); pass
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu for a CPU-only image.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN pip install --no-cache-dir --index-url ${TORCH_INDEX} torch
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
ENV HF_HOME=/models
