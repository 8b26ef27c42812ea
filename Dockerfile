# One image for both sides: the command worker and the query service.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY commands_worker ./commands_worker
COPY queries_service ./queries_service
COPY hfctl ./hfctl
RUN pip install --no-cache-dir ".[postgres,aws]" && useradd --system --uid 10001 hostfactory
USER hostfactory
EXPOSE 8080
CMD ["python", "-m", "queries_service"]
