# Recommendation service image. Installs exactly as `make install` does (same Makefile target),
# with torch's CPU wheel index so the image never pulls a CUDA build.
FROM python:3.11-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile README.md uwsgi.ini ./
COPY model/ model/
COPY service/ service/
COPY scripts/ scripts/
# EXTRAS= : production install, no test tools. uwsgi compiles here (needs gcc), hence two stages. The
# bytecode is compiled here too: the runtime user cannot write __pycache__ into the code.
RUN make install EXTRAS= TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" \
 && .venv/bin/python -m compileall -q model service scripts

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 recsys
WORKDIR /app
# The code and the venv stay root's: the service's user can read and run them, not rewrite them. It owns
# artifacts/ alone (the default model below, the ANN index and top-N lists the service writes beside it).
COPY --from=build /app /app
RUN install -d -o recsys -g recsys /app/artifacts
USER recsys
# Inside a container the service must listen beyond loopback; outside Docker it defaults to 127.0.0.1.
ENV PATH=/app/.venv/bin:$PATH \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=8000 \
    RECSYS_CHECKPOINT=/app/artifacts/model.ckpt \
    PYTHONUNBUFFERED=1
# A default model on the built-in data, so the image answers out of the box; mount a volume over
# /app/artifacts (or set RECSYS_CHECKPOINT) to serve your own.
RUN python scripts/train.py --quiet --out /app/artifacts/model.ckpt
EXPOSE 8000
# Healthy = a model is loaded and answering (/readyz, 503 otherwise: urlopen raises); /healthz only says
# the process is up, so a container that cannot serve would look healthy.
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ['RECSYS_PORT'], timeout=2)"
CMD ["uwsgi", "--ini", "uwsgi.ini"]
