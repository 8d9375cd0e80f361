# syntax=docker/dockerfile:1
#
# The ralud CUDA image: built in NVIDIA's CUDA devel image, run in the matching CUDA runtime
# image as a non-root user (uid 10001). CPU-only machines use tools/setup.sh instead.
# The CUDA backend (kernels/cuda/) is not written yet: until it is, the ralud in this image runs
# on the CPU backend, and the CUDA toolchain and runtime are here for when it lands.
#
#   docker build -t ralud .
#   docker run --gpus all -p 8080:8080 -v /srv/models:/models:ro ralud
#
# The model folder named in /etc/ralud/ralud.json (deploy/ralud.example.json) is mounted at
# /models; pass another config with -v ...:/etc/ralud/ralud.json:ro.

ARG CUDA_VERSION=12.6.3
ARG BASE_OS=ubuntu24.04

# ---- build ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-${BASE_OS} AS build

# sm_80 A100, sm_86 A10/RTX 30, sm_89 L4/L40/RTX 40, sm_90 H100/H200. The build machine has no GPU,
# so the list is explicit.
ARG CUDA_ARCHITECTURES="80;86;89;90"

# Ubuntu 24.04 ships CMake 3.28 (the project needs >= 3.24).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        build-essential cmake pkg-config \
        libjansson-dev libuv1-dev libmicrohttpd-dev libpng-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# RALUD_NATIVE=OFF: the image must run on any x86-64 host, not only the build machine's CPU.
# Tests run in CI (tools/setup.sh test), not here, so Check is not needed.
RUN cmake -S . -B build \
        -DCMAKE_BUILD_TYPE=Release \
        -DRALUD_BUILD_TESTS=OFF \
        -DRALUD_NATIVE=OFF \
        -DRALUD_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHITECTURES}" \
 && cmake --build build -j"$(nproc)" \
 && test -x build/server/ralud

# ---- runtime ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${BASE_OS} AS runtime

# Shared libraries the daemon links (Ubuntu 24.04 names), plus curl for HEALTHCHECK.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libjansson4 libuv1t64 libmicrohttpd12t64 libpng16-16t64 curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ralud \
 && useradd --system --uid 10001 --gid ralud --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ralud

COPY --from=build /src/build/server/ralud /usr/local/bin/ralud
COPY deploy/ralud.example.json /etc/ralud/ralud.json

USER 10001:10001
EXPOSE 8080

# Liveness only: /healthz does not wait for the weights (readiness is /readyz).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz >/dev/null || exit 1

# SIGTERM (the default stop signal) starts the drain; give `docker stop -t` enough time.
ENTRYPOINT ["/usr/local/bin/ralud"]
CMD ["--config", "/etc/ralud/ralud.json"]
