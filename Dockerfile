# ib-stream service image: the package and its dependencies on Python 3.11.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ib_stream ./ib_stream
RUN pip install --no-cache-dir . && useradd --create-home --uid 1000 ibstream
COPY config ./config
USER ibstream
EXPOSE 8000
CMD ["ib-stream", "serve", "--host", "0.0.0.0", "--port", "8000", "--data-dir", "/app/storage"]
